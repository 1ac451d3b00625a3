"""Image feature extractors and embedders for FID and copy detection.

Every extractor here is an ``nn.Module`` with three attributes:

- ``name``: a string that identifies the network and its weights. Reports carry it,
  so a FID from one extractor is never compared with a FID from another.
- ``num_features``: the output dimension. torchmetrics' ``FrechetInceptionDistance``
  reads this attribute for a custom ``feature`` module and then skips its dummy
  forward pass (torchmetrics 1.9, ``torchmetrics/image/fid.py``).
- ``in_channels``: the number of image channels ``forward`` accepts.

``forward`` takes a float tensor ``(B, in_channels, H, W)`` with values in [0, 1] and
returns ``(B, num_features)`` float32 features. Each extractor resizes and normalises
its input itself, so callers pass images at their native resolution.
Embedders (``TorchScriptEmbedder``, ``LocalEmbedder``) also L2-normalise their outputs,
so the dot product of two embeddings is their cosine similarity.

Nothing here downloads weights. The networks are either built from a fixed seed or
loaded from a local file that the caller names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ImageNet channel statistics, the input normalisation of torchvision classifiers and of
# the SSCD copy-detection models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The SSCD README (facebookresearch/sscd-copy-detection) recommends either resizing the
# small edge to 288 or resizing to a 320 x 320 square. A fixed square batches better and
# is what ``TorchScriptEmbedder`` does.
SSCD_IMAGE_SIZE = 320


class FeatureExtractor(nn.Module):
    """Base class for the image feature extractors in this module.

    Subclasses set ``name``, ``num_features`` and ``in_channels`` in ``__init__`` and
    implement ``forward`` as described in the module docstring. Code that takes an
    extractor checks only these attributes (see ``check_feature_extractor``), so any
    ``nn.Module`` that has them and follows the same contract works too.
    """

    name: str
    num_features: int
    in_channels: int


def check_feature_extractor(module: nn.Module) -> None:
    """Raise TypeError unless ``module`` has the attributes of a feature extractor."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"Feature extractor must be a torch.nn.Module, got {type(module).__name__}.")

    name = getattr(module, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{type(module).__name__} needs a non-empty string attribute `name` to label results.")

    for attribute in ("num_features", "in_channels"):
        value = getattr(module, attribute, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TypeError(f"{type(module).__name__} needs a positive int attribute `{attribute}`, got {value!r}.")


def match_channels(images: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Repeat a single image channel to ``in_channels`` channels.

    Images that already have ``in_channels`` channels are returned unchanged. Any other
    channel count raises ValueError, because there is no standard conversion.
    """
    channels = images.shape[1]
    if channels == in_channels:
        return images
    if channels == 1:
        return images.expand(-1, in_channels, -1, -1)
    raise ValueError(
        f"Images have {channels} channels but the extractor expects {in_channels}. "
        "Only single-channel images are converted (by repeating the channel)."
    )


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` images to ``size`` x ``size`` with antialiased bilinear interpolation."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def validate_unit_images(images: torch.Tensor, label: str) -> None:
    """Raise ValueError unless ``images`` is a float ``(B, C, H, W)`` tensor with values in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(images).__name__}.")
    if images.dim() != 4:
        raise ValueError(f"{label} must have shape (B, C, H, W), got {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(
            f"{label} must be a float tensor with values in [0, 1], got dtype {images.dtype}. "
            "Convert 8-bit images with images.float() / 255."
        )
    if images.numel() == 0:
        raise ValueError(f"{label} is empty: shape {tuple(images.shape)}.")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{label} contains NaN or infinite values.")

    low = float(images.min())
    high = float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{label} must have values in [0, 1], found min {low:.6g} and max {high:.6g}. "
            "Rescale images from [-1, 1] with (x + 1) / 2."
        )


@torch.no_grad()
def extract_features(
    extractor: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Run ``extractor`` over ``images`` in batches and return ``(B, num_features)`` float32 features on the CPU.

    ``images`` are float ``(B, C, H, W)`` in [0, 1]. Single-channel images are repeated
    to the extractor's ``in_channels``. The extractor is moved to ``device`` (default:
    the device of ``images``) and switched to eval mode.
    """
    check_feature_extractor(extractor)
    validate_unit_images(images, "images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")

    target = torch.device(device) if device is not None else images.device
    extractor = extractor.to(target).eval()

    outputs = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(target, torch.float32)
        batch = match_channels(batch, extractor.in_channels)
        outputs.append(extractor(batch).float().cpu())
    return torch.cat(outputs)


def _seeded_normal(random_state: np.random.RandomState, shape: Sequence[int], fan_in: int) -> torch.Tensor:
    # He-scaled Gaussian weights. Legacy RandomState keeps its stream fixed across NumPy
    # releases (NEP 19), unlike torch.Generator or numpy.random.Generator, so the weights
    # and the extractor name stay tied to each other.
    values = random_state.standard_normal(size=tuple(shape)) * np.sqrt(2.0 / fan_in)
    return torch.from_numpy(values.astype(np.float32))


class LocalFeatureExtractor(FeatureExtractor):
    """Weight-free image features for FID: a convolutional network with fixed random weights.

    The weights are drawn from a Gaussian with NumPy's legacy ``RandomState(seed=0)``, so
    every install builds the same network without downloading anything. Inputs are resized
    to 64 x 64 and mapped to [-1, 1]. Three stride-2 4x4 convolutions (64, 128 and 256
    channels, ReLU) follow, and the last feature map is averaged over space into 256
    features.

    A FID from this extractor is on its own scale. It detects distribution shifts between
    two image sets, but it cannot be compared with an Inception-v3 FID or published
    numbers. The name ``local-randconv-v1`` marks these results in every report, and any
    change to the architecture, seed or resizing must change the name.
    """

    IMAGE_SIZE = 64
    SEED = 0
    CHANNELS = (64, 128, 256)

    def __init__(self) -> None:
        super().__init__()
        self.name = "local-randconv-v1"
        self.in_channels = 3
        self.num_features = self.CHANNELS[-1]

        random_state = np.random.RandomState(self.SEED)
        previous = self.in_channels
        for layer, channels in enumerate(self.CHANNELS):
            shape = (channels, previous, 4, 4)
            weight = _seeded_normal(random_state, shape, fan_in=previous * 16)
            # Buffers rather than parameters, because the weights are never trained.
            self.register_buffer(f"weight{layer}", weight)
            previous = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_square(images.float(), self.IMAGE_SIZE) * 2.0 - 1.0
        for layer in range(len(self.CHANNELS)):
            weight = getattr(self, f"weight{layer}")
            x = F.relu(F.conv2d(x, weight, stride=2, padding=1))
        return x.mean(dim=(2, 3))


class LocalEmbedder(FeatureExtractor):
    """Small built-in embedder with fixed random weights, for tests and smoke runs.

    Inputs are resized to 32 x 32, centred at 0.5, flattened and multiplied by a Gaussian
    random projection to 128 dimensions (NumPy legacy ``RandomState(seed=1)``). The
    outputs are L2-normalised. A random projection roughly preserves angles between the
    centred pixel vectors, so exact copies get cosine similarity 1 and unrelated images get
    values near 0. It has no learned notion of image content, so it is no substitute for a
    copy-detection model such as SSCD.
    """

    IMAGE_SIZE = 32
    SEED = 1
    NUM_FEATURES = 128

    def __init__(self) -> None:
        super().__init__()
        self.name = "local-randproj-v1"
        self.in_channels = 3
        self.num_features = self.NUM_FEATURES

        inputs = self.in_channels * self.IMAGE_SIZE * self.IMAGE_SIZE
        random_state = np.random.RandomState(self.SEED)
        projection = _seeded_normal(random_state, (inputs, self.NUM_FEATURES), fan_in=inputs)
        self.register_buffer("projection", projection)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_square(images.float(), self.IMAGE_SIZE) - 0.5
        embeddings = x.flatten(start_dim=1) @ self.projection
        return F.normalize(embeddings, dim=1)


class InceptionExtractor(FeatureExtractor):
    """Inception-v3 pool features (2048-d), the standard FID network, from a local weights file.

    Wraps ``torchmetrics.image.fid.NoTrainInceptionV3``, torchmetrics' subclass of
    torch-fidelity's ``FeatureExtractorInceptionV3``, and so needs the ``torch-fidelity``
    package. ``weights_path`` is torch-fidelity's converted TensorFlow weights file
    (``weights-inception-2015-12-05-6726825d.pth``). It must exist locally, because
    torch-fidelity would download the weights if it got no path, and this class never
    lets it.

    Inputs in [0, 1] are rounded to 8-bit values, the values a PNG file of the image
    holds, and resized to 299 x 299 inside the network. With ``antialias=False`` the resize
    matches TensorFlow 1.x bilinear interpolation, as in the original FID code and
    torch-fidelity. torchmetrics' own default is ``antialias=True``, which changes the
    values, and the name gets an ``-antialias`` suffix in that case.
    """

    def __init__(self, weights_path: str | os.PathLike[str], *, antialias: bool = False) -> None:
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception-v3 weights file not found: {path}. Pass the local path of the "
                "torch-fidelity weights file (weights-inception-2015-12-05-6726825d.pth)."
            )

        from torchmetrics.image.fid import NoTrainInceptionV3
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

        if not _TORCH_FIDELITY_AVAILABLE:
            raise ModuleNotFoundError(
                "InceptionExtractor needs the torch-fidelity package: pip install torch-fidelity."
            )

        self.network = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(path),
            antialias=antialias,
        )
        self.name = "inception-v3-2048-antialias" if antialias else "inception-v3-2048"
        self.in_channels = 3
        self.num_features = 2048

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
        return self.network(pixels).float()


class TorchScriptEmbedder(FeatureExtractor):
    """Embedder loaded from a user-supplied TorchScript file, such as an SSCD model.

    The model is loaded on the CPU and put in eval mode. Before the model runs, inputs in
    [0, 1] are resized to ``image_size`` x ``image_size`` (antialiased bilinear, ignoring
    the aspect ratio) and normalised per channel with ``(x - mean) / std``. The defaults
    are SSCD's: a 320 x 320 square and the ImageNet mean and standard deviation. The
    outputs are L2-normalised, whether or not the model already does it.

    ``name`` defaults to the file name, for example ``sscd_disc_mixup.torchscript.pt``.
    The output dimension is inferred by one forward pass on a zero image.

    NOTE: PyTorch 2.13 marks ``torch.jit.load`` as deprecated and emits a
    DeprecationWarning, but SSCD and similar models ship only as TorchScript files.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        image_size: int = SSCD_IMAGE_SIZE,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        name: str | None = None,
    ) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TorchScript embedder file not found: {path}.")
        if image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {image_size}.")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need one value per RGB channel, got mean={mean} and std={std}.")
        if min(std) <= 0:
            raise ValueError(f"std values must be positive, got {std}.")

        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as error:
            raise ValueError(
                f"{path} is not a TorchScript file that torch.jit.load can read ({error}). "
                "Export the model with torch.jit.script or torch.jit.trace and save it with torch.jit.save."
            ) from error

        self.model = model.eval()
        self.name = name if name is not None else path.name
        self.image_size = image_size
        self.in_channels = 3
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        with torch.no_grad():
            probe = self.model(self._prepare(torch.zeros(1, 3, image_size, image_size)))
        if not isinstance(probe, torch.Tensor) or probe.dim() != 2 or probe.shape[0] != 1:
            shape = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
            raise ValueError(
                f"TorchScript model {path} must return a (batch, dim) tensor, got {shape} for a batch of one image."
            )
        self.num_features = int(probe.shape[1])

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_square(images.float(), self.image_size)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.model(self._prepare(images))
        return F.normalize(embeddings.float(), dim=1)

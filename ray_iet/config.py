"""The run configuration: one validated object built from YAML plus command-line overrides.

Every field has a default, a unit and an allowed range. Validation happens when the object is
built, before Ray starts, so a bad value never costs a cluster start-up.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field, the value and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    source: Literal["digits", "lfw", "folder", "parquet", "npz"] = Field(
        "digits",
        description="digits (scikit-learn, 1,797 8x8 images), lfw (scikit-image faces, 200 25x25 "
        "images), or a folder of PNG/JPEG files, a Parquet file or an .npz file given by `path`",
    )
    path: Optional[Path] = Field(None, description="file or folder for the folder, parquet and npz sources")
    image_size: Optional[int] = Field(None, ge=4, le=1024, description="resize every image to this square side in pixels; None keeps the source size")
    channels: Optional[Literal[1, 3]] = Field(None, description="convert every image to 1 or 3 channels; None requires one mode in the source")
    image_column: str = Field("image", description="Parquet column with the encoded image bytes")
    label_column: Optional[str] = Field("label", description="Parquet column with integer labels, if present")
    caption_column: Optional[str] = Field("caption", description="Parquet column with captions, if present")
    npz_key: Optional[str] = Field(None, description="array name inside the .npz file")
    limit: Optional[int] = Field(None, ge=1, description="use only the first N samples")
    duplicate_images: int = Field(0, ge=0, description="pick this many images (seeded) and add copies of them, to provoke memorization")
    duplicate_copies: int = Field(0, ge=0, description="extra copies of each duplicated image, each with its own sample id")

    @model_validator(mode="after")
    def _check_path(self) -> "DataConfig":
        if self.source in ("folder", "parquet", "npz"):
            if self.path is None:
                raise ValueError(f"data.path is required for source {self.source!r}; set data.path to the {self.source}")
            if not self.path.exists():
                raise ValueError(f"data.path {str(self.path)!r} does not exist; give an existing {self.source} path")
        return self


class ModelConfig(_Section):
    preset: Literal["tiny", "small", "ddpm-cifar10"] = Field(
        "tiny", description="UNet2DModel layout: tiny (CPU demo and tests), small, ddpm-cifar10 (35.7M parameters)"
    )
    pretrained: Optional[Path] = Field(None, description="local diffusers folder (pipeline or UNet) to start from instead of a preset")
    num_train_timesteps: int = Field(1000, ge=2, le=100_000, description="diffusion steps T")
    beta_start: float = Field(1e-4, gt=0, lt=1, description="first beta of the linear noise schedule")
    beta_end: float = Field(0.02, gt=0, lt=1, description="last beta of the linear noise schedule")

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.beta_end <= self.beta_start:
            raise ValueError(f"model.beta_end ({self.beta_end}) must be greater than model.beta_start ({self.beta_start})")
        if self.pretrained is not None and not self.pretrained.exists():
            raise ValueError(f"model.pretrained {str(self.pretrained)!r} does not exist; give a local diffusers folder")
        return self


class TrainingConfig(_Section):
    shards: int = Field(3, ge=1, le=1024, description="number of shards K, one proxy model each; reference 10")
    rounds: int = Field(5, ge=1, description="training rounds, each a training stage and an interaction stage; reference 10")
    local_epochs: int = Field(20, ge=1, description="epochs each shard trains on its samples per round (E); reference 100")
    batch_size: int = Field(64, ge=1, description="minibatch size per shard")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate after warm-up; reference 2e-4 for the 35.7M-parameter CIFAR-10 model")
    warmup_steps: int = Field(100, ge=0, description="linear learning-rate warm-up, in optimizer steps of each shard")
    grad_clip: float = Field(1.0, gt=0, description="gradient-norm clip")
    ema_decay: float = Field(0.9999, ge=0, lt=1, description="EMA decay of the proxy weights (warmed up as (1+n)/(10+n))")


class AGCConfig(_Section):
    enabled: bool = Field(True, description="anti-gradient control: skip samples whose loss ratio is below the skip threshold")
    skip_threshold: float = Field(0.5, gt=0, description="lambda: skip when loss / memory bank < lambda (lambda = 1 / mem_ratio)")
    augment: bool = Field(True, description="threshold-aware augmentation for loss ratios in [lambda, R * lambda)")
    augment_factor: float = Field(1.5, gt=1, description="R: augment when lambda <= ratio < R * lambda")
    bank_decay: float = Field(0.8, ge=0, lt=1, description="beta of the memory bank update M[t] <- beta M[t] + (1 - beta) L")
    bank_init: float = Field(0.0, ge=0, description="initial value of every memory bank entry; 0 means unseen (ratio +inf)")
    augmentation: Literal["flip_translate", "flip", "translate"] = Field("flip_translate", description="augmentation policy")
    max_translate: float = Field(0.125, ge=0, lt=0.5, description="largest random translation, as a fraction of the image side")


class MSRConfig(_Section):
    enabled: bool = Field(True, description="memory sample redistribution around the shard ring")
    moves: Union[int, float] = Field(
        0.05, description="P: samples moved per shard per round, a count (integer >= 0) or a fraction of the shard size in (0, 1)"
    )

    @field_validator("moves")
    @classmethod
    def _check_moves(cls, value: Union[int, float]) -> Union[int, float]:
        if value < 0:
            raise ValueError(f"msr.moves must be >= 0 (a count) or in (0, 1) (a fraction), got {value}")
        if isinstance(value, float) and value >= 1:
            if not value.is_integer():
                raise ValueError(f"msr.moves {value} is neither an integer count nor a fraction in (0, 1)")
            return int(value)
        return value


class ResourcesConfig(_Section):
    num_cpus_per_shard: Optional[float] = Field(None, gt=0, description="CPUs per shard actor; None divides the cluster's CPUs by K")
    num_gpus_per_shard: Optional[float] = Field(None, ge=0, description="GPUs per shard actor; None gives 1 with >= K GPUs, an equal share with fewer, 0 with none")
    actor_start_timeout_s: float = Field(300.0, gt=0, description="seconds to wait for the shard actors to be placed before failing")
    max_round_retries: int = Field(2, ge=0, description="times a shard's round is retried from its start after the shard fails")


class SamplingConfig(_Section):
    num_images: int = Field(64, ge=1, description="images in each round's sample grid")
    inference_steps: int = Field(50, ge=1, description="DDIM steps for sample grids")
    use_ema: bool = Field(True, description="sample grids and the exported model use the EMA weights")


class EvaluationConfig(_Section):
    enabled: bool = Field(True, description="evaluate the final model at the end of a training run")
    num_samples: int = Field(500, ge=2, description="images generated for the evaluation")
    inference_steps: int = Field(50, ge=1, description="DDIM steps per generated image")
    seed: int = Field(1234, ge=0, description="seed of the generation noise")
    batch_size: int = Field(256, ge=1, description="images per batch for generation and feature extraction")
    k: int = Field(50, ge=2, description="neighbours in the nearest-neighbour ratio d1 / mean(d1..dk)")
    block_size: int = Field(4096, ge=1, description="images per block of the nearest-neighbour search")
    embedder: Optional[str] = Field(None, description="copy-detection embedder: a TorchScript file (SSCD, for example) or 'local'; None skips embedding metrics")
    inception_weights: Optional[Path] = Field(None, description="local Inception-v3 FID weights file; None uses the built-in local feature extractor")
    top_copies: int = Field(8, ge=1, description="most-copied generations shown per model in the report")

    @model_validator(mode="after")
    def _check_files(self) -> "EvaluationConfig":
        if self.embedder not in (None, "local") and not Path(self.embedder).is_file():
            raise ValueError(f"evaluation.embedder {self.embedder!r} is not a file; give a TorchScript file or 'local'")
        if self.inception_weights is not None and not self.inception_weights.is_file():
            raise ValueError(f"evaluation.inception_weights {str(self.inception_weights)!r} is not a file")
        return self


def _default_search_space() -> dict[str, dict[str, list[Any]]]:
    return {
        "agc.skip_threshold": {"uniform": [0.3, 0.8]},
        "agc.augment_factor": {"uniform": [1.2, 2.0]},
        "msr.moves": {"choice": [0, 0.02, 0.05, 0.1]},
        "training.shards": {"choice": [2, 3, 4]},
        "training.local_epochs": {"choice": [10, 20, 40]},
    }


SEARCH_DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")


class TuneConfig(_Section):
    num_samples: int = Field(8, ge=1, description="trials to run")
    search_space: dict[str, dict[str, list[Any]]] = Field(
        default_factory=_default_search_space,
        description="dotted config field -> {choice: [values]} | {uniform: [low, high]} | {loguniform: [low, high]} | {randint: [low, high]}",
    )
    fid_weight: float = Field(0.005, ge=0, description="objective = memorized fraction + fid_weight * FID, minimised")
    max_fid: Optional[float] = Field(None, gt=0, description="quality bound: a trial whose FID exceeds it gets 1 + (FID - max_fid) / max_fid added")
    grace_period: int = Field(1, ge=1, description="rounds every trial runs before ASHA may stop it")
    reduction_factor: int = Field(2, ge=2, description="ASHA keeps about 1 / reduction_factor of the trials at each rung")
    max_concurrent_trials: Optional[int] = Field(None, ge=1, description="trials running at once; None lets the cluster's resources decide")
    eval_samples: int = Field(100, ge=2, description="images generated for the quick evaluation after every round")
    eval_inference_steps: int = Field(20, ge=1, description="DDIM steps of the quick evaluation")
    coordinator_cpus: float = Field(0.5, gt=0, description="CPUs of each trial's coordinator bundle")
    cpus_per_shard: Optional[float] = Field(None, gt=0, description="CPUs of each shard bundle; None: 1 when a trial with the largest K fits, else an equal share of the rest")
    gpus_per_shard: Optional[float] = Field(None, ge=0, description="GPUs of each shard bundle; None: 1 with at least the largest K GPUs, an equal share with fewer, 0 with none")

    @field_validator("search_space")
    @classmethod
    def _check_space(cls, space: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
        for key, spec in space.items():
            if len(spec) != 1 or next(iter(spec)) not in SEARCH_DISTRIBUTIONS:
                raise ValueError(f"tune.search_space[{key!r}] must be one of {{{', '.join(SEARCH_DISTRIBUTIONS)}: ...}}, got {spec}")
            kind, values = next(iter(spec.items()))
            if kind != "choice" and len(values) != 2:
                raise ValueError(f"tune.search_space[{key!r}].{kind} needs [low, high], got {values}")
            if not values:
                raise ValueError(f"tune.search_space[{key!r}].choice needs at least one value")
        return space


class RunConfig(_Section):
    name: str = Field("digits", min_length=1, description="run name; the run folder is output_dir/name")
    output_dir: Path = Field(Path("runs"), description="parent folder of run folders")
    seed: int = Field(0, ge=0, description="seed for the model, the shard assignment and every shard's randomness")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    agc: AGCConfig = AGCConfig()
    msr: MSRConfig = MSRConfig()
    resources: ResourcesConfig = ResourcesConfig()
    sampling: SamplingConfig = SamplingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    tune: TuneConfig = TuneConfig()

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if "/" in value or value in (".", ".."):
            raise ValueError(f"name {value!r} must be a single folder name without '/'")
        return value

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _format_validation_error(error: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        value_text = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {field}: {message}{value_text}")
    return "\n".join(lines)


def build_config(values: dict[str, Any], origin: str = "config") -> RunConfig:
    """Validate a nested dict into a RunConfig, raising ConfigError with every bad field."""
    try:
        return RunConfig.model_validate(values)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, origin)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    with path.open() as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must contain a mapping at the top level")
    return values


def set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set values["a"]["b"] = value for dotted == "a.b", creating sections as needed."""
    *sections, leaf = dotted.split(".")
    target = values
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"cannot set {dotted!r}: {section!r} is not a section")
    target[leaf] = value


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    fields = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields.extend(_leaf_fields(annotation, f"{prefix}{name}."))
        else:
            fields.append((prefix + name, info))
    return fields


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --config and one --section.field option for every configuration field."""
    parser.add_argument("--config", type=Path, help="YAML config file; options below override its values")
    group = parser.add_argument_group("configuration overrides (YAML syntax values)")
    for dotted, info in _leaf_fields(RunConfig):
        default = info.get_default(call_default_factory=True)
        help_text = (info.description or "") + f" [default: {default}]"
        group.add_argument(f"--{dotted}", dest=f"override:{dotted}", metavar="VALUE", help=help_text.replace("%", "%%"))


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Build the config from --config plus the --section.field overrides parsed by argparse."""
    values: dict[str, Any] = read_yaml(args.config) if args.config else {}
    for key, raw in vars(args).items():
        if key.startswith("override:") and raw is not None:
            set_dotted(values, key.removeprefix("override:"), _parse_value(raw))
    origin = f"{args.config} with command-line overrides" if args.config else "command line"
    return build_config(values, origin)


def _parse_value(raw: str) -> Any:
    if raw.strip() in ("None", "none"):
        return None
    value = yaml.safe_load(raw)
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"value {raw!r} is NaN")
    return value


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

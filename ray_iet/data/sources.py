"""Load an image data source into one canonical Arrow table.

Every source becomes a table with these columns:

- ``id`` int64: 0..N-1 in source order, or the integer ``id`` column of a Parquet input.
- ``image`` binary: raw uint8 pixels in HWC order, exactly H*W*C bytes per row.
- ``label`` int64, nullable: only when the source has labels.
- ``caption`` string: only when the source has captions.

The schema metadata stores ``height``, ``width`` and ``channels`` as ASCII integers and
``source`` as a short description. All images in one table share one shape, which
:func:`load_source` checks (or enforces, with ``image_size`` and ``channels``) before any
training starts.

Images are converted to one of two Pillow modes: ``L`` (1 channel) or ``RGB`` (3 channels).
1-bit, ``LA`` and 16-bit grayscale images become ``L``, and the alpha channel is dropped.
Palette, ``RGBA``, ``CMYK`` and other color modes become ``RGB``.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

BUILTIN_SOURCES = ("digits", "lfw")
FILE_SOURCES = ("folder", "parquet", "npz")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})

# Float pixels in an .npz may overshoot [0, 1] by this much (rounding in earlier processing).
FLOAT_RANGE_TOLERANCE = 1e-3
PARQUET_BATCH_ROWS = 256
# Resampling filter for every resize. Pillow widens the filter support by the scale factor
# when it downscales, so the same filter also antialiases when shrinking images.
RESAMPLING = Image.Resampling.BICUBIC

_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)

_METADATA_SHAPE_KEYS = (b"height", b"width", b"channels")


class DataError(ValueError):
    """Invalid data source or table. The message names the file, row or field and the fix."""


@dataclass
class _RawSource:
    """Images of one source in source order, before shape checks and conversion."""

    description: str
    # (location, image) pairs. The location names the file or row in error messages.
    images: Iterator[tuple[str, Image.Image]]
    ids: pa.Array | None = None  # None assigns 0..N-1
    labels: pa.Array | None = None
    captions: pa.Array | None = None
    notes: list[str] = field(default_factory=list)  # conversions the reader applied


@dataclass
class _Converter:
    """Check or convert each image to one size and mode, and count the conversions."""

    image_size: int | None
    channels: int | None
    first_location: str = ""
    first_size: tuple[int, int] | None = None  # Pillow order: (width, height)
    first_mode: str | None = None
    resized: Counter[tuple[int, int]] = field(default_factory=Counter)
    converted: Counter[tuple[str, str]] = field(default_factory=Counter)

    def convert(self, location: str, image: Image.Image) -> Image.Image:
        if self.first_size is None:
            self.first_location, self.first_size = location, image.size
        image = self._convert_mode(location, image)
        return self._convert_size(location, image)

    def _convert_mode(self, location: str, image: Image.Image) -> Image.Image:
        original_mode = image.mode
        image = _to_base_mode(image)
        if self.channels is not None:
            image = image.convert(_mode_for_channels(self.channels))
        elif self.first_mode is None:
            self.first_mode = image.mode
        elif image.mode != self.first_mode:
            raise DataError(
                f"{location} has {_channel_count(image.mode)} channel(s) (mode {original_mode}) but the "
                f"first image, {self.first_location}, has {_channel_count(self.first_mode)}. Set "
                "channels=1 or channels=3 to convert every image"
            )
        if image.mode != original_mode:
            self.converted[(original_mode, image.mode)] += 1
        return image

    def _convert_size(self, location: str, image: Image.Image) -> Image.Image:
        if self.image_size is None:
            if image.size != self.first_size:
                raise DataError(
                    f"{location} has size {_format_size(image.size)} (height x width) but the first "
                    f"image, {self.first_location}, has {_format_size(self.first_size)}. Set "
                    "image_size to resize every image to one square size"
                )
            return image
        target = (self.image_size, self.image_size)
        if image.size == target:
            return image
        self.resized[image.size] += 1
        return image.resize(target, RESAMPLING)

    def output_shape(self) -> tuple[int, int, int]:
        """Return (height, width, channels) of the converted images, once one image was seen."""
        if self.first_size is None:
            raise RuntimeError("output_shape needs at least one converted image")
        width, height = self.first_size if self.image_size is None else (self.image_size, self.image_size)
        depth = self.channels or _channel_count(self.first_mode or "L")
        return height, width, depth

    def describe(self) -> list[str]:
        notes = [
            f"converted {count} images from {source} to {target}"
            for (source, target), count in sorted(self.converted.items())
        ]
        if len(self.resized) == 1:
            [(size, count)] = self.resized.items()
            notes.append(f"resized {count} images from {_format_size(size)} to {self.image_size}x{self.image_size}")
        elif self.resized:
            count = sum(self.resized.values())
            notes.append(
                f"resized {count} images of {len(self.resized)} different sizes to {self.image_size}x{self.image_size}"
            )
        return notes


def load_source(
    source: str,
    path: str | Path | None = None,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    image_column: str = "image",
    label_column: str | None = "label",
    caption_column: str | None = "caption",
    npz_key: str | None = None,
    limit: int | None = None,
) -> pa.Table:
    """Load ``source`` into the canonical image table described in the module docstring.

    ``source`` is a built-in data set (``digits``, ``lfw``) or a file source (``folder``,
    ``parquet``, ``npz``) read from ``path``. ``image_size`` resizes every image to a square
    of that many pixels, which stretches non-square images. ``channels`` (1 or 3) converts
    every image to grayscale or RGB. Without them, all images must already share one size
    and channel count. ``limit`` keeps the first ``limit`` samples. The column names apply
    to Parquet input only. Raises DataError on any invalid argument or input.
    """
    _validate_options(image_size, channels, limit)
    raw = _read_source(source, path, image_column, label_column, caption_column, npz_key)
    converter = _Converter(image_size=image_size, channels=channels)
    # islice stops before decoding images past the limit, so they are never checked.
    pixels = [converter.convert(location, image).tobytes() for location, image in islice(raw.images, limit)]
    if not pixels:
        raise DataError(f"{raw.description} contains no images. Check the path and the file contents")

    table = _build_table(raw, converter, pixels)
    _log_summary(table, raw.notes + converter.describe())
    return table


def decode_images(table: pa.Table) -> np.ndarray:
    """Decode the ``image`` column into a writable (N, H, W, C) uint8 array.

    Raises DataError if the column is missing, contains nulls or a row has the wrong length.
    """
    height, width, depth = image_shape(table)
    if "image" not in table.column_names:
        raise DataError(f"table has no 'image' column. Columns present: {table.column_names}")
    row_bytes = height * width * depth
    parts = []
    first_row = 0
    for chunk in table.column("image").chunks:
        parts.append(_chunk_pixels(chunk, row_bytes, first_row))
        first_row += len(chunk)
    if not parts:
        return np.empty((0, height, width, depth), dtype=np.uint8)
    return np.concatenate(parts).reshape(-1, height, width, depth)


def image_shape(table: pa.Table) -> tuple[int, int, int]:
    """Return the (height, width, channels) stored in the table's schema metadata."""
    metadata = table.schema.metadata or {}
    shape = []
    for key in _METADATA_SHAPE_KEYS:
        value = metadata.get(key)
        if value is None or not value.isdigit() or int(value) < 1:
            raise DataError(
                f"table schema metadata has no valid {key.decode()!r} (value {value!r}). "
                "Build the table with load_source"
            )
        shape.append(int(value))
    return shape[0], shape[1], shape[2]


def check_enough_samples(table: pa.Table, num_shards: int) -> None:
    """Raise DataError if the table is empty or has fewer rows than ``num_shards``.

    Every shard needs at least one sample.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    if table.num_rows == 0:
        raise DataError(f"{_table_description(table)} contains no samples. Check the data source")
    if table.num_rows < num_shards:
        raise DataError(
            f"{_table_description(table)} has {table.num_rows} samples, fewer than the "
            f"{num_shards} shards. Lower num_shards to at most {table.num_rows} or add data"
        )


def _validate_options(image_size: int | None, channels: int | None, limit: int | None) -> None:
    for name, value in (("image_size", image_size), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DataError(f"{name} must be a positive integer or None, got {value!r}")
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")


def _read_source(
    source: str,
    path: str | Path | None,
    image_column: str,
    label_column: str | None,
    caption_column: str | None,
    npz_key: str | None,
) -> _RawSource:
    if source in BUILTIN_SOURCES:
        if path is not None:
            raise DataError(f"source {source!r} is built in and takes no path, got path {str(path)!r}")
        return _read_digits() if source == "digits" else _read_lfw()
    if source not in FILE_SOURCES:
        valid = ", ".join(BUILTIN_SOURCES + FILE_SOURCES)
        raise DataError(f"unknown source {source!r}. Valid sources: {valid}")
    if path is None:
        raise DataError(f"source {source!r} requires a path")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise DataError(f"path {str(resolved)!r} for source {source!r} does not exist")
    if source == "folder":
        return _read_folder(resolved)
    if source == "parquet":
        return _read_parquet(resolved, image_column, label_column, caption_column)
    return _read_npz(resolved, npz_key)


def _read_digits() -> _RawSource:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16, so scale them to the full uint8 range.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return _RawSource(
        description="digits (sklearn.datasets.load_digits)",
        images=_array_images(pixels, "digits"),
        labels=pa.array(digits.target, type=pa.int64()),
        notes=["scaled pixel values from 0..16 to 0..255"],
    )


def _read_lfw() -> _RawSource:
    from skimage.data import lfw_subset

    faces = lfw_subset()  # floats in [0, 1]
    pixels = np.rint(np.clip(faces, 0.0, 1.0) * 255.0).astype(np.uint8)
    return _RawSource(
        description="lfw (skimage.data.lfw_subset)",
        images=_array_images(pixels, "lfw"),
        notes=["scaled float pixels from [0, 1] to 0..255"],
    )


def _read_folder(root: Path) -> _RawSource:
    if not root.is_dir():
        raise DataError(f"path {str(root)!r} for source 'folder' is not a directory. Pass a directory of images")
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    files.sort(key=lambda p: p.relative_to(root).parts)
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DataError(f"folder {str(root)!r} contains no image files ({suffixes}, any case, searched recursively)")
    return _RawSource(description=f"folder {root}", images=_folder_images(files))


def _folder_images(files: list[Path]) -> Iterator[tuple[str, Image.Image]]:
    for file in files:
        location = f"file {str(file)!r}"
        try:
            data = file.read_bytes()
        except OSError as error:
            raise DataError(f"cannot read {location}: {error}") from error
        yield location, _decode_image(data, location)


def _decode_image(data: bytes, location: str) -> Image.Image:
    """Decode encoded image bytes with Pillow, applying the EXIF orientation of photos."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as error:
        # Pillow's message for an unknown format shows only the repr of the BytesIO object.
        reason = "unknown image format" if isinstance(error, UnidentifiedImageError) else str(error)
        raise DataError(f"{location} is not a readable PNG or JPEG image ({reason}). Fix or remove it") from error


def _read_parquet(
    file: Path, image_column: str, label_column: str | None, caption_column: str | None
) -> _RawSource:
    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"cannot read {str(file)!r} as a Parquet file: {error}") from error
    schema = parquet.schema_arrow
    if image_column not in schema.names:
        raise DataError(
            f"Parquet file {str(file)!r} has no image column {image_column!r}. Columns present: "
            f"{schema.names}. Set image_column to the column that contains the encoded images"
        )
    _check_image_column_type(file, image_column, schema.field(image_column).type)
    if parquet.metadata.num_rows == 0:
        raise DataError(f"Parquet file {str(file)!r} contains no rows")
    side_columns = [name for name in ("id", label_column, caption_column) if name in schema.names]
    side = parquet.read(columns=side_columns) if side_columns else None
    return _RawSource(
        description=f"parquet {file}",
        images=_parquet_images(parquet, file, image_column),
        ids=_parquet_ids(file, side),
        labels=_parquet_labels(file, side, label_column),
        captions=_parquet_captions(file, side, caption_column),
    )


def _check_image_column_type(file: Path, column: str, column_type: pa.DataType) -> None:
    if pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type):
        return
    if pa.types.is_struct(column_type) and column_type.get_field_index("bytes") >= 0:
        return
    raise DataError(
        f"image column {column!r} of Parquet file {str(file)!r} has type {column_type}. Expected binary "
        "encoded images or a struct with a 'bytes' field as Hugging Face datasets writes them"
    )


def _parquet_images(parquet: pq.ParquetFile, file: Path, column: str) -> Iterator[tuple[str, Image.Image]]:
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[column]):
        for value in batch.column(0).to_pylist():
            location = f"row {row} of Parquet file {str(file)!r}"
            yield location, _decode_image(_encoded_bytes(value, location, column), location)
            row += 1


def _encoded_bytes(value: bytes | dict | None, location: str, column: str) -> bytes:
    """Return the encoded image of one cell: raw bytes or a Hugging Face {bytes, path} struct."""
    if isinstance(value, dict):
        if value.get("bytes") is None:
            raise DataError(
                f"{location} has no image bytes in column {column!r} (path {value.get('path')!r}), "
                "only a path. Store the encoded image bytes in the file"
            )
        return value["bytes"]
    if value is None:
        raise DataError(f"{location} has a null image in column {column!r}. Remove the row or fill it")
    return value


def _parquet_ids(file: Path, side: pa.Table | None) -> pa.Array | None:
    if side is None or "id" not in side.column_names:
        return None
    column = side.column("id")
    if not pa.types.is_integer(column.type):
        logger.warning("Ignoring the non-integer 'id' column (%s) of %s and assigning ids 0..N-1", column.type, file)
        return None
    if column.null_count:
        row = column.to_pylist().index(None)
        raise DataError(f"row {row} of Parquet file {str(file)!r} has a null id. Give every row an integer id")
    try:
        ids = column.cast(pa.int64()).combine_chunks()
    except pa.ArrowInvalid as error:
        raise DataError(f"the 'id' column of Parquet file {str(file)!r} does not fit int64: {error}") from error
    _check_unique_ids(file, ids.to_numpy())
    return ids


def _check_unique_ids(file: Path, ids: np.ndarray) -> None:
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    repeats = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if repeats.size == 0:
        return
    # The stable sort keeps equal ids in row order, so order[repeats + 1] are later occurrences.
    row = int(order[repeats + 1].min())
    first_row = int(order[np.searchsorted(sorted_ids, ids[row])])
    raise DataError(
        f"row {row} of Parquet file {str(file)!r} repeats id {int(ids[row])} of row {first_row}. "
        "Ids must be unique, so fix the 'id' column or drop it to assign ids 0..N-1"
    )


def _parquet_labels(file: Path, side: pa.Table | None, column: str | None) -> pa.Array | None:
    if side is None or column is None or column not in side.column_names:
        return None
    labels = side.column(column)
    if not pa.types.is_integer(labels.type):
        raise DataError(
            f"label column {column!r} of Parquet file {str(file)!r} has type {labels.type}. Labels must be "
            "integers, so map them to class indices or set label_column=None"
        )
    try:
        return labels.cast(pa.int64()).combine_chunks()
    except pa.ArrowInvalid as error:
        raise DataError(f"label column {column!r} of Parquet file {str(file)!r} does not fit int64: {error}") from error


def _parquet_captions(file: Path, side: pa.Table | None, column: str | None) -> pa.Array | None:
    if side is None or column is None or column not in side.column_names:
        return None
    captions = side.column(column)
    if not (pa.types.is_string(captions.type) or pa.types.is_large_string(captions.type)):
        raise DataError(
            f"caption column {column!r} of Parquet file {str(file)!r} has type {captions.type}. Captions "
            "must be strings, so convert them or set caption_column=None"
        )
    return captions.cast(pa.string()).combine_chunks()


def _read_npz(file: Path, key: str | None) -> _RawSource:
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {str(file)!r} as an .npz archive: {error}") from error
    key = _select_npz_key(file, list(arrays), key)
    pixels, notes = _npz_pixels(file, key, arrays[key])
    labels = _npz_labels(file, key, arrays, len(pixels))
    return _RawSource(
        description=f"npz {file} (array {key!r})",
        images=_array_images(pixels, f"array {key!r} of {str(file)!r}"),
        labels=labels,
        notes=notes,
    )


def _select_npz_key(file: Path, keys: list[str], key: str | None) -> str:
    if key is not None:
        if key not in keys:
            raise DataError(f".npz archive {str(file)!r} has no array {key!r}. Arrays present: {keys}")
        return key
    if len(keys) == 1:
        return keys[0]
    for candidate in ("images", "x"):
        if candidate in keys:
            return candidate
    raise DataError(
        f".npz archive {str(file)!r} contains arrays {keys} and none is named 'images' or 'x'. "
        "Set npz_key to the array that contains the images"
    )


def _npz_pixels(file: Path, key: str, array: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Return the images as (N, H, W, C) uint8 and the conversions applied."""
    where = f"array {key!r} of {str(file)!r}"
    images = _to_nhwc(where, array)
    if len(images) == 0:
        raise DataError(f"{where} contains no images")
    if images.dtype == np.uint8:
        return images, []
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(
            f"{where} has dtype {images.dtype}. Store images as uint8 in 0..255 or as floats in [0, 1]"
        )
    low, high = float(images.min()), float(images.max())
    finite = math.isfinite(low) and math.isfinite(high)
    if not finite or low < -FLOAT_RANGE_TOLERANCE or high > 1 + FLOAT_RANGE_TOLERANCE:
        raise DataError(
            f"{where} has float values from {low} to {high}. Float images must lie in [0, 1] "
            f"(tolerance {FLOAT_RANGE_TOLERANCE}), so rescale them or store uint8 in 0..255"
        )
    pixels = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return pixels, ["scaled float pixels from [0, 1] to 0..255"]


def _to_nhwc(where: str, array: np.ndarray) -> np.ndarray:
    """Reshape (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3} to (N, H, W, C).

    A 4-D shape that fits both layouts, such as (N, 3, 8, 3), is read as (N, H, W, C).
    """
    if array.ndim == 3:
        return array[..., np.newaxis]
    if array.ndim == 4 and array.shape[3] in (1, 3):
        return array
    if array.ndim == 4 and array.shape[1] in (1, 3):
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1))
    raise DataError(
        f"{where} has shape {array.shape}. Expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C of 1 or 3"
    )


def _npz_labels(file: Path, key: str, arrays: dict[str, np.ndarray], count: int) -> pa.Array | None:
    label_key = next((name for name in ("labels", "y") if name in arrays and name != key), None)
    if label_key is None:
        return None
    labels = arrays[label_key]
    if labels.shape != (count,):
        raise DataError(
            f"labels array {label_key!r} of {str(file)!r} has shape {labels.shape}. Expected ({count},), "
            f"one label per image of array {key!r}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels array {label_key!r} of {str(file)!r} has dtype {labels.dtype}. Expected integers")
    return pa.array(labels.astype(np.int64), type=pa.int64())


def _array_images(pixels: np.ndarray, container: str) -> Iterator[tuple[str, Image.Image]]:
    """Yield Pillow images from (N, H, W) or (N, H, W, C) uint8 pixels with C in {1, 3}."""
    for index, image in enumerate(pixels):
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        yield f"image {index} of {container}", Image.fromarray(np.ascontiguousarray(image))


def _to_base_mode(image: Image.Image) -> Image.Image:
    """Convert an image to mode L (1 channel) or RGB (3 channels)."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values at 255, so keep the high byte instead.
        values = np.asarray(image, dtype=np.int64)
        return Image.fromarray(np.clip(values >> 8, 0, 255).astype(np.uint8))
    if image.mode in _GRAYSCALE_MODES:
        return image.convert("L")
    return image.convert("RGB")


def _mode_for_channels(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def _channel_count(mode: str) -> int:
    return 1 if mode == "L" else 3


def _format_size(size: tuple[int, int] | None) -> str:
    """Format a Pillow (width, height) size as height x width."""
    if size is None:
        return "unknown"
    width, height = size
    return f"{height}x{width}"


def _build_table(raw: _RawSource, converter: _Converter, pixels: list[bytes]) -> pa.Table:
    count = len(pixels)
    ids = raw.ids.slice(0, count) if raw.ids is not None else pa.array(np.arange(count, dtype=np.int64))
    columns = {"id": ids, "image": pa.array(pixels, type=pa.binary())}
    fields = [pa.field("id", pa.int64(), nullable=False), pa.field("image", pa.binary(), nullable=False)]
    if raw.labels is not None:
        columns["label"] = raw.labels.slice(0, count)
        fields.append(pa.field("label", pa.int64()))
    if raw.captions is not None:
        columns["caption"] = raw.captions.slice(0, count)
        fields.append(pa.field("caption", pa.string()))
    height, width, depth = converter.output_shape()
    metadata = {
        b"height": str(height).encode(),
        b"width": str(width).encode(),
        b"channels": str(depth).encode(),
        b"source": raw.description.encode(),
    }
    return pa.table(columns, schema=pa.schema(fields, metadata=metadata))


def _log_summary(table: pa.Table, conversions: list[str]) -> None:
    height, width, depth = image_shape(table)
    logger.info(
        "Loaded %d images of %dx%d (height x width) with %d channel(s) from %s: %s",
        table.num_rows,
        height,
        width,
        depth,
        table.schema.metadata[b"source"].decode(),
        ", ".join(conversions) if conversions else "no conversion",
    )


def _chunk_pixels(chunk: pa.Array, row_bytes: int, first_row: int) -> np.ndarray:
    """Return the pixel bytes of one binary chunk as a flat uint8 view, without a copy per row.

    ``first_row`` is the table row of the chunk's first element, for error messages.
    """
    if chunk.null_count:
        raise DataError("the 'image' column contains nulls. Rebuild the table with load_source")
    if not (pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type)):
        raise DataError(f"the 'image' column has type {chunk.type}. Expected binary")
    if len(chunk) == 0:
        return np.empty(0, dtype=np.uint8)
    offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
    _, offsets_buffer, data_buffer = chunk.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[chunk.offset : chunk.offset + len(chunk) + 1]
    lengths = np.diff(offsets)
    if np.any(lengths != row_bytes):
        index = int(np.flatnonzero(lengths != row_bytes)[0])
        raise DataError(
            f"row {first_row + index} of the 'image' column has {int(lengths[index])} bytes but the "
            f"metadata shape needs {row_bytes}. Rebuild the table with load_source"
        )
    return np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]


def _table_description(table: pa.Table) -> str:
    source = (table.schema.metadata or {}).get(b"source")
    return f"data source {source.decode()!r}" if source else "the table"

import io
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ray_iet.data.sources import (
    BUILTIN_SOURCES,
    DataError,
    check_enough_samples,
    decode_images,
    image_shape,
    load_source,
)


def _gray(value: int, size: tuple[int, int] = (6, 4)) -> Image.Image:
    """Return a uniform grayscale image; ``size`` is Pillow's (width, height)."""
    return Image.new("L", size, value)


def _encode(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def _write(path: Path, image: Image.Image, image_format: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encode(image, image_format))
    return path


def _write_parquet(path: Path, columns: dict[str, pa.Array]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_digits_shape_and_metadata():
    table = load_source("digits")
    assert table.num_rows == 1797
    assert image_shape(table) == (8, 8, 1)
    assert table.schema.metadata[b"height"] == b"8"
    assert table.schema.metadata[b"width"] == b"8"
    assert table.schema.metadata[b"channels"] == b"1"
    assert b"digits" in table.schema.metadata[b"source"]


def test_digits_columns_and_types():
    table = load_source("digits")
    assert table.column_names == ["id", "image", "label"]
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("image").type == pa.binary()
    assert table.schema.field("label").type == pa.int64()
    assert table.column("id").to_pylist() == list(range(1797))


def test_digits_pixels_scaled_to_uint8():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = decode_images(load_source("digits"))
    assert images.shape == (1797, 8, 8, 1)
    assert images.dtype == np.uint8
    assert images.max() == 255
    expected = np.rint(digits.images * 255 / 16).astype(np.uint8)
    assert np.array_equal(images[..., 0], expected)


def test_digits_labels_match_targets():
    from sklearn.datasets import load_digits

    table = load_source("digits")
    assert table.column("label").to_pylist() == load_digits().target.tolist()


def test_digits_resize_to_16():
    table = load_source("digits", image_size=16)
    images = decode_images(table)
    assert image_shape(table) == (16, 16, 1)
    assert images.shape == (1797, 16, 16, 1)
    assert all(len(value) == 256 for value in table.column("image").to_pylist()[:10])


def test_digits_resize_logs_summary(caplog):
    with caplog.at_level(logging.INFO, logger="ray_iet.data.sources"):
        load_source("digits", image_size=16)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert "resized 1797 images from 8x8 to 16x16" in messages[0]
    assert "1797 images" in messages[0]


def test_lfw_shape_without_labels():
    table = load_source("lfw")
    images = decode_images(table)
    assert table.num_rows == 200
    assert image_shape(table) == (25, 25, 1)
    assert images.dtype == np.uint8
    assert table.column_names == ["id", "image"]


def test_lfw_channels_3():
    images = decode_images(load_source("lfw", channels=3, limit=4))
    assert images.shape == (4, 25, 25, 3)
    assert np.array_equal(images[..., 0], images[..., 2])


def test_builtin_sources_listed():
    assert BUILTIN_SOURCES == ("digits", "lfw")


def test_builtin_rejects_path(tmp_path):
    with pytest.raises(DataError, match="takes no path"):
        load_source("digits", tmp_path)


def test_limit_keeps_first_samples():
    table = load_source("digits", limit=10)
    full = load_source("digits")
    assert table.num_rows == 10
    assert table.column("id").to_pylist() == list(range(10))
    assert table.column("image").to_pylist() == full.column("image").to_pylist()[:10]


@pytest.mark.parametrize("limit", [0, -3, 1.5])
def test_limit_invalid(limit):
    with pytest.raises(DataError, match="limit must be a positive integer"):
        load_source("digits", limit=limit)


def test_unknown_source_lists_valid():
    with pytest.raises(DataError, match="unknown source 'mnist'") as error:
        load_source("mnist")
    for name in ("digits", "lfw", "folder", "parquet", "npz"):
        assert name in str(error.value)


def test_missing_path_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as error:
        load_source("folder", missing)
    assert str(missing) in str(error.value)


def test_file_source_requires_path():
    with pytest.raises(DataError, match="requires a path"):
        load_source("npz")


def test_folder_nested_ids_by_path(tmp_path):
    _write(tmp_path / "b" / "z.png", _gray(30))
    _write(tmp_path / "a" / "y.JPG", _gray(20), "JPEG")
    _write(tmp_path / "a" / "deep" / "x.jpeg", _gray(10), "JPEG")
    _write(tmp_path / "c.png", _gray(40))
    (tmp_path / "notes.txt").write_text("not an image")

    table = load_source("folder", tmp_path)
    images = decode_images(table)
    assert table.column("id").to_pylist() == [0, 1, 2, 3]
    assert table.column_names == ["id", "image"]
    assert image_shape(table) == (4, 6, 1)
    # Path order: a/deep/x.jpeg, a/y.JPG, b/z.png, c.png.
    assert np.abs(images.reshape(4, -1).mean(axis=1) - [10, 20, 30, 40]).max() < 2


def test_folder_rgba_becomes_rgb(tmp_path):
    _write(tmp_path / "a.png", Image.new("RGBA", (3, 2), (10, 20, 30, 128)))
    _write(tmp_path / "b.png", Image.new("RGB", (3, 2), (40, 50, 60)))
    table = load_source("folder", tmp_path)
    images = decode_images(table)
    assert image_shape(table) == (2, 3, 3)
    assert images[0, 0, 0].tolist() == [10, 20, 30]
    assert images[1, 0, 0].tolist() == [40, 50, 60]


def test_folder_sixteen_bit_keeps_high_byte(tmp_path):
    values = np.array([[0, 256 * 100], [256 * 200 + 7, 65535]], dtype=np.uint16)
    _write(tmp_path / "deep.png", Image.fromarray(values))
    images = decode_images(load_source("folder", tmp_path))
    assert images[0, :, :, 0].tolist() == [[0, 100], [200, 255]]


def test_folder_corrupt_file_named(tmp_path):
    _write(tmp_path / "good.png", _gray(5))
    broken = tmp_path / "sub" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match="not a readable PNG or JPEG") as error:
        load_source("folder", tmp_path)
    assert str(broken) in str(error.value)


def test_folder_mixed_sizes_named(tmp_path):
    _write(tmp_path / "a.png", _gray(5, (6, 4)))
    odd = _write(tmp_path / "b.png", _gray(5, (8, 8)))
    with pytest.raises(DataError, match="image_size") as error:
        load_source("folder", tmp_path)
    assert str(odd) in str(error.value)
    assert "8x8" in str(error.value)


def test_folder_mixed_sizes_resized(tmp_path):
    _write(tmp_path / "a.png", _gray(5, (6, 4)))
    _write(tmp_path / "b.png", _gray(5, (8, 8)))
    table = load_source("folder", tmp_path, image_size=5)
    images = decode_images(table)
    assert image_shape(table) == (5, 5, 1)
    assert images.shape == (2, 5, 5, 1)
    assert np.all(images == 5)


def test_folder_mixed_modes_named(tmp_path):
    _write(tmp_path / "a.png", _gray(100))
    color = _write(tmp_path / "b.png", Image.new("RGB", (6, 4), (255, 0, 0)))
    with pytest.raises(DataError, match="Set channels=1 or channels=3") as error:
        load_source("folder", tmp_path)
    assert str(color) in str(error.value)


def test_folder_mixed_modes_to_rgb(tmp_path):
    _write(tmp_path / "a.png", _gray(100))
    _write(tmp_path / "b.png", Image.new("RGB", (6, 4), (255, 0, 0)))
    images = decode_images(load_source("folder", tmp_path, channels=3))
    assert images.shape == (2, 4, 6, 3)
    assert images[0, 0, 0].tolist() == [100, 100, 100]
    assert images[1, 0, 0].tolist() == [255, 0, 0]


def test_folder_mixed_modes_to_gray(tmp_path):
    _write(tmp_path / "a.png", _gray(100))
    _write(tmp_path / "b.png", Image.new("RGB", (6, 4), (255, 0, 0)))
    images = decode_images(load_source("folder", tmp_path, channels=1))
    assert images.shape == (2, 4, 6, 1)
    # Pillow converts RGB to L with the ITU-R 601-2 luma weights: 255 * 0.299 = 76.
    assert images[1, 0, 0, 0] == 76


def test_folder_empty_named(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="contains no image files") as error:
        load_source("folder", tmp_path)
    assert str(tmp_path) in str(error.value)


def test_folder_path_is_file(tmp_path):
    file = _write(tmp_path / "a.png", _gray(1))
    with pytest.raises(DataError, match="not a directory"):
        load_source("folder", file)


def test_parquet_raw_bytes_with_labels(tmp_path):
    encoded = [_encode(_gray(value)) for value in (10, 20, 30)]
    path = _write_parquet(
        tmp_path / "raw.parquet",
        {"image": pa.array(encoded, type=pa.binary()), "label": pa.array([2, None, 7], type=pa.int32())},
    )
    table = load_source("parquet", path)
    assert table.column_names == ["id", "image", "label"]
    assert table.column("label").to_pylist() == [2, None, 7]
    assert table.schema.field("label").type == pa.int64()
    assert decode_images(table)[:, 0, 0, 0].tolist() == [10, 20, 30]


def test_parquet_hugging_face_struct(tmp_path):
    struct_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": _encode(_gray(value)), "path": f"{value}.png"} for value in (40, 50)]
    path = _write_parquet(
        tmp_path / "hf.parquet",
        {
            "img": pa.array(cells, type=struct_type),
            "fine_label": pa.array([3, 4], type=pa.int64()),
            "text": pa.array(["a cat", "a dog"], type=pa.large_string()),
        },
    )
    table = load_source("parquet", path, image_column="img", label_column="fine_label", caption_column="text")
    assert table.column_names == ["id", "image", "label", "caption"]
    assert table.column("label").to_pylist() == [3, 4]
    assert table.column("caption").to_pylist() == ["a cat", "a dog"]
    assert table.schema.field("caption").type == pa.string()
    assert decode_images(table)[:, 0, 0, 0].tolist() == [40, 50]


def test_parquet_missing_label_omitted(tmp_path):
    path = _write_parquet(tmp_path / "plain.parquet", {"image": pa.array([_encode(_gray(1))])})
    table = load_source("parquet", path, label_column="class", caption_column="caption")
    assert table.column_names == ["id", "image"]


def test_parquet_id_column_kept(tmp_path):
    encoded = [_encode(_gray(value)) for value in (1, 2, 3)]
    path = _write_parquet(
        tmp_path / "ids.parquet",
        {"id": pa.array([30, 10, 20], type=pa.int32()), "image": pa.array(encoded)},
    )
    table = load_source("parquet", path, limit=2)
    assert table.column("id").to_pylist() == [30, 10]
    assert table.schema.field("id").type == pa.int64()


def test_parquet_duplicate_id_named(tmp_path):
    encoded = [_encode(_gray(value)) for value in (1, 2, 3, 4)]
    path = _write_parquet(
        tmp_path / "dup.parquet",
        {"id": pa.array([5, 6, 7, 6]), "image": pa.array(encoded)},
    )
    with pytest.raises(DataError, match="row 3 of Parquet file .* repeats id 6 of row 1"):
        load_source("parquet", path)


def test_parquet_bad_row_named(tmp_path):
    encoded = [_encode(_gray(1)), _encode(_gray(2)), b"definitely not an image"]
    path = _write_parquet(tmp_path / "bad.parquet", {"image": pa.array(encoded)})
    with pytest.raises(DataError, match="row 2 of Parquet file") as error:
        load_source("parquet", path)
    assert str(path) in str(error.value)


def test_parquet_bad_row_after_limit_ignored(tmp_path):
    encoded = [_encode(_gray(1)), _encode(_gray(2)), b"definitely not an image"]
    path = _write_parquet(tmp_path / "bad.parquet", {"image": pa.array(encoded)})
    assert load_source("parquet", path, limit=2).num_rows == 2


def test_parquet_struct_without_bytes(tmp_path):
    struct_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": _encode(_gray(1)), "path": None}, {"bytes": None, "path": "/data/x.png"}]
    path = _write_parquet(tmp_path / "paths.parquet", {"image": pa.array(cells, type=struct_type)})
    with pytest.raises(DataError, match="row 1 of Parquet file .* has no image bytes"):
        load_source("parquet", path)


def test_parquet_missing_image_column(tmp_path):
    path = _write_parquet(
        tmp_path / "other.parquet",
        {"picture": pa.array([_encode(_gray(1))]), "label": pa.array([0])},
    )
    with pytest.raises(DataError, match="no image column 'image'") as error:
        load_source("parquet", path)
    assert "['picture', 'label']" in str(error.value)


def test_parquet_wrong_image_type(tmp_path):
    path = _write_parquet(tmp_path / "ints.parquet", {"image": pa.array([1, 2])})
    with pytest.raises(DataError, match="has type int64"):
        load_source("parquet", path)


def test_parquet_string_labels_rejected(tmp_path):
    path = _write_parquet(
        tmp_path / "names.parquet",
        {"image": pa.array([_encode(_gray(1))]), "label": pa.array(["cat"])},
    )
    with pytest.raises(DataError, match="label_column=None"):
        load_source("parquet", path)


def test_parquet_zero_rows(tmp_path):
    path = _write_parquet(tmp_path / "empty.parquet", {"image": pa.array([], type=pa.binary())})
    with pytest.raises(DataError, match="contains no rows") as error:
        load_source("parquet", path)
    assert str(path) in str(error.value)


def test_parquet_not_parquet(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_bytes(b"plain text")
    with pytest.raises(DataError, match="cannot read .* as a Parquet file"):
        load_source("parquet", path)


@pytest.mark.parametrize(
    ("layout", "channels"),
    [("nhw", 1), ("nhwc", 1), ("nhwc", 3), ("nchw", 1), ("nchw", 3)],
)
def test_npz_layouts(tmp_path, layout, channels):
    rng = np.random.default_rng(0)
    expected = rng.integers(0, 256, size=(5, 4, 6, channels), dtype=np.uint8)
    stored = {"nhw": expected[..., 0], "nhwc": expected, "nchw": expected.transpose(0, 3, 1, 2)}[layout]
    path = tmp_path / "images.npz"
    np.savez(path, images=stored, labels=np.arange(5))

    table = load_source("npz", path)
    assert image_shape(table) == (4, 6, channels)
    assert np.array_equal(decode_images(table), expected)
    assert table.column("label").to_pylist() == [0, 1, 2, 3, 4]


def test_npz_float_scaled(tmp_path):
    path = tmp_path / "floats.npz"
    np.savez(path, x=np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32), y=np.array([9]))
    table = load_source("npz", path)
    assert decode_images(table)[0, 0, :, 0].tolist() == [0, 128, 255]
    assert table.column("label").to_pylist() == [9]


def test_npz_float_out_of_range(tmp_path):
    path = tmp_path / "floats.npz"
    np.savez(path, images=np.array([[[0.0, 255.0]]]))
    with pytest.raises(DataError, match=r"from 0.0 to 255.0. Float images must lie in \[0, 1\]"):
        load_source("npz", path)


def test_npz_integer_dtype_rejected(tmp_path):
    path = tmp_path / "ints.npz"
    np.savez(path, images=np.zeros((2, 3, 3), dtype=np.int64))
    with pytest.raises(DataError, match="dtype int64"):
        load_source("npz", path)


def test_npz_ambiguous_keys_listed(tmp_path):
    path = tmp_path / "many.npz"
    np.savez(path, train=np.zeros((2, 3, 3), np.uint8), test=np.zeros((1, 3, 3), np.uint8))
    with pytest.raises(DataError, match="Set npz_key") as error:
        load_source("npz", path)
    assert "'train'" in str(error.value)
    assert "'test'" in str(error.value)


def test_npz_key_selects_array(tmp_path):
    path = tmp_path / "many.npz"
    np.savez(path, train=np.zeros((2, 3, 3), np.uint8), test=np.zeros((1, 3, 3), np.uint8))
    assert load_source("npz", path, npz_key="test").num_rows == 1


def test_npz_bad_shape(tmp_path):
    path = tmp_path / "rgba.npz"
    np.savez(path, images=np.zeros((2, 5, 5, 4), np.uint8))
    with pytest.raises(DataError, match=r"shape \(2, 5, 5, 4\)"):
        load_source("npz", path)


def test_npz_label_length_mismatch(tmp_path):
    path = tmp_path / "labels.npz"
    np.savez(path, images=np.zeros((3, 2, 2), np.uint8), labels=np.arange(2))
    with pytest.raises(DataError, match=r"Expected \(3,\)"):
        load_source("npz", path)


def test_check_enough_samples_passes():
    check_enough_samples(load_source("digits", limit=4), 4)


def test_check_enough_samples_too_few():
    table = load_source("digits", limit=3)
    with pytest.raises(DataError, match="3 samples, fewer than the 4 shards"):
        check_enough_samples(table, 4)


def test_check_enough_samples_empty():
    table = load_source("digits", limit=3).slice(0, 0)
    with pytest.raises(DataError, match="contains no samples"):
        check_enough_samples(table, 1)


def test_decode_images_chunked_table():
    table = load_source("digits", limit=6)
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2, 4)])
    assert chunked.column("image").num_chunks == 2
    assert np.array_equal(decode_images(chunked), decode_images(table))


def test_decode_images_wrong_length():
    table = load_source("digits", limit=2)
    broken = table.set_column(1, "image", pa.array([b"\0" * 64, b"\0" * 3]))
    with pytest.raises(DataError, match="row 1 of the 'image' column has 3 bytes"):
        decode_images(broken)


def test_image_shape_missing_metadata():
    table = pa.table({"id": [0], "image": [b"\0"]})
    with pytest.raises(DataError, match="'height'"):
        image_shape(table)

"""Bad input stops the run before Ray starts, with an error naming the culprit and no run folder."""

import argparse

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from ray_iet.config import ConfigError, add_config_arguments, config_from_args
from ray_iet.data.sources import DataError
from ray_iet.train import train


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


@pytest.mark.parametrize(
    "flag, value, field",
    [
        ("--agc.skip_threshold", "0", "agc.skip_threshold"),
        ("--agc.augment_factor", "1", "agc.augment_factor"),
        ("--msr.moves", "-1", "msr.moves"),
        ("--training.shards", "0", "training.shards"),
        ("--training.batch_size", "0", "training.batch_size"),
    ],
)
def test_out_of_range_value_names_field(flag, value, field):
    with pytest.raises(ConfigError) as error:
        parse(flag, value)
    assert field in str(error.value)
    assert f"got {value}" in str(error.value)


def test_missing_data_file_named():
    with pytest.raises(ConfigError, match="no/such.npz"):
        parse("--data.source", "npz", "--data.path", "no/such.npz")


def test_missing_config_file_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        parse("--config", str(tmp_path / "missing.yaml"))


def test_unknown_config_key_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  shard: 3\n")
    with pytest.raises(ConfigError, match="training.shard"):
        parse("--config", str(path))


def test_overrides_beat_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  shards: 5\n  rounds: 7\n")
    config = parse("--config", str(path), "--training.shards", "2")
    assert config.training.shards == 2
    assert config.training.rounds == 7


def write_png(path, size, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size, size) if mode == "L" else (size, size, 3), np.uint8), mode).save(path)


def folder_config(tmp_path, folder):
    return tiny_config(tmp_path, data={"source": "folder", "path": str(folder), "limit": None})


def test_unreadable_image_named(tmp_path):
    folder = tmp_path / "images"
    write_png(folder / "a.png", 8)
    (folder / "b.png").write_bytes(b"not a png")
    config = folder_config(tmp_path, folder)
    with pytest.raises(DataError, match="b.png"):
        train(config)
    assert not config.run_dir.exists()


def test_mixed_sizes_named(tmp_path):
    folder = tmp_path / "images"
    write_png(folder / "a.png", 8)
    write_png(folder / "b.png", 16)
    config = folder_config(tmp_path, folder)
    with pytest.raises(DataError, match="b.png") as error:
        train(config)
    assert "image_size" in str(error.value)
    assert not config.run_dir.exists()


def test_empty_folder_named(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    config = folder_config(tmp_path, folder)
    with pytest.raises(DataError, match="empty"):
        train(config)
    assert not config.run_dir.exists()


def test_fewer_samples_than_shards(tmp_path):
    config = tiny_config(tmp_path, data={"source": "digits", "limit": 3}, training={"shards": 4})
    with pytest.raises(DataError, match="3"):
        train(config)
    assert not config.run_dir.exists()


def test_non_square_images_rejected(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(folder / "wide.png")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(folder / "wide2.png")
    config = folder_config(tmp_path, folder)
    with pytest.raises(ValueError, match="image_size"):
        train(config)
    assert not config.run_dir.exists()

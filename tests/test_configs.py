from pathlib import Path

import pytest

from ray_iet.config import RunConfig, build_config, read_yaml, set_dotted

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_shipped_config_validates(path, tmp_path):
    values = read_yaml(path)
    if values.get("data", {}).get("path"):
        set_dotted(values, "data.path", str(tmp_path))
    config = build_config(values, str(path))
    assert config.training.shards >= 1


def test_digits_config_is_the_default():
    config = build_config(read_yaml(Path(__file__).parent.parent / "configs" / "digits.yaml"))
    assert config == RunConfig()


def test_fractional_moves_kept_and_integral_float_becomes_count():
    assert build_config({"msr": {"moves": 0.25}}).msr.moves == 0.25
    assert build_config({"msr": {"moves": 4.0}}).msr.moves == 4

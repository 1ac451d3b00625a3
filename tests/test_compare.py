"""`compare` end to end: four variants with real Ray actors on a few digits, one report."""

import json

import pytest

from conftest import tiny_config
from ray_iet.compare import VARIANTS, compare, variant_config


def test_variants_switch_parts(tmp_path):
    base = tiny_config(tmp_path, training={"shards": 3})
    plain = variant_config(base, "plain")
    assert (plain.training.shards, plain.agc.enabled, plain.msr.enabled) == (1, False, False)
    iet_agc = variant_config(base, "iet-agc")
    assert (iet_agc.agc.enabled, iet_agc.agc.augment, iet_agc.msr.enabled) == (True, False, False)
    full = variant_config(base, "iet-agc+")
    assert (full.training.shards, full.agc.augment, full.msr.enabled) == (3, True, True)
    assert {variant_config(base, name).name for name in VARIANTS} == {f"test-{name}" for name in VARIANTS}


def test_unknown_variant_rejected(tmp_path):
    with pytest.raises(ValueError, match="iet-x"):
        variant_config(tiny_config(tmp_path), "iet-x")


def test_compare_writes_report(local_ray, tmp_path):
    base = tiny_config(tmp_path, training={"rounds": 1}, data={"limit": 48, "duplicate_images": 2, "duplicate_copies": 4})
    result = compare(base)
    folder = tmp_path / "runs" / "test-compare"
    report = json.loads((folder / "report.json").read_text())
    assert [model["name"] for model in report["models"]] == list(VARIANTS)
    assert (folder / "report.md").is_file()
    assert (folder / "ratio_histogram.png").is_file()
    for name in VARIANTS:
        assert (folder / f"copies_{name.replace('+', '_')}.png").is_file()
    assert result["report"] == str(folder / "report.md")


def test_compare_visits_are_equal(local_ray, tmp_path):
    base = tiny_config(tmp_path, training={"rounds": 1}, data={"limit": 40})
    compare(base, ["plain", "iet-agc+"])
    visits = {}
    for name in ("plain", "iet-agc+"):
        lines = (tmp_path / "runs" / f"test-{name}" / "metrics.jsonl").read_text().splitlines()
        visits[name] = sum(json.loads(line)["visits"] for line in lines if json.loads(line)["type"] == "shard")
    assert visits["plain"] == visits["iet-agc+"]

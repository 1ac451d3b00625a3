import ray._private.utils

from ray_iet.train import _stale_local_cluster


def test_dead_recorded_head_starts_local(monkeypatch):
    # Port 1 on loopback has no listener here, like a head that was killed.
    monkeypatch.setattr(ray._private.utils, "read_ray_address", lambda: "127.0.0.1:1")
    assert _stale_local_cluster() == "local"


def test_no_recorded_head_keeps_default(monkeypatch):
    monkeypatch.setattr(ray._private.utils, "read_ray_address", lambda: None)
    assert _stale_local_cluster() is None

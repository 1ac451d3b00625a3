"""`ray job submit` of jobs/run_iet.py to a head node that `ray start --head` runs on this machine.

The head gets its own temp dir, ports and authentication token, and its dashboard and job server
listen on 127.0.0.1. Its GCS and raylet ports listen on every interface, so token authentication
stays on. The jobs CLI sends the token only when RAY_AUTH_MODE=token is set, so the head and the
`ray job submit` client share one environment. The fixture stops only the processes this head
started.
"""

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAD_START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 420

# Every process of the test head, and every process those start, inherits this variable, so the
# finalizer can find and stop them all, and nothing else, by its value.
HEAD_MARKER_VARIABLE = "RAY_IET_TEST_HEAD"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_environment(marker: str) -> dict[str, str]:
    """Return the environment of the head and the jobs client: a fresh token, no usage reporting."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("RAY_ADDRESS")}
    # RAY_AUTH_TOKEN takes the place of ~/.ray/auth_token, so the user's token file is neither
    # needed nor written.
    environment["RAY_AUTH_MODE"] = "token"
    environment["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    environment["RAY_USAGE_STATS_ENABLED"] = "0"
    environment[HEAD_MARKER_VARIABLE] = marker
    return environment


def marked_processes(marker: str) -> list[int]:
    """Return the ids of live processes whose environment contains HEAD_MARKER_VARIABLE=marker."""
    entry = f"{HEAD_MARKER_VARIABLE}={marker}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if entry in environ.split(b"\0"):
            pids.append(int(proc.name))
    return pids


def stop_head(head: subprocess.Popen, marker: str) -> None:
    """Stop `ray start --block`, then kill whatever of its processes is left.

    SIGTERM goes to the `ray start` process alone, which drains the node and then stops its
    children. SIGTERM to the whole process group kills the children first, so the drain waits
    for its full timeout (30 s in Ray 2.60) before `ray start` exits.
    """
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=40)
    except subprocess.TimeoutExpired:
        # The group id cannot be reused yet, because its leader has not been reaped.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=10)

    deadline = time.monotonic() + 10
    while (leftover := marked_processes(marker)) and time.monotonic() < deadline:
        for pid in leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def wait_for_job_server(url: str, token: str, head: subprocess.Popen, head_log: Path) -> None:
    request = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with code {head.returncode}:\n{head_log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"the job server at {url} did not start within {HEAD_START_TIMEOUT_S} s. Output of ray start:\n{head_log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def ray_head():
    """Start a head node with the dashboard and job server on 127.0.0.1 and yield (address, temp dir, environment)."""
    if shutil.which("ray") is None:
        pytest.fail("the `ray` command is not on PATH. Install ray[default].")

    # A short path under /tmp, because Ray puts Unix sockets in it and those are limited to
    # about 107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayiet-"))
    environment = ray_environment(str(temp_dir))
    dashboard_port = free_port()
    command = [
        "ray", "start", "--head", "--block",
        f"--port={free_port()}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp_dir}",
        "--num-cpus=2",
        "--num-gpus=0",
        f"--object-store-memory={200 * 1024 * 1024}",
        "--disable-usage-stats",
    ]
    head_log = temp_dir / "ray-start.log"
    with head_log.open("wb") as log:
        head = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dashboard_port}"
        wait_for_job_server(address, environment["RAY_AUTH_TOKEN"], head, head_log)
        yield address, temp_dir, environment
    finally:
        stop_head(head, str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def submitted_job(ray_head, tmp_path_factory):
    """Submit a one-round, two-shard digits run and return (completed `ray job submit` process, run folder)."""
    address, _, environment = ray_head
    tmp_path = tmp_path_factory.mktemp("job")
    config_path = tmp_path / "tiny.yaml"
    # output_dir is absolute because the job runs in its unpacked copy of the working dir.
    config = {
        "name": "job",
        "output_dir": str(tmp_path / "runs"),
        "data": {"source": "digits", "limit": 48},
        "training": {"shards": 2, "rounds": 1, "local_epochs": 1, "batch_size": 16, "warmup_steps": 2},
        "sampling": {"num_images": 4, "inference_steps": 2},
        "evaluation": {"num_samples": 16, "inference_steps": 2, "k": 5},
    }
    config_path.write_text(yaml.safe_dump(config))
    # The job runs the interpreter that runs pytest, so a virtual environment's packages are used.
    entrypoint = [sys.executable, "jobs/run_iet.py", "--config", str(config_path)]
    command = ["ray", "job", "submit", "--address", address, "--working-dir", str(REPO_ROOT), "--", *entrypoint]
    try:
        completed = subprocess.run(
            command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as error:
        output = error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else error.stdout or ""
        pytest.fail(f"`{shlex.join(command)}` timed out after {JOB_TIMEOUT_S} s. Output so far:\n{output[-6000:]}")
    return completed, tmp_path / "runs" / "job"


def job_output(completed: subprocess.CompletedProcess) -> str:
    return f"stdout:\n{completed.stdout[-6000:]}\nstderr:\n{completed.stderr[-3000:]}"


def test_job_submit_exits_zero(submitted_job):
    completed, _ = submitted_job
    assert completed.returncode == 0, job_output(completed)
    # `ray job submit` exits 0 for a job that ends STOPPED as well, so check the final status too.
    assert "succeeded" in completed.stdout, job_output(completed)


def test_job_writes_model_and_latest(submitted_job):
    completed, run_dir = submitted_job
    assert (run_dir / "model" / "model_index.json").is_file(), job_output(completed)
    assert (run_dir / "latest").read_text().strip() == "round_0001"
    assert (run_dir / "rounds" / "round_0001" / "round.json").is_file()


def test_job_prints_final_model(submitted_job):
    completed, run_dir = submitted_job
    assert f"final model: {run_dir / 'model'}" in completed.stdout, job_output(completed)


def uploaded_working_dirs(temp_dir: Path) -> list[Path]:
    """Return the working dirs that the head unpacked for jobs (next to them lie .zip.lock files)."""
    folder = temp_dir / "session_latest" / "runtime_resources" / "working_dir_files"
    return sorted(path for path in folder.glob("_ray_pkg_*") if path.is_dir())


def test_upload_leaves_out_ignored_files(ray_head, submitted_job):
    _, temp_dir, _ = ray_head
    uploads = uploaded_working_dirs(temp_dir)
    assert len(uploads) == 1, f"expected one unpacked working dir under {temp_dir}, found {uploads}"
    uploaded = {path.name for path in uploads[0].iterdir()}

    assert {"jobs", "ray_iet", "pyproject.toml"} <= uploaded
    # Ray 2.60 leaves out .git, .venv, venv and __pycache__ by default.
    assert ".git" not in uploaded
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        return
    for name in sorted(uploaded):
        ignored = subprocess.run(["git", "check-ignore", "--quiet", name], cwd=REPO_ROOT).returncode == 0
        assert not ignored, f"{name} is ignored by .gitignore but was uploaded with the working dir"

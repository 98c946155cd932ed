"""Ray Jobs: `derain run` submitted with `ray job submit` to a `ray start --head` cluster.

The cluster runs with token auth (Ray 2.60's default) and a token file of its own; every Ray
command runs in a subprocess with that environment, so this process never touches Ray's auth
state. The cluster is stopped by PID (infra/local/procs.py), never with `ray stop`, which would
stop every Ray instance of the user on the machine.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import moving_frames_thwc_u8, write_video

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "infra" / "local"))
import procs  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with dashboard (Jobs API); always stopped afterwards."""
    temp = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))  # short: socket paths are limited
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    marker = f"DERAIN_RAY_TAG={temp}"
    port, dashboard, client = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        "DERAIN_RAY_TAG": str(temp),
        "HOME": str(temp),  # nothing lands in the real home folder
    }
    try:
        started = run(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                "--include-dashboard=true",
                f"--ray-client-server-port={client}",
                # The job agent's ports default to fixed numbers that the session's other Ray
                # (tests/conftest.py ray_session) already holds: then no job can be submitted.
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--temp-dir={temp}",
                "--num-cpus=2",
                "--disable-usage-stats",
            ],
            env,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        assert procs.find(marker), "ray start returned but no process carries the marker"
        yield {"env": env, "jobs": f"http://127.0.0.1:{dashboard}", "gcs": f"127.0.0.1:{port}"}
    finally:
        survivors = procs.kill(marker, timeout=15)
        left = procs.find(marker)
        shutil.rmtree(temp, ignore_errors=True)
        assert not survivors and not left, f"Ray processes left running: {survivors or left}"


def job_status(head: dict, job_id: str) -> str:
    out = run([str(BIN / "ray"), "job", "status", "--address", head["jobs"], job_id], head["env"])
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # no colours
    running = re.search(r"Status for job '[^']+': (\w+)", text)
    if running:
        return running.group(1)
    ended = re.search(r"Job '[^']+' (succeeded|failed|was stopped)", text)
    assert ended, f"no status in: {text}"
    return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[ended[1]]


def submit_and_wait(head: dict, command: list[str], timeout_s: float = 240) -> tuple[str, str]:
    """``ray job submit --no-wait -- COMMAND``, poll until it ends; returns (job id, logs)."""
    job_id = f"derain-test-{secrets.token_hex(4)}"
    submit = [str(BIN / "ray"), "job", "submit", "--address", head["jobs"]]
    submit += ["--submission-id", job_id, "--no-wait", "--", *command]
    # Right after `ray start` the dashboard may not have its job agent yet (HTTP 500, "No
    # available agent to submit job"): retry that for a while, as a user would.
    deadline = time.monotonic() + 90
    while True:
        submitted = run(submit, head["env"])
        agent_missing = "No available agent" in submitted.stdout + submitted.stderr
        if submitted.returncode == 0 or not agent_missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    deadline, status = time.monotonic() + timeout_s, "PENDING"
    while time.monotonic() < deadline:
        status = job_status(head, job_id)
        if status in {"SUCCEEDED", "FAILED", "STOPPED"}:
            break
        time.sleep(1)
    logs = run([str(BIN / "ray"), "job", "logs", "--address", head["jobs"], job_id], head["env"])
    assert status == "SUCCEEDED", f"job {job_id} ended {status}:\n{logs.stdout}{logs.stderr}"
    return job_id, logs.stdout


def test_derain_run_as_ray_job(ray_head, tmp_path, tiny_checkpoint):
    src, dst = tmp_path / "archive", tmp_path / "derained"
    write_video(src / "cam1" / "a.mkv", moving_frames_thwc_u8(6, 32, 48, seed=1))
    write_video(src / "cam2" / "b.mkv", moving_frames_thwc_u8(5, 32, 48, seed=2))
    job_id, logs = submit_and_wait(
        ray_head,
        [
            str(BIN / "derain"),
            "run",
            str(src),
            str(dst),
            "--runner",
            "ray",
            "--address",
            "auto",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--checkpoint",
            str(tiny_checkpoint),
            "--no-progress",
        ],
    )
    assert "2 ok, 0 failed" in logs, logs
    assert (dst / "cam1" / "a.mp4").stat().st_size > 0
    assert (dst / "cam2" / "b.mp4").stat().st_size > 0
    manifests = list((dst / "_manifests").rglob("*.parquet"))
    assert manifests, f"no Parquet manifests under {dst / '_manifests'}"

    # The CLI without a token is refused: auth is really on.
    no_token = {k: v for k, v in ray_head["env"].items() if not k.startswith("RAY_AUTH")}
    no_token["RAY_AUTH_MODE"] = "token"
    no_token["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "wrong-token")
    (tmp_path / "wrong-token").write_text(secrets.token_hex(32))
    denied = run(
        [str(BIN / "ray"), "job", "status", "--address", ray_head["jobs"], job_id], no_token
    )
    assert "SUCCEEDED" not in denied.stdout


def test_distributed_training_as_ray_job_publishes_a_model(ray_head, tmp_path):
    import json

    registry = tmp_path / "models"
    _, logs = submit_and_wait(
        ray_head,
        [
            str(BIN / "derain"),
            "train-ray",
            "--storage-path",
            str(tmp_path / "checkpoints"),
            "--name",
            "job-run",
            "--preset",
            "tiny",
            "--set",
            "stage1_steps=2",
            "--set",
            "stage2_steps=2",
            "--checkpoint-every",
            "2",
            "--workers",
            "2",
            "--address",
            "auto",
            "--model-version",
            "2026.12.01-job",
            "--publish",
            str(registry),
        ],
    )
    assert "at step 4" in logs, logs
    latest = json.loads((registry / "j4r" / "latest.json").read_text())
    assert latest["version"] == "2026.12.01-job"
    assert (registry / "j4r" / "2026.12.01-job" / "model.safetensors").is_file()

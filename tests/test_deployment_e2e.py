"""End to end as an operator runs it: a real Prefect server, `prefect deploy` of prefect.yaml, a
process worker, `prefect deployment run derain-archive/nightly --watch`, manifests in S3.

Every process is started here and stopped here, by PID (the worker needs a second signal).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from fractions import Fraction
from pathlib import Path

import pytest

from tests.helpers import moving_frames_thwc_u8, write_video

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"prefect server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(
        f"prefect server not healthy after {timeout_s} s: {log.read_text()[-2000:]}"
    )


def stop(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM, then (a process worker ignores the first for a while) SIGTERM again, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace_s if sig != signal.SIGKILL else 10)
        except subprocess.TimeoutExpired:
            continue


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("wb")
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def prefect(args: list[str], env: dict[str, str], timeout_s: float = 300) -> str:
    done = subprocess.run(
        [PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.ray
def test_nightly_deployment_runs_on_a_real_prefect_server(s3, s3_endpoint, tmp_path):
    from pipeline.io.storage import open_location
    from pipeline.job.manifest import ManifestStore

    fs, bucket, options = s3
    for i in range(2):
        local = write_video(
            tmp_path / f"clip{i}.mkv", moving_frames_thwc_u8(6, 24, 32, seed=i), fps=Fraction(25)
        )
        fs.put_file(str(local), f"{bucket}/in/{local.name}")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PWD": str(REPO),  # prefect.yaml's pull step: run flows from this checkout
        "AWS_ENDPOINT_URL": s3_endpoint,
        # Ray's socket paths must stay under 107 bytes: a short temp dir, not tmp_path.
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-"),
    }
    env.pop("PREFECT_API_KEY", None)
    for name in ("DERAIN_SOURCE", "DERAIN_DESTINATION", "DERAIN_MODELS"):
        env.pop(name, None)  # no fallback: the Variables must carry the run
    processes: list[subprocess.Popen] = []
    try:
        server_log = tmp_path / "server.log"
        server = start(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env,
            server_log,
        )
        processes.append(server)
        wait_healthy(f"{api}/health", server, server_log)
        prefect(["work-pool", "create", "derain-local", "--type", "process"], env)
        # Locations live on the server as Prefect Variables, not in the deployment or the
        # worker's environment: the run must find them there.
        for name, value in {
            "derain_source": f"s3://{bucket}/in",
            "derain_destination": f"s3://{bucket}/out",
            "derain_models": f"s3://{bucket}/models",  # empty registry: the shipped checkpoint
        }.items():
            prefect(["variable", "set", name, value], env)
        prefect(["--no-prompt", "deploy", "--name", "nightly"], env)
        deployment = json.loads(
            prefect(["deployment", "inspect", "derain-archive/nightly", "-o", "json"], env)
        )
        # Overlapping nightly runs queue behind each other instead of doing the same videos.
        assert deployment["global_concurrency_limit"]["limit"] == 1
        assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        assert "source" not in deployment["parameters"]  # read at run time, not baked in
        (schedule,) = deployment["schedules"]
        assert schedule["schedule"]["cron"] == "0 2 * * *"
        worker_log = tmp_path / "worker.log"
        processes.append(
            start([PREFECT, "worker", "start", "--pool", "derain-local"], env, worker_log)
        )
        out = prefect(
            ["deployment", "run", "derain-archive/nightly", "--watch", "--watch-timeout", "600"],
            env,
            timeout_s=660,
        )
        assert "Completed" in out, out + worker_log.read_text()[-3000:]
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert all(p.poll() is not None for p in processes)
    store = ManifestStore(open_location(f"s3://{bucket}/out/_manifests", options))
    (commit,) = store.commits()
    assert (commit["ok"], commit["failed"], commit["frames"]) == (2, 0, 12)
    assert fs.exists(f"{bucket}/out/clip0.mp4") and fs.exists(f"{bucket}/out/clip1.mp4")
    assert fs.glob(f"{bucket}/out/_manifests/reports/run={commit['run_id']}/report.md")


# -- the README's commands, as written, from a checkout at a long path ----------------------------

README = REPO / "README.md"
STACK_PORTS = (9000, 4200, 6379, 8265, 10001)  # the stack's defaults, which the README uses


def readme_stack_commands() -> str:
    """The README's step-by-step block for the local stack, verbatim."""
    text = README.read_text()
    blocks = [b.split("\n", 1)[1] for b in text.split("```bash")[1:]]
    (block,) = [b.split("```", 1)[0] for b in blocks if "stack.sh start" in b]
    return block


def copy_checkout(destination: Path) -> None:
    """The working tree as a checkout has it: tracked and not-ignored files (not .venv)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for relative in filter(None, listed):
        source = REPO / relative
        if relative == ".venv" or not source.is_file():
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.ray
def test_readme_stack_commands_work_from_a_checkout_at_a_long_path(tmp_path):
    if any(port_taken(p) for p in STACK_PORTS):
        pytest.skip(f"one of the stack's default ports {STACK_PORTS} is taken here")
    commands = readme_stack_commands()
    assert "prefect deploy --all" not in commands  # nightly-k8s needs a pool the stack lacks
    # Over 60 characters: Ray's sockets under <checkout>/.local-stack would pass 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="derain-readme-check-at-a-long-checkout-path-", dir="/tmp"))
    checkout = root / "derain-archive"
    assert len(str(checkout)) > 60
    copy_checkout(checkout)
    # `bash infra/local/setup.sh` would make .venv; this environment stands in for it.
    (checkout / ".venv").symlink_to(Path(sys.executable).parent.parent)
    for i in range(2):  # what `bash infra/local/demo.sh` leaves in demo-out/rainy
        write_video(
            checkout / "demo-out" / "rainy" / f"clip{i}.mkv",
            moving_frames_thwc_u8(6, 24, 32, seed=i),
            fps=Fraction(25),
        )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_"))},
        "HOME": str(tmp_path),  # nothing in the real home folder (~/.ray, ~/.prefect)
        "PYTHONPATH": str(checkout),  # the copy's code, not the installed package's
        "DERAIN_RAY_CPUS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    script = "set -e\n" + commands
    marker = None
    try:
        done = subprocess.run(
            ["bash", "-c", script], cwd=checkout, env=env, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
        env_file = (checkout / ".local-stack" / "env").read_text()
        (ray_temp,) = re.findall(r"^# Ray's temp dir \(sockets, session logs\): (\S+)$",
                                 env_file, re.M)  # fmt: skip
        marker = f"DERAIN_RAY_TAG={ray_temp}"
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
            for p in sorted((checkout / ".local-stack" / "logs").glob("*.log"))
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs}"
    finally:
        subprocess.run(
            ["bash", "infra/local/stack.sh", "stop"], cwd=checkout, env=env, timeout=120,
            capture_output=True,
        )  # fmt: skip
    out = done.stdout
    for service in ("s3", "prefect-server", "prefect-worker", "ray"):
        assert f"{service}: up" in out, out  # `stack.sh status`, each service asked
    assert "Completed" in out, out
    assert "2 videos ok, 0 failed" in out, out  # `derain manifest "$DERAIN_DESTINATION"`
    assert not ray_temp.startswith(str(checkout)) and len(ray_temp) < 40, ray_temp
    sys.path.insert(0, str(REPO / "infra" / "local"))
    import procs

    assert procs.find(marker) == [], "Ray processes left after `stack.sh stop`"
    assert not Path(ray_temp).exists()
    shutil.rmtree(root, ignore_errors=True)

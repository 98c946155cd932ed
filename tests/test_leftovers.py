"""A killed run leaves nothing running and nothing for ever on disk (failure-modes #11)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.io.scratch import scratch_dir, sweep_stale_scratch
from pipeline.runtime.reaper import session_processes

ROOT = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_scratch_of_a_dead_process_is_swept_and_live_ones_kept(tmp_path):
    stale = tmp_path / f"derain-{dead_pid()}-video-abc"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "out.mp4.part").write_bytes(b"half")
    with scratch_dir("video", tmp_path) as mine:
        assert Path(mine).name.startswith(f"derain-{os.getpid()}-video-")
        young = tmp_path / f"derain-{dead_pid()}-join-young"
        young.mkdir()
        other = tmp_path / "derain-notapid"
        other.mkdir()
        old = time.time() - 3600
        for folder in (stale, Path(mine), other):
            os.utime(folder, (old, old))
        assert sweep_stale_scratch(tmp_path) == 1
        assert not stale.exists()
        assert Path(mine).exists()  # its process (this one) is alive
        assert young.exists()  # may belong to a process still starting up
        assert other.exists()  # not a name scratch_dir makes


DRIVER = """
import sys, time
from pipeline.runtime.ray_connect import _session_dir, connect
import ray
connect(None, num_cpus=1)
ray.get(ray.remote(lambda: 1).remote())
print(_session_dir(), flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_local_ray_does_not_outlive_a_sigkilled_driver(tmp_path):
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        session = driver.stdout.readline().strip()
        assert session.startswith("/"), "the driver did not start Ray"
        assert len(session_processes(session, exclude={os.getpid()})) >= 3  # gcs, raylet, agents
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = session_processes(session, exclude={os.getpid()})
        if not left and not Path(session).exists():
            break
        time.sleep(0.5)
    assert not left, f"still running after the driver died: {left}"
    assert not Path(session).exists()

"""Ray's memory monitor killing a worker (issue 11, item 10): the video is retried with
backoff, then fails alone as "out of memory" and the run goes on. Ray's calls are faked (no
cluster, no real memory pressure); the errors are Ray's own types."""

from __future__ import annotations

import pytest

ray_runner = pytest.importorskip("pipeline.runtime.ray_runner")

from pipeline.io.storage import SourceObject  # noqa: E402
from pipeline.job.manifest import VideoRow  # noqa: E402
from pipeline.job.plan import VideoTask  # noqa: E402
from pipeline.job.worker import RunContext, TaskResult  # noqa: E402


class FakeRef:
    def __init__(self, task):
        self.task = task


class FakeActor:
    class process:
        @staticmethod
        def remote(task, context):
            return FakeRef(task)


def fake_runner(monkeypatch, deaths: dict[str, int], oom: bool = True):
    from ray.exceptions import OutOfMemoryError, WorkerCrashedError

    seen: dict[str, int] = {}
    sleeps: list[float] = []

    def get(ref, timeout=None):
        key = ref.task.source.key
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= deaths.get(key, 0):
            raise (
                OutOfMemoryError("Task was killed due to the node running low on memory.")
                if oom
                else WorkerCrashedError()
            )
        row = VideoRow("run", ref.task.video_id, ref.task.source.url, key, "e", "ok")
        return TaskResult(ref.task, row)

    clock = [0.0]
    monkeypatch.setattr(ray_runner.ray, "get", get)
    monkeypatch.setattr(
        ray_runner.ray, "wait", lambda refs, num_returns=1, timeout=None: (refs[:1], refs[1:])
    )
    monkeypatch.setattr(ray_runner.time, "monotonic", lambda: clock[0])

    def sleep(seconds):
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(ray_runner.time, "sleep", sleep)
    runner = object.__new__(ray_runner.RayRunner)
    runner.max_attempts, runner.clips_per_worker = 3, 1
    runner.actors = [FakeActor()]
    runner.info = {"name": "j4r-tiny", "version": "test", "sha256": "x", "device": "cpu"}
    runner._wait_until_alive = lambda actor: None
    return runner, seen, sleeps


def tasks(*keys):
    return [VideoTask(k, SourceObject(k, f"/in/{k}", 1, "e"), k) for k in keys]


def test_oom_killed_video_is_retried_with_backoff_then_fails_alone(monkeypatch):
    runner, seen, sleeps = fake_runner(monkeypatch, {"big.mkv": 99, "flaky.mkv": 1})
    results = list(
        runner.run(tasks("big.mkv", "flaky.mkv", "small.mkv"), RunContext("run", "/out", {}, {}))
    )
    status = {r.task.source.key: r.row.status for r in results}
    assert status == {"big.mkv": "failed", "flaky.mkv": "ok", "small.mkv": "ok"}
    big = next(r for r in results if r.task.source.key == "big.mkv")
    assert big.row.error_type == "OutOfMemory" and "out of memory" in big.row.error_message
    assert not big.unexpected  # fails alone; the circuit breaker does not count it
    assert seen["big.mkv"] == 3 and seen["flaky.mkv"] == 2
    assert sleeps and max(sleeps) >= ray_runner.OOM_BACKOFF_S  # it waited before retrying


def test_other_worker_deaths_still_give_up_the_run(monkeypatch):
    from pipeline.errors import RunnerError

    runner, _, _ = fake_runner(monkeypatch, {"crash.mkv": 99}, oom=False)
    with pytest.raises(RunnerError, match="worker died 3 times"):
        list(runner.run(tasks("crash.mkv"), RunContext("run", "/out", {}, {})))

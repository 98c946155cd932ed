"""Ray workers that cannot start (issue 11): a stage that does not load in the actor, a device
the worker's machine lacks, workers no node can hold. Each stops the run with one line of the
right kind before any video is touched; the actors are not left behind. A real local Ray."""

from __future__ import annotations

import pytest

from pipeline.errors import CheckpointError, UsageError, WorkersUnplaceable
from pipeline.stage.config import StageConfig

pytestmark = pytest.mark.ray


def live_actors(ray) -> int:
    return sum(1 for a in ray.state.actors().values() if a["State"] == "ALIVE")


def test_a_checkpoint_that_does_not_load_in_the_worker_is_one_checkpoint_error(
    tmp_path, ray_session
):
    from pipeline.runtime.ray_runner import RayRunner

    before = live_actors(ray_session)
    with pytest.raises(CheckpointError, match="the Ray workers could not start") as caught:
        RayRunner(StageConfig(str(tmp_path / "missing"), device="cpu"), workers=1)
    assert "\n" not in str(caught.value) and "missing" in str(caught.value)
    assert live_actors(ray_session) == before


def test_a_device_the_workers_machine_lacks_is_a_usage_error_from_the_worker(
    tiny_checkpoint, ray_session
):
    """The driver cannot check a cluster's machines; the worker checks its own and the
    driver re-raises the worker's UsageError (exit 2), not a RunnerError (exit 1)."""
    from pipeline.runtime.ray_runner import RayRunner

    with pytest.raises(UsageError, match="device 'mps': not available"):
        RayRunner(StageConfig(str(tiny_checkpoint), device="mps"), workers=1)


def test_workers_no_node_can_hold_fail_after_the_start_timeout_saying_what_they_need(
    tiny_checkpoint, ray_session
):
    from pipeline.runtime.ray_runner import RayRunner

    before = live_actors(ray_session)
    config = StageConfig(str(tiny_checkpoint), device="cuda")  # 1 GPU each; this Ray has none
    with pytest.raises(WorkersUnplaceable) as caught:
        RayRunner(config, workers=1, start_timeout_s=2)
    message = str(caught.value)
    assert "1 GPU" in message and "--device cpu" in message and "2 s" in message
    assert live_actors(ray_session) == before

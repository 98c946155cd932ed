"""One error hierarchy: what fails a video alone, what stops a run, what is a usage error."""

from __future__ import annotations

import pytest

from pipeline.cli.main import main
from pipeline.errors import (
    CheckpointError,
    DerainError,
    ModelRegistryError,
    StorageError,
    UsageError,
    VideoError,
    checkpoint_errors,
)
from pipeline.io.storage import SourceObject
from pipeline.job.plan import VideoTask
from pipeline.job.worker import RunContext, process_task
from pipeline.stage.config import StageConfig
from pipeline.stage.derain import DerainStage
from tests.helpers import moving_frames_thwc_u8, write_video


def committed_runs(destination):
    """The rows of the manifests' ``runs`` table under ``destination``."""
    from pipeline.io.storage import open_location
    from pipeline.job.manifest import ManifestStore

    return ManifestStore(open_location(str(destination / "_manifests"))).commits()


def test_the_project_errors_share_one_base_and_j4r_checkpoint_errors_stay_catchable():
    import j4r.checkpoint

    for error in (UsageError, VideoError, StorageError, CheckpointError, ModelRegistryError):
        assert issubclass(error, DerainError)
    assert issubclass(CheckpointError, j4r.checkpoint.CheckpointError)
    with pytest.raises(CheckpointError, match="derain train") as caught, checkpoint_errors():
        j4r.checkpoint.read_info("/nonexistent")
    assert isinstance(caught.value.__cause__, j4r.checkpoint.CheckpointError)


@pytest.mark.parametrize(
    ("error", "unexpected"),
    [
        (VideoError("corrupt"), False),
        (StorageError("gone"), False),
        (OSError("disk full"), False),
        (RuntimeError("CUDA out of memory"), True),
        (ValueError("a bug"), True),
    ],
)
def test_only_project_and_io_errors_are_expected_video_failures(
    tmp_path, tiny_checkpoint, monkeypatch, error, unexpected
):
    src = write_video(tmp_path / "v.mkv", moving_frames_thwc_u8(2, 16, 16))
    stage = DerainStage(StageConfig(tiny_checkpoint, device="cpu"))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(stage, "process", fail)
    task = VideoTask("id", SourceObject("v.mkv", str(src), 1, "e"), "v.mp4")
    context = RunContext("run", str(tmp_path / "out"), {}, {})
    result = process_task(stage, task, context)
    assert result.row.status == "failed" and result.frames is None
    assert result.row.error_type == type(error).__name__
    assert result.unexpected is unexpected


def test_unexpected_failures_in_a_row_stop_the_run_after_committing(
    tmp_path, tiny_checkpoint, monkeypatch, capsys
):
    for name in "abcde":
        write_video(tmp_path / "in" / f"{name}.mkv", moving_frames_thwc_u8(2, 16, 16))
    real_process = DerainStage.process

    def process(self, source, output, **kwargs):
        if str(source).endswith("a.mkv"):
            return real_process(self, source, output, **kwargs)
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(DerainStage, "process", process)
    args = ["run", str(tmp_path / "in"), str(tmp_path / "out"), "--checkpoint"]
    code = main([*args, str(tiny_checkpoint), "--runner", "sequential", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "stopped after 3 videos in a row failed with an unexpected RuntimeError" in err
    (commit,) = committed_runs(tmp_path / "out")
    assert (commit["ok"], commit["failed"]) == (1, 3)  # e.mkv was never started
    assert "RuntimeError" in commit["stopped"]
    assert (tmp_path / "out" / "a.mp4").exists()


def test_expected_failures_do_not_stop_the_run(tmp_path, tiny_checkpoint, monkeypatch):
    for name in "abcd":
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{name}.mp4").write_bytes(b"not a video")
    args = ["run", str(tmp_path / "in"), str(tmp_path / "out"), "--checkpoint"]
    code = main([*args, str(tiny_checkpoint), "--runner", "sequential", "--no-progress"])
    assert code == 1  # four failed videos, all of them tried
    (commit,) = committed_runs(tmp_path / "out")
    assert commit["failed"] == 4 and commit["stopped"] is None


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "SRC", "DST", "--storage-option", "no-equals-sign"],
        ["run", "SRC", "DST", "--chunk-frames", "0"],
        ["manifest", "DST", "--storage-option", "no-equals-sign"],
    ],
)
def test_bad_arguments_are_one_usage_error(tmp_path, capsys, argv):
    write_video(tmp_path / "in.mkv", moving_frames_thwc_u8(2, 16, 16))
    argv = [str(tmp_path / "in.mkv") if a == "SRC" else a for a in argv]
    argv = [str(tmp_path / "out") if a == "DST" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"derain {argv[0]}: ") and "Traceback" not in err


def test_infrastructure_errors_are_project_errors_that_usage_checks_let_through():
    from pipeline.errors import (
        CredentialsError,
        EndpointUnreachable,
        InfrastructureError,
        RayUnavailable,
        RunnerError,
        usage_errors,
    )

    for error in (EndpointUnreachable, CredentialsError, RayUnavailable):
        assert issubclass(error, InfrastructureError) and issubclass(error, DerainError)
    assert issubclass(EndpointUnreachable, StorageError) and issubclass(RayUnavailable, RunnerError)
    with pytest.raises(EndpointUnreachable), usage_errors(OSError):
        raise EndpointUnreachable("cannot reach x")  # exit 3, not turned into a usage error (2)
    with pytest.raises(UsageError), usage_errors(OSError):
        raise StorageError("bad key")


def test_botocore_errors_are_classified_through_their_cause_chain():
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    from pipeline.errors import CredentialsError, EndpointUnreachable
    from pipeline.io.storage import infrastructure_error

    try:
        try:
            raise NoCredentialsError()
        except NoCredentialsError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert isinstance(infrastructure_error(wrapped), CredentialsError)
    dead = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    assert isinstance(infrastructure_error(dead), EndpointUnreachable)
    assert infrastructure_error(FileNotFoundError("no such key")) is None
    assert infrastructure_error(ValueError("a bug")) is None

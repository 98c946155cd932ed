"""The derain-archive flow under a Prefect test API, on the moto S3 server and a local Ray."""

from __future__ import annotations

from fractions import Fraction

import pytest

from tests.helpers import moving_frames_thwc_u8, write_video


def artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


def run_logs(state) -> str:
    """Every log line of the flow run (its tasks' too) as the Prefect server stored it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # logs are shipped in the background
    flow_run = LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=flow_run))
    return "\n".join(log.message for log in logs)


@pytest.mark.ray
@pytest.mark.slow
def test_archive_flow_publishes_manifests_report_and_artifacts_then_skips_done_work(
    s3, tmp_path, tiny_checkpoint, ray_session, prefect_harness
):
    from flows.archive import derain_archive
    from pipeline.io.storage import open_location
    from pipeline.job.manifest import ManifestStore, report_key
    from pipeline.registry.models import publish_model

    fs, bucket, options = s3
    for i, (frames, codec) in enumerate([(12, "ffv1"), (9, "libx264")]):
        local = write_video(
            tmp_path / f"v{i}.{'mkv' if codec == 'ffv1' else 'mp4'}",
            moving_frames_thwc_u8(frames, 32, 48, seed=i),
            codec=codec,
            fps=Fraction(25),
        )
        fs.put_file(str(local), f"{bucket}/in/cam{i}/{local.name}")
    registry = f"s3://{bucket}/models"
    version = publish_model(tiny_checkpoint, registry, options, version="2026.12.01")
    params = {
        "source": f"s3://{bucket}/in",
        "destination": f"s3://{bucket}/out",
        "storage_options": options,
        "model_registry": registry,
        "workers": 2,
        "segment_frames": 8,  # the 12-frame video runs as two segments
        "warmup_frames": 4,
    }
    first_state = derain_archive(**params, return_state=True)
    first = first_state.result()
    assert (first["ok"], first["failed"], first["skipped"], first["frames"]) == (2, 0, 0, 21)
    assert first["model"] == f"j4r-tiny {version}"
    assert fs.exists(f"{bucket}/out/cam0/v0.mp4") and fs.exists(f"{bucket}/out/cam1/v1.mp4")
    store = ManifestStore(open_location(f"s3://{bucket}/out/_manifests", options))
    videos = store.read("videos").to_pylist()
    assert {r["model_version"] for r in videos} == {version}
    assert store.read("frames").num_rows == 21
    report = fs.cat_file(f"{bucket}/out/_manifests/{report_key(first['run_id'])}").decode()
    assert "cam0/v0.mkv" in report and "![mean alpha over time](alpha-" in report
    assert len(fs.glob(f"{bucket}/out/_manifests/reports/run={first['run_id']}/*.png")) == 4
    (table,) = artifacts("derain-videos")
    assert "cam1/v1.mp4" in str(table.data)
    (markdown,) = artifacts("derain-report")
    folder = f"s3://{bucket}/out/_manifests/reports/run={first['run_id']}"
    assert "data:image/png" not in markdown.data  # linked files, not inlined PNGs
    assert f"]({folder}/alpha-" in markdown.data and f"]({folder}/thumb-" in markdown.data
    (progress,) = artifacts("derain-progress")
    assert float(progress.data) == 100.0
    logs = run_logs(first_state)  # one line per finished video in the flow run's logs
    assert f"s3://{bucket}/in/cam0/v0.mkv done: 12 frames" in logs, logs
    assert f"s3://{bucket}/in/cam1/v1.mp4 done: 9 frames" in logs, logs

    fs.pipe(f"{bucket}/in/broken.mp4", b"not a video")
    state = derain_archive(**params, return_state=True)
    assert state.is_failed()  # a failed video fails the flow run ...
    store_commits = store.commits()
    assert len(store_commits) == 2  # ... after its manifests were committed
    assert (store_commits[-1]["ok"], store_commits[-1]["skipped"]) == (0, 2)
    assert store_commits[-1]["failed"] == 1
    assert f"s3://{bucket}/in/broken.mp4 failed: " in run_logs(state)


def test_settings_come_from_the_run_then_prefect_variables_then_the_environment(
    prefect_harness, monkeypatch
):
    from prefect import flow
    from prefect.variables import Variable

    from flows.settings import configured
    from pipeline.errors import UsageError

    @flow
    def resolve(value: str | None = None) -> str | None:
        return configured("destination", value)

    monkeypatch.setenv("DERAIN_DESTINATION", "s3://env/out")
    assert resolve() == "s3://env/out"
    assert resolve("{{ $DERAIN_DESTINATION }}") == "s3://env/out"  # never filled at deploy
    Variable.set("derain_destination", "s3://variable/out", overwrite=True)
    try:
        assert resolve() == "s3://variable/out"  # the Variable before the environment
        assert resolve("s3://given/out") == "s3://given/out"  # a parameter before both
    finally:
        Variable.unset("derain_destination")
    monkeypatch.delenv("DERAIN_DESTINATION")
    with pytest.raises(UsageError, match="prefect variable set derain_destination"):
        resolve()

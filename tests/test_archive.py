"""The archive job on a real S3 endpoint: manifests, skip-done, resume, Ray vs sequential."""

from __future__ import annotations

import os
import signal
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from pipeline.io.storage import open_location
from pipeline.io.video import EncodeOptions, read_chunks
from pipeline.job.archive import ArchiveJob, run_archive
from pipeline.job.manifest import ManifestStore
from pipeline.runtime.runners import SequentialRunner
from pipeline.stage.config import StageConfig
from tests.helpers import moving_frames_thwc_u8, write_video

LOSSLESS = EncodeOptions(lossless=True)


def upload_archive(fs, bucket, tmp_path, specs):
    """specs: key -> (frames, height, width, codec) or raw bytes."""
    for key, spec in specs.items():
        if isinstance(spec, bytes):
            fs.pipe(f"{bucket}/in/{key}", spec)
            continue
        frames, h, w, codec = spec
        local = tmp_path / "src" / key
        write_video(
            local, moving_frames_thwc_u8(frames, h, w, seed=len(key)), codec=codec, fps=Fraction(25)
        )
        fs.put_file(str(local), f"{bucket}/in/{key}")


def job_for(bucket, options, **kw):
    return ArchiveJob(
        source=f"s3://{bucket}/in",
        destination=f"s3://{bucket}/out",
        storage_options=options,
        encode=LOSSLESS,
        **kw,
    )


def sequential(checkpoint):
    return SequentialRunner(StageConfig(checkpoint, device="cpu", encode=LOSSLESS))


def store_of(bucket, options):
    return ManifestStore(open_location(f"s3://{bucket}/out/_manifests", options))


SPECS = {
    "cam 1/ü.mkv": (6, 16, 24, "ffv1"),
    "cam2/b.mp4": (5, 24, 32, "libx264"),
    "c.mkv": (4, 16, 16, "ffv1"),
    "broken.mp4": b"\x00\x00\x00\x18ftypmp42" + b"junk" * 40,
    "zero.mov": b"",
}


def test_archive_on_s3_writes_outputs_and_committed_manifests(s3, tmp_path, tiny_checkpoint):
    fs, bucket, options = s3
    upload_archive(fs, bucket, tmp_path, SPECS)
    summary = run_archive(
        job_for(bucket, options),
        sequential(tiny_checkpoint),
        model_name="j4r-tiny",
        model_version="test",
    )
    assert (summary.ok, summary.failed, summary.skipped) == (3, 2, 0)
    assert fs.exists(f"{bucket}/out/cam 1/ü.mkv") and fs.exists(f"{bucket}/out/cam2/b.mkv")
    store = store_of(bucket, options)
    videos = store.read("videos").to_pylist()
    frames = store.read("frames").to_pylist()
    by_status = {}
    for row in videos:
        by_status.setdefault(row["status"], []).append(row)
    assert len(by_status["ok"]) == 3 and len(by_status["failed"]) == 2
    assert all(r["error_type"] == "VideoError" and r["error_message"] for r in by_status["failed"])
    assert all(r["model_version"] == "test" and r["run_id"] == summary.run_id for r in videos)
    assert len(frames) == 6 + 5 + 4 == summary.frames
    pairs = {(f["video_id"], f["frame_index"]) for f in frames}
    assert len(pairs) == len(frames)  # every frame exactly once
    assert all(0 <= f["alpha_mean"] <= 1 and f["alpha_p95"] >= 0 for f in frames)
    # The tables are Delta tables on S3: any Delta reader sees the same committed rows.
    import polars as pl

    from pipeline.io.delta import delta_storage_options

    delta_options = delta_storage_options(store.location)
    polars_frames = pl.read_delta(
        f"s3://{bucket}/out/_manifests/frames", storage_options=delta_options
    )
    assert polars_frames.height == len(frames)
    assert not fs.exists(f"{bucket}/out/_manifests/_pending")  # staged rows are cleaned up

    again = run_archive(
        job_for(bucket, options),
        sequential(tiny_checkpoint),
        model_name="j4r-tiny",
        model_version="test",
    )
    assert (again.ok, again.failed, again.skipped) == (0, 2, 3)  # failures are retried
    skipped = [r for r in store.read("videos", run_id=again.run_id).to_pylist()
               if r["status"] == "skipped"]  # fmt: skip
    assert len(skipped) == 3
    for row in skipped:  # the run's model; no measurements (those are on the earlier ok row)
        assert (row["model_name"], row["model_version"], row["frames"]) == ("j4r-tiny", "test", 0)
        assert row["fps"] is None and row["alpha_mean"] is None and row["output_url"] is None
    assert [c["run_id"] for c in store.commits()] == [summary.run_id, again.run_id]
    forced = run_archive(
        job_for(bucket, options, force=True),
        sequential(tiny_checkpoint),
        model_name="j4r-tiny",
        model_version="test",
    )
    assert (forced.ok, forced.skipped) == (3, 0)
    new_model = run_archive(
        job_for(bucket, options),
        sequential(tiny_checkpoint),
        model_name="j4r-tiny",
        model_version="test-2",
    )
    assert new_model.ok == 3  # a new model version redoes everything


class Interrupted(Exception):
    pass


class StopAfter:
    """Wraps a runner and dies after ``n`` finished videos, like a killed driver."""

    def __init__(self, runner, n):
        self.runner, self.n, self.description = runner, n, runner.description

    def run(self, tasks, context, on_frames=None):
        for i, result in enumerate(self.runner.run(tasks, context, on_frames)):
            yield result
            if i + 1 == self.n:
                raise Interrupted

    def close(self):
        pass


def test_interrupted_run_resumes_and_commits_every_frame_once(s3, tmp_path, tiny_checkpoint):
    fs, bucket, options = s3
    upload_archive(fs, bucket, tmp_path, {k: v for k, v in SPECS.items() if k != "zero.mov"})
    runner = sequential(tiny_checkpoint)
    with pytest.raises(Interrupted):
        run_archive(
            job_for(bucket, options), StopAfter(runner, 2), model_name="m", model_version="v"
        )
    store = store_of(bucket, options)
    assert store.read("videos").num_rows == 0  # nothing committed: readers see nothing
    assert len(store.uncommitted_runs()) == 1
    summary = run_archive(job_for(bucket, options), runner, model_name="m", model_version="v")
    assert summary.run_id == store.commits()[0]["run_id"]
    assert summary.resumed_from_previous == 1  # broken.mp4 failed: it is tried again
    assert (summary.ok, summary.failed) == (3, 1)
    frames = store.read("frames").to_pylist()
    assert len(frames) == 15
    assert len({(f["video_id"], f["frame_index"]) for f in frames}) == 15
    assert store.uncommitted_runs() == []


@pytest.mark.parametrize("dies", ["before videos", "after videos"])
def test_killed_mid_commit(s3, tmp_path, tiny_checkpoint, monkeypatch, dies):
    """The commit is three Delta commits (frames, videos, runs). A driver dying between two of
    them (or after one landed, before it knew) leaves an intent; the next run completes it
    and every row is there exactly once."""
    import pipeline.io.delta as delta

    fs, bucket, options = s3
    upload_archive(fs, bucket, tmp_path, {k: v for k, v in SPECS.items() if k != "zero.mov"})
    runner = sequential(tiny_checkpoint)
    real_append = delta.append_once

    def dying_append(location, relative, data, **kw):
        if relative == "videos":
            if dies == "after videos":
                real_append(location, relative, data, **kw)
            raise Interrupted
        return real_append(location, relative, data, **kw)

    monkeypatch.setattr(delta, "append_once", dying_append)
    with pytest.raises(Interrupted):
        run_archive(job_for(bucket, options), runner, model_name="j4r-tiny", model_version="test")
    monkeypatch.setattr(delta, "append_once", real_append)
    store = store_of(bucket, options)
    (first,) = store.uncommitted_runs()  # no runs row yet
    assert store.read("frames").num_rows == 15  # the frames commit had landed
    assert store.read("videos").num_rows == (4 if dies == "after videos" else 0)

    again = run_archive(
        job_for(bucket, options), runner, model_name="j4r-tiny", model_version="test"
    )
    assert [c["run_id"] for c in store.commits()] == [first["run_id"], again.run_id]
    assert store.uncommitted_runs() == []
    assert (again.ok, again.failed, again.skipped) == (0, 1, 3)  # the interrupted run's work
    videos = store.read("videos", run_id=first["run_id"]).to_pylist()
    assert sorted(r["status"] for r in videos) == ["failed", "ok", "ok", "ok"]
    frames = store.read("frames").to_pylist()
    assert len(frames) == 15
    assert len({(f["run_id"], f["video_id"], f["frame_index"]) for f in frames}) == 15
    assert not fs.exists(f"{bucket}/out/_manifests/_intents/{first['run_id']}.json")


def run_on_ray(bucket, options, checkpoint, workers, clips_per_worker=1):
    from pipeline.runtime.ray_runner import RayRunner

    stage = StageConfig(checkpoint, device="cpu", encode=LOSSLESS, clips_per_batch=clips_per_worker)
    runner = RayRunner(stage, workers=workers)
    try:
        return run_archive(job_for(bucket, options), runner, model_name="m", model_version="v")
    finally:
        runner.close()


def decoded_outputs(fs, bucket, tmp_path, name):
    out = {}
    for key in sorted(fs.find(f"{bucket}/out")):
        if "_manifests" in key:
            continue
        local = tmp_path / name / key.replace("/", "_")
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(local))
        out[key] = np.concatenate(list(read_chunks(local)))
    return out


@pytest.mark.ray
def test_ray_runner_matches_sequential(s3, tmp_path, tiny_checkpoint, ray_session):

    fs, bucket, options = s3
    upload_archive(fs, bucket, tmp_path, SPECS)
    run_archive(
        job_for(bucket, options), sequential(tiny_checkpoint), model_name="m", model_version="v"
    )
    reference = decoded_outputs(fs, bucket, tmp_path, "seq")
    ref_frames = (
        store_of(bucket, options)
        .read("frames")
        .sort_by([("video_id", "ascending"), ("frame_index", "ascending")])
    )
    fs.rm(f"{bucket}/out", recursive=True)
    summary = run_on_ray(bucket, options, tiny_checkpoint, workers=2)
    assert (summary.ok, summary.failed) == (3, 2)
    assert "ray, 2 actor(s)" in summary.runner
    produced = decoded_outputs(fs, bucket, tmp_path, "ray")
    assert produced.keys() == reference.keys()
    for key in reference:
        np.testing.assert_array_equal(produced[key], reference[key])
    frames = (
        store_of(bucket, options)
        .read("frames")
        .sort_by([("video_id", "ascending"), ("frame_index", "ascending")])
    )
    assert frames.column("alpha_mean").to_pylist() == pytest.approx(
        ref_frames.column("alpha_mean").to_pylist(), abs=1e-6
    )


@pytest.mark.ray
@pytest.mark.slow
def test_killed_actor_is_restarted_and_its_video_redone(s3, tmp_path, tiny_checkpoint, ray_session):
    from pipeline.runtime.ray_runner import RayRunner

    fs, bucket, options = s3
    specs = {f"v{i}.mkv": (40, 48, 64, "ffv1") for i in range(4)}
    upload_archive(fs, bucket, tmp_path, specs)
    runner = RayRunner(
        StageConfig(tiny_checkpoint, device="cpu", encode=LOSSLESS, chunk_frames=4),
        workers=1,
    )
    first_pid = runner.actor_pids[0]

    def kill_soon():
        time.sleep(1.0)
        os.kill(first_pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    try:
        summary = run_archive(job_for(bucket, options), runner, model_name="m", model_version="v")
        restarted_pid = runner.actor_pids[0]
    finally:
        killer.join()
        runner.close()
    assert restarted_pid != first_pid  # the actor really died and came back
    assert (summary.ok, summary.failed) == (4, 0)
    frames = store_of(bucket, options).read("frames").to_pylist()
    assert len(frames) == 160
    assert len({(f["video_id"], f["frame_index"]) for f in frames}) == 160


@pytest.mark.ray
def test_a_worker_out_of_restarts_is_replaced_and_its_video_redone(
    s3, tmp_path, tiny_checkpoint, ray_session
):
    """No in-place restarts left (max_restarts=0): Ray gives the actor up for good; the runner
    starts a new one and the run goes on, every frame once (it used to end the run)."""
    from pipeline.runtime.ray_runner import RayRunner

    fs, bucket, options = s3
    specs = {f"v{i}.mkv": (40, 48, 64, "ffv1") for i in range(3)}
    upload_archive(fs, bucket, tmp_path, specs)
    config = StageConfig(tiny_checkpoint, device="cpu", encode=LOSSLESS, chunk_frames=4)
    runner = RayRunner(config, workers=1, max_restarts=0)
    first_actor, first_pid = runner.actors[0], runner.actor_pids[0]
    killer = threading.Timer(1.0, os.kill, (first_pid, signal.SIGKILL))
    killer.start()
    try:
        summary = run_archive(job_for(bucket, options), runner, model_name="m", model_version="v")
        replaced = runner.actors[0] is not first_actor and runner.actor_pids[0] != first_pid
    finally:
        killer.join()
        runner.close()
    assert replaced
    assert (summary.ok, summary.failed) == (3, 0)
    frames = store_of(bucket, options).read("frames").to_pylist()
    assert len(frames) == 120
    assert len({(f["video_id"], f["frame_index"]) for f in frames}) == 120


@pytest.mark.ray
def test_twenty_mixed_videos_on_ray(s3, tmp_path, tiny_checkpoint, ray_session):
    """Mixed sizes, codecs and frame rates; odd keys; a key with '..' never escapes DST."""

    fs, bucket, options = s3
    codecs = ["ffv1", "libx264", "mpeg4"]
    rates = [Fraction(25), Fraction(30000, 1001), Fraction(12), Fraction(60)]
    expected = {}
    for i in range(20):
        codec = codecs[i % 3]
        ext = {"ffv1": ".mkv", "libx264": ".mp4", "mpeg4": ".avi"}[codec]
        key = [f"plain{i}{ext}", f"with space/ü {i}{ext}", f"deep/a/b/{i}{ext}"][i % 3]
        h, w = (16 + 8 * (i % 3), 24 + 8 * (i % 4))
        frames = 3 + i % 5
        local = write_video(
            tmp_path / "src" / f"{i}{ext}",
            moving_frames_thwc_u8(frames, h, w, seed=i),
            codec=codec,
            fps=rates[i % 4],
        )
        fs.put_file(str(local), f"{bucket}/in/{key}")
        expected[key.rsplit(".", 1)[0] + ".mkv"] = (frames, w, h, rates[i % 4])
    fs.pipe(f"{bucket}/in/sneaky/../../escape.mp4", b"x")
    summary = run_on_ray(bucket, options, tiny_checkpoint, workers=2, clips_per_worker=2)
    # The '..' key is accounted for with a failed row of its own (never downloaded).
    assert (summary.ok, summary.failed) == (20, 1)
    assert not fs.exists(f"{bucket}/escape.mkv") and not fs.exists(f"{bucket}/escape.mp4")
    failed = [
        r for r in store_of(bucket, options).read("videos").to_pylist() if r["status"] == "failed"
    ]
    assert len(failed) == 1 and ".." in failed[0]["source_key"]
    from pipeline.io.video import probe

    for key, (frames, w, h, fps) in expected.items():
        local = tmp_path / "check.mkv"
        fs.get_file(f"{bucket}/out/{key}", str(local))
        info = probe(local)
        assert (info.frames, info.width, info.height, info.fps) == (frames, w, h, fps), key
    videos = store_of(bucket, options).read("videos").to_pylist()
    assert len({r["worker"] for r in videos if r["status"] == "ok"}) == 2  # both actors worked

"""Bad input and faults from issue 11 (see docs/failure-modes.md): bad checkpoints and flags,
missing buckets, dead endpoints, failing uploads, unsafe keys, output modes, truncated videos,
and concurrent runs on one destination. Tiny synthetic videos and the tiny net throughout."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.io.storage import list_videos, open_location
from pipeline.io.video import probe, read_chunks
from pipeline.job.manifest import ManifestStore
from tests.helpers import moving_frames_thwc_u8, write_video


def run(src, dst, checkpoint, *flags: str) -> int:
    argv = ["run", str(src), str(dst), "--checkpoint", str(checkpoint), "--no-progress"]
    if "--runner" not in flags:
        argv += ["--runner", "sequential"]
    return main([*argv, *flags])


def one_line_error(capsys, command: str = "run") -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"derain {command}:")]
    assert len(lines) == 1, err
    return lines[0]


def videos_rows(dst) -> list[dict]:
    store = ManifestStore(open_location(f"{dst}/_manifests"))
    return store.read("videos").to_pylist()


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_video(tmp_path / "in" / "a.mkv", moving_frames_thwc_u8(4, 16, 16))


# -- 5. checkpoints ------------------------------------------------------------------------------


def _bad_checkpoint(good: Path, folder: Path, kind: str) -> tuple[Path, str]:
    """A copy of ``good`` damaged as ``kind``; (folder, the file the message must name)."""
    shutil.copytree(good, folder)
    weights, config = folder / "model.safetensors", folder / "config.json"
    meta = json.loads(config.read_text())
    if kind == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return folder, "model.safetensors"
    if kind == "random weights":
        weights.write_bytes(os.urandom(weights.stat().st_size))
        return folder, "model.safetensors"
    if kind == "wrong tensor shapes":
        meta["net"]["channels"] = 12
    elif kind == "json list":
        meta = [meta]
    elif kind == "no name":
        del meta["name"]
    elif kind == "not json":
        config.write_text("{not json")
        return folder, "config.json"
    config.write_text(json.dumps(meta))
    return folder, "model.safetensors" if kind == "wrong tensor shapes" else "config.json"


KINDS = ["truncated weights", "random weights", "wrong tensor shapes", "json list", "no name",
         "not json"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_bad_checkpoint_is_one_line_exit_2_before_any_video(
    tmp_path, clip, tiny_checkpoint, capsys, kind
):
    bad, named = _bad_checkpoint(tiny_checkpoint, tmp_path / "bad", kind)
    assert run(clip.parent, tmp_path / "out", bad) == 2
    line = one_line_error(capsys)
    assert str(bad / named) in line or (named == "config.json" and str(bad) in line), line
    assert not (tmp_path / "out").exists()  # no output, no manifest, no claim: nothing began


def test_bad_checkpoint_on_ray_is_refused_in_the_driver(
    tmp_path, clip, tiny_checkpoint, capsys, monkeypatch
):
    bad, _ = _bad_checkpoint(tiny_checkpoint, tmp_path / "bad", "random weights")

    def no_actors(*args, **kwargs):
        raise AssertionError("Ray actors were started for a bad checkpoint")

    monkeypatch.setattr("pipeline.runtime.runners.build_runner", no_actors)
    assert run(clip.parent, tmp_path / "out", bad, "--runner", "ray", "--workers", "2") == 2
    assert "model.safetensors" in one_line_error(capsys)


# -- 7. flags --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--max-videos", "-1"], "--max-videos"),
        (["--workers", "0"], "workers"),
        (["--runner", "ray", "--workers", "0"], "workers"),
        (["--chunk-frames", "0"], "chunk frames"),
        (["--clips-per-worker", "0"], "clips per batch"),
        (["--segment-frames", "-5"], "--segment-frames"),
        (["--warmup-frames", "-1"], "--warmup-frames"),
        (["--cpus-per-worker", "0"], "cpus"),
        (["--device", "bogus"], "bogus"),
        (["--device", "cuda:x"], "cuda:x"),
    ],
)
def test_bad_flags_exit_2_with_a_message(tmp_path, clip, tiny_checkpoint, capsys, flags, says):
    assert run(clip.parent, tmp_path / "out", tiny_checkpoint, *flags) == 2
    assert says in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_cuda_without_cuda_is_a_usage_error(tmp_path, clip, tiny_checkpoint, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for device in ("cuda", "cuda:1"):
        assert run(clip.parent, tmp_path / "out", tiny_checkpoint, "--device", device) == 2
        assert "no CUDA GPU" in one_line_error(capsys)


def test_lossless_one_pixel_wide_video_fails_with_a_readable_reason(
    tmp_path, tiny_checkpoint, capsys
):
    import av

    (tmp_path / "in").mkdir()
    with av.open(str(tmp_path / "in" / "thin.mp4"), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 1, 16, "yuv444p"
        for rgb in moving_frames_thwc_u8(3, 16, 8)[:, :, :1]:
            frame = av.VideoFrame.from_ndarray(rgb.copy(), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint, "--lossless") == 1
    (row,) = videos_rows(tmp_path / "out")
    assert row["status"] == "failed" and "1 pixel wide" in row["error_message"]
    assert "without --lossless" in row["error_message"]
    # The same video without --lossless (H.264) works.
    capsys.readouterr()
    assert run(tmp_path / "in", tmp_path / "out2", tiny_checkpoint) == 0


# -- 6. storage ------------------------------------------------------------------------------------


def test_missing_destination_bucket_is_refused_not_created(s3, tmp_path, tiny_checkpoint, capsys):
    fs, bucket, options = s3
    write_video(tmp_path / "a.mkv", moving_frames_thwc_u8(3, 16, 16))
    fs.put_file(str(tmp_path / "a.mkv"), f"{bucket}/in/a.mkv")
    endpoint = ["--endpoint-url", options["endpoint_url"]]
    missing = f"{bucket}-nope"
    assert run(f"s3://{bucket}/in", f"s3://{missing}/out", tiny_checkpoint, *endpoint) == 2
    line = one_line_error(capsys)
    assert missing in line and "never creates buckets" in line
    fs.invalidate_cache()
    assert not fs.exists(missing)
    # --manifest in a missing bucket: the same
    code = run(f"s3://{bucket}/in", f"s3://{bucket}/out", tiny_checkpoint, *endpoint,
               "--manifest", f"s3://{missing}/m")  # fmt: skip
    assert code == 2 and "manifest bucket" in one_line_error(capsys)
    fs.invalidate_cache()
    assert not fs.exists(missing) and not fs.exists(f"{bucket}/out")


def _black_hole() -> tuple[socket.socket, list[socket.socket], int]:
    """A listening socket whose accept queue is full: new connections hang (no answer)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        fillers.append(c)
    return server, fillers, port


@pytest.mark.parametrize("endpoint", ["refused", "black hole"])
def test_unreachable_endpoint_is_one_line_exit_3_within_30_s(
    tmp_path, tiny_checkpoint, capsys, endpoint
):
    if endpoint == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: connections are refused
        keep = None
    else:
        keep = _black_hole()
        port = keep[2]
    started = time.monotonic()
    code = run("s3://cams/in", "s3://cams-out/x", tiny_checkpoint,
               "--endpoint-url", f"http://127.0.0.1:{port}")  # fmt: skip
    elapsed = time.monotonic() - started
    if keep:
        for s in [keep[0], *keep[1]]:
            s.close()
    assert code == 3  # infrastructure, not usage
    line = one_line_error(capsys)
    assert "cannot reach" in line and f"127.0.0.1:{port}" in line
    assert elapsed < 30, elapsed


def test_upload_failing_in_flight_names_the_video_and_a_rerun_resumes(
    s3, tmp_path, tiny_checkpoint, capsys, monkeypatch
):
    import s3fs

    fs, bucket, options = s3
    for name in ("a.mkv", "b.mkv"):
        write_video(tmp_path / name, moving_frames_thwc_u8(3, 16, 16, seed=len(name)))
        fs.put_file(str(tmp_path / name), f"{bucket}/in/{name}")
    real_put = s3fs.S3FileSystem._put_file

    async def dying_put(self, lpath, rpath, *args, **kwargs):
        if rpath.endswith("b.mp4"):
            raise ConnectionResetError(104, "Connection reset by peer")
        return await real_put(self, lpath, rpath, *args, **kwargs)

    # Instances bind their sync methods when made: patch the class, then drop cached ones.
    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", dying_put)
    s3fs.S3FileSystem.clear_instance_cache()
    flags = ["--endpoint-url", options["endpoint_url"]]
    src, dst = f"s3://{bucket}/in", f"s3://{bucket}/out"
    try:
        assert run(src, dst, tiny_checkpoint, *flags) == 1
    finally:
        monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", real_put)
        s3fs.S3FileSystem.clear_instance_cache()
    out = capsys.readouterr().out
    assert f"failed: s3://{bucket}/in/b.mkv: StorageError: upload to s3://{bucket}/out/b.mp4" in out
    assert "run again to resume" in out
    assert run(src, dst, tiny_checkpoint, *flags) == 0
    assert "1 ok, 0 failed, 1 skipped" in capsys.readouterr().out  # b redone, a kept


# -- 8. keys with '..' -----------------------------------------------------------------------------


def test_key_with_dot_dot_gets_a_failed_row(s3, tmp_path, tiny_checkpoint, capsys):
    fs, bucket, options = s3
    write_video(tmp_path / "a.mkv", moving_frames_thwc_u8(3, 16, 16))
    data = (tmp_path / "a.mkv").read_bytes()
    fs.pipe(f"{bucket}/in/good.mkv", data)
    # botocore would normalise '..' in a path: put the raw key with the client itself.
    fs.call_s3("put_object", Bucket=bucket, Key="in/x/../../evil.mkv", Body=data)
    fs.invalidate_cache()
    listed = list_videos(open_location(f"s3://{bucket}/in", options), include_refused=True)
    assert [(o.key, bool(o.refused)) for o in listed] == [("good.mkv", False),
                                                          ("x/../../evil.mkv", True)]  # fmt: skip
    dst = f"s3://{bucket}/out"
    assert run(f"s3://{bucket}/in", dst, tiny_checkpoint, "--endpoint-url",
               options["endpoint_url"]) == 1  # fmt: skip
    store = ManifestStore(open_location(f"{dst}/_manifests", options))
    rows = {r["source_key"]: r for r in store.read("videos").to_pylist()}
    assert rows["good.mkv"]["status"] == "ok"
    bad = rows["x/../../evil.mkv"]
    assert bad["status"] == "failed" and "'..'" in bad["error_message"]
    fs.invalidate_cache()
    assert not [k for k in fs.find(bucket) if "evil" in k and "/in/" not in k]


# -- 12. output modes ------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_follow_the_umask(tmp_path, tiny_checkpoint, umask):
    write_video(tmp_path / "in" / "a.mkv", moving_frames_thwc_u8(3, 16, 16))
    old = os.umask(umask)
    try:
        assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint) == 0
    finally:
        os.umask(old)
    mode = (tmp_path / "out" / "a.mp4").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask, oct(mode)


# -- 2. truncated videos ---------------------------------------------------------------------------


def _truncated_mkv(folder: Path) -> Path:
    full = write_video(folder / "full.mkv", moving_frames_thwc_u8(30, 32, 48))
    cut = folder / "in" / "cut.mkv"
    cut.parent.mkdir(parents=True, exist_ok=True)
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    full.unlink()
    return cut


def test_truncated_video_is_partial_with_its_output_kept(tmp_path, tiny_checkpoint, capsys):
    cut = _truncated_mkv(tmp_path)
    assert probe(cut).frames == 30
    assert run(cut.parent, tmp_path / "out", tiny_checkpoint) == 1  # a failure for the exit code
    out = capsys.readouterr().out
    assert "0 ok, 0 failed, 1 partial" in out
    (row,) = videos_rows(tmp_path / "out")
    assert row["status"] == "partial" and row["error_type"] == "IncompleteDecode"
    decoded = row["frames"]
    assert 0 < decoded < 30
    assert row["error_message"].startswith(f"decoded {decoded} of 30 declared frames: ")
    assert probe(tmp_path / "out" / "cut.mp4").frames == decoded  # output kept
    assert main(["manifest", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().out
    assert "partial (output kept" in shown and f"decoded {decoded} of 30" in shown


def test_decoder_error_mid_video_is_partial_with_the_error(
    tmp_path, tiny_checkpoint, monkeypatch, capsys
):
    import av

    import pipeline.io.video as video

    write_video(tmp_path / "in" / "v.mkv", moving_frames_thwc_u8(12, 16, 16))
    monkeypatch.setattr(video, "DECORD_BUDGET_BYTES", 0)  # PyAV reads it
    real_open = av.open

    class Damaged:
        def __init__(self, container):
            self.container = container

        def __getattr__(self, name):
            return getattr(self.container, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.container.__exit__(*exc)

        def decode(self, *args, **kwargs):
            for i, frame in enumerate(self.container.decode(*args, **kwargs)):
                if i == 5:
                    raise av.error.InvalidDataError(1094995529, "Invalid data found")
                yield frame

    monkeypatch.setattr(av, "open", lambda *a, **k: Damaged(real_open(*a, **k)))
    report = video.DecodeReport()
    frames = sum(len(c) for c in read_chunks(tmp_path / "in" / "v.mkv", 4, report=report))
    assert frames == 5 and "InvalidDataError" in report.error
    assert run(tmp_path / "in", tmp_path / "out", tiny_checkpoint) == 1
    (row,) = videos_rows(tmp_path / "out")
    assert row["status"] == "partial"
    assert row["error_message"].startswith("decoded 5 of 12 declared frames: PyAV: InvalidData")


# -- 9. concurrent runs --------------------------------------------------------------------------


def test_second_run_on_a_claimed_destination_refuses_naming_the_first(
    tmp_path, clip, tiny_checkpoint, capsys
):
    from pipeline.job.claim import acquire

    dst = tmp_path / "out"
    held = acquire(str(dst), info={"run_id": "20261130T000000Z-first"})
    try:
        assert run(clip.parent, dst, tiny_checkpoint) == 2
        line = one_line_error(capsys)
        for word in ("20261130T000000Z-first", socket.gethostname(), f"pid {os.getpid()}",
                     "since"):  # fmt: skip
            assert word in line
        assert not (dst / "_manifests").exists() and not (dst / "a.mp4").exists()
    finally:
        held.release()
    assert not (dst / "_claim.json").exists()
    assert run(clip.parent, dst, tiny_checkpoint) == 0
    assert not (dst / "_claim.json").exists()  # released at the end


def _write_claim(dst: Path, **fields) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).isoformat()
    claim = {"token": "t", "run_id": "old", "host": socket.gethostname(), "pid": 1,
             "started_at": now, "heartbeat_at": now, **fields}  # fmt: skip
    (dst / "_claim.json").write_text(json.dumps(claim))


def test_stale_claims_are_taken_over(tmp_path, clip, tiny_checkpoint):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_claim(tmp_path / "out1", pid=dead.pid)  # owner gone, same host
    assert run(clip.parent, tmp_path / "out1", tiny_checkpoint) == 0
    old = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    _write_claim(tmp_path / "out2", host="elsewhere", pid=123, heartbeat_at=old)  # past the TTL
    assert run(clip.parent, tmp_path / "out2", tiny_checkpoint) == 0
    _write_claim(tmp_path / "out3", host="elsewhere", pid=123)  # fresh, other host: held
    assert run(clip.parent, tmp_path / "out3", tiny_checkpoint) == 2


def test_claim_is_released_when_the_run_fails(tmp_path, clip, tiny_checkpoint, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr("pipeline.job.archive.execute_run", boom)
    with pytest.raises(OSError, match="disk on fire"):
        run(clip.parent, tmp_path / "out", tiny_checkpoint)
    assert not (tmp_path / "out" / "_claim.json").exists()


def test_claims_are_atomic_on_s3(s3):
    """moto 5.2 honours `If-None-Match: *` on PUT (412): s3fs's mode="create" is atomic."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.io.storage import create_exclusive
    from pipeline.job.claim import ClaimedError, acquire, read_claim

    fs, bucket, options = s3
    location = open_location(f"s3://{bucket}/out", options)
    assert create_exclusive(location, "x.json", b"1")
    assert not create_exclusive(location, "x.json", b"2")
    assert fs.cat_file(f"{bucket}/out/x.json") == b"1"

    def attempt(_):
        try:
            return acquire(f"s3://{bucket}/dst", options)
        except ClaimedError:
            return None

    with ThreadPoolExecutor(4) as pool:
        claims = [c for c in pool.map(attempt, range(4)) if c is not None]
    assert len(claims) == 1  # same pid, all alive: exactly one wins
    assert read_claim(open_location(f"s3://{bucket}/dst", options))["token"] == claims[0].token
    claims[0].release()
    assert read_claim(open_location(f"s3://{bucket}/dst", options)) is None


def test_two_processes_on_one_destination(tmp_path, tiny_checkpoint, capsys):
    """A real second process: while the first `derain run` holds DST, the second refuses."""
    write_video(tmp_path / "in" / "long.mkv", moving_frames_thwc_u8(240, 48, 64))
    dst = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "run", str(tmp_path / "in"), str(dst),
         "--checkpoint", str(tiny_checkpoint), "--runner", "sequential", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (dst / "_claim.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        code = run(tmp_path / "in", dst, tiny_checkpoint)
        still_running = first.poll() is None
    finally:
        _out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    if still_running:
        assert code == 2 and f"pid {first.pid}" in one_line_error(capsys)
    assert not (dst / "_claim.json").exists()
    frames = ManifestStore(open_location(dst / "_manifests")).read("frames")
    assert frames.num_rows == 240  # every frame once

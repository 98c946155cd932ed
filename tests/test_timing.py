"""Timing and orientation survive `derain run`: variable frame rates, out-of-order time stamps,
segmented runs, the manifest's ``timestamp_s`` and the display matrix (failure mode 3).

Test inputs are written with PyAV with explicit time stamps (and side data for the rotation).
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.main import main
from pipeline.io.storage import open_location
from pipeline.io.timing import (
    is_constant_rate,
    read_timeline,
    strictly_increasing,
    timeline_from_packets,
)
from pipeline.io.video import EncodeOptions, in_presentation_order, read_chunks
from pipeline.job.manifest import ManifestStore
from pipeline.stage.config import StageConfig
from pipeline.stage.derain import DerainStage
from tests.helpers import moving_frames_thwc_u8, write_video

MS = Fraction(1, 1000)
# The reported clip: 10 frames over 1.24 s, which came out as 0.40 s at 25 fps.
VFR_MS = [0, 40, 80, 200, 240, 500, 540, 700, 1000, 1240]


def write_timed_video(
    path: Path,
    frames_thwc_u8: np.ndarray,
    pts: list[int],
    *,
    time_base: Fraction = MS,
    codec: str = "ffv1",
    rotation: float | None = None,
    dts: list[int] | None = None,
) -> Path:
    """Frames with explicit time stamps (``dts``: overrides the encoder's decode times, to
    store packets out of time order); ``rotation``: a display matrix, counter-clockwise."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {"ffv1": "matroska", "libx264": "mp4"}[codec]
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height = frames_thwc_u8.shape[2], frames_thwc_u8.shape[1]
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        packets = []
        for rgb, stamp in zip(frames_thwc_u8, pts, strict=True):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = stamp, time_base
            packets += stream.encode(frame)
        packets += stream.encode(None)
        for packet, decode_time in zip(packets, dts or [], strict=False):
            packet.dts = decode_time
        for packet in packets:
            container.mux(packet)
    return path


def shown_times(path: Path) -> list[Fraction]:
    """Each decoded frame's presentation time in seconds, from the file's first frame."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = [frame.pts for frame in container.decode(stream)]
        return [(p - pts[0]) * stream.time_base for p in pts]


def rotation_of(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return next(container.decode(container.streams.video[0])).rotation


def track_seconds(path: Path) -> float:
    """How long the container says the video lasts."""
    import av

    with av.open(str(path)) as container:
        return container.duration / 1e6


def derain_run(src: Path, dst: Path, checkpoint, *flags: str) -> int:
    args = ["run", str(src), str(dst), "--checkpoint", str(checkpoint), "--no-progress"]
    return main([*args, "--runner", "sequential", *flags])


def frames_table(dst: Path) -> dict:
    store = ManifestStore(open_location(dst / "_manifests"))
    return store.read("frames").sort_by("frame_index").to_pydict()


def videos_table(dst: Path) -> list[dict]:
    return ManifestStore(open_location(dst / "_manifests")).read("videos").to_pylist()


def seconds(ms: list[int]) -> list[Fraction]:
    return [Fraction(m, 1000) for m in ms]


def irregular_ms(count: int, seed: int) -> list[int]:
    """``count`` strictly increasing times with intervals of 10..200 ms."""
    steps = np.random.default_rng(seed).integers(10, 200, count - 1)
    return [0, *np.cumsum(steps).tolist()]


# -- timelines (pure) ---------------------------------------------------------------------


def test_constant_rate_allows_one_tick_of_rounding_and_no_more():
    rate = Fraction(30000, 1001)
    ms = [round(i * 1000 / rate) for i in range(300)]  # how Matroska stores 29.97 fps
    assert is_constant_rate(ms, MS, rate)
    assert not is_constant_rate([*ms[:-1], ms[-1] + 1], MS, rate)
    assert not is_constant_rate(VFR_MS, MS, Fraction(25))
    assert is_constant_rate([i * 40 for i in range(10)], MS, Fraction(25))


def test_timeline_of_a_variable_rate_stream_keeps_every_time_from_the_first():
    shuffled = [1100, 1040, 1080, 1240, 1200]  # decode order of a B-frame stream, from 1.04 s
    timeline = timeline_from_packets(shuffled, MS, Fraction(25), decoder_reorders=True)
    assert not timeline.constant_rate and not timeline.out_of_order
    assert timeline.pts == (0, 40, 60, 160, 200)
    assert timeline.time_base == MS
    assert [timeline.pts_for(i) for i in (5, 6)] == [240, 280]  # past the end: last interval
    # The same packets from a codec that does not reorder come out of the decoder that way.
    assert timeline_from_packets(shuffled, MS, 25, decoder_reorders=False).out_of_order


def test_constant_rate_timeline_is_the_writer_grid():
    timeline = timeline_from_packets(
        [0, 33, 67, 100], MS, Fraction(30000, 1001), decoder_reorders=False
    )
    assert timeline.constant_rate and timeline.time_base == Fraction(1001, 30000)
    assert [timeline.pts_for(i) for i in range(4)] == [0, 1, 2, 3]
    assert timeline.seconds(3) == pytest.approx(3 * 1001 / 30000)


def test_repeated_time_stamps_become_strictly_increasing():
    assert strictly_increasing([0, 40, 40, 40, 100]) == [0, 40, 41, 42, 100]


class FakeFrame:
    def __init__(self, pts):
        self.pts = pts


def test_presentation_order_sorts_within_the_window_and_keeps_far_frames_in_place(caplog):
    near = [FakeFrame(p) for p in (0, 2, 1, 3, 5, 4)]
    assert [f.pts for f in in_presentation_order(iter(near), 2)] == [0, 1, 2, 3, 4, 5]
    far = [FakeFrame(p) for p in (1, 2, 3, 4, 0)]
    with caplog.at_level(logging.WARNING):
        got = [f.pts for f in in_presentation_order(iter(far), 2)]
    assert got == [1, 2, 0, 3, 4]  # 0 came 4 frames late: it goes out as soon as it is seen
    assert "out of place" in caplog.text


def test_presentation_order_hands_out_held_frames_before_a_decoder_error():
    def decoded():
        yield FakeFrame(1)
        yield FakeFrame(0)
        raise RuntimeError("damaged packet")

    frames = in_presentation_order(decoded(), 8)
    assert [next(frames).pts, next(frames).pts] == [0, 1]
    with pytest.raises(RuntimeError, match="damaged"):
        next(frames)


# -- derain run end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vfr")
    frames = moving_frames_thwc_u8(len(VFR_MS), 24, 32, seed=7)
    return write_timed_video(folder / "in" / "vfr.mkv", frames, VFR_MS)


@pytest.mark.parametrize("lossless", [False, True])
def test_variable_rate_clip_keeps_duration_and_frame_times(
    vfr_clip, tmp_path, tiny_checkpoint, lossless
):
    flags = ["--lossless"] if lossless else []
    assert derain_run(vfr_clip, tmp_path / "out", tiny_checkpoint, *flags) == 0
    out = tmp_path / "out" / ("vfr.mkv" if lossless else "vfr.mp4")
    assert shown_times(out) == seconds(VFR_MS)  # 1.24 s from first to last frame, not 0.36
    # The video lasts as long as the source (Matroska: last time + one frame at 25 fps).
    assert track_seconds(out) == pytest.approx(track_seconds(vfr_clip), abs=1e-3)
    (video,) = videos_table(tmp_path / "out")
    assert (video["status"], video["frames"]) == ("ok", len(VFR_MS))
    rows = frames_table(tmp_path / "out")
    assert rows["frame_index"] == list(range(len(VFR_MS)))
    assert rows["timestamp_s"] == [float(t) for t in seconds(VFR_MS)]  # the source's pts


@pytest.mark.parametrize("lossless", [False, True])
def test_segmented_variable_rate_run_gives_the_one_pass_times(tmp_path, tiny_checkpoint, lossless):
    ms = irregular_ms(40, seed=11)
    src = write_timed_video(
        tmp_path / "in" / "long.mkv", moving_frames_thwc_u8(40, 24, 32, seed=8), ms
    )
    flags = ["--lossless"] if lossless else []
    name = "long.mkv" if lossless else "long.mp4"
    assert derain_run(src, tmp_path / "one", tiny_checkpoint, *flags) == 0
    split = ["--segment-frames", "12", "--warmup-frames", "4"]
    assert derain_run(src, tmp_path / "seg", tiny_checkpoint, *flags, *split) == 0
    assert shown_times(tmp_path / "seg" / name) == shown_times(tmp_path / "one" / name)
    assert shown_times(tmp_path / "seg" / name) == seconds(ms)
    assert track_seconds(tmp_path / "seg" / name) == pytest.approx(
        track_seconds(tmp_path / "one" / name), abs=1e-3
    )
    (video,) = videos_table(tmp_path / "seg")
    assert (video["status"], video["frames"]) == ("ok", 40)  # the count of packets, not 25 fps
    one, seg = frames_table(tmp_path / "one"), frames_table(tmp_path / "seg")
    assert seg["frame_index"] == list(range(40))
    assert seg["timestamp_s"] == one["timestamp_s"] == [float(t) for t in seconds(ms)]


@pytest.mark.parametrize("lossless", [False, True])
def test_rotation_is_kept_whole_and_segmented(tmp_path, tiny_checkpoint, lossless):
    frames = moving_frames_thwc_u8(20, 16, 32, seed=9)
    src = write_timed_video(
        tmp_path / "in" / "phone.mp4",
        frames,
        [i * 512 for i in range(20)],
        time_base=Fraction(1, 12800),
        codec="libx264",
        rotation=90,
    )
    assert rotation_of(src) == 90
    flags = ["--lossless"] if lossless else []
    name = "phone.mkv" if lossless else "phone.mp4"
    assert derain_run(src, tmp_path / "one", tiny_checkpoint, *flags) == 0
    split = ["--segment-frames", "8", "--warmup-frames", "2"]
    assert derain_run(src, tmp_path / "seg", tiny_checkpoint, *flags, *split) == 0
    assert rotation_of(tmp_path / "one" / name) == rotation_of(tmp_path / "seg" / name) == 90
    # The pictures stay as coded (the display matrix turns them): 32 wide, 16 high.
    assert next(read_chunks(tmp_path / "one" / name)).shape[1:] == (16, 32, 3)


def test_out_of_order_frames_are_derained_in_presentation_order(tmp_path, tiny_checkpoint):
    frames = moving_frames_thwc_u8(12, 24, 32, seed=10)
    shown = [0, 40, 80, 160, 120, 200, 280, 240, 320, 400, 360, 440]  # per stored packet
    order = np.argsort(shown)
    # FFV1 does not reorder: the decoder hands frames out as stored, time stamps unordered.
    broken = write_timed_video(
        tmp_path / "broken.mkv", frames, shown, dts=[i * 40 - 40 for i in range(12)]
    )
    assert read_timeline(broken, Fraction(25)).out_of_order
    fine = write_timed_video(tmp_path / "fine.mkv", frames[order], sorted(shown))
    stage = DerainStage(
        StageConfig(tiny_checkpoint, device="cpu", encode=EncodeOptions(lossless=True))
    )
    outputs = {}
    for name, src in (("broken", broken), ("fine", fine)):
        result = stage.process(src, tmp_path / "out" / f"{name}.mkv")
        assert result.timestamps_s == [t / 1000 for t in sorted(shown)]
        outputs[name] = np.concatenate(list(read_chunks(result.output)))
        assert shown_times(Path(result.output)) == seconds(sorted(shown))
    # The recurrent net saw the frames in the order they show: the same output bit for bit.
    np.testing.assert_array_equal(outputs["broken"], outputs["fine"])


@pytest.mark.parametrize("lossless", [False, True])
def test_constant_rate_output_is_unchanged(tmp_path, tiny_checkpoint, lossless):
    """A constant-rate source is written as before: pts i in 1/fps ticks (whatever its own
    time base rounds them to), every frame, no rotation, ``timestamp_s`` = i / fps."""
    rate = Fraction(30000, 1001)
    src = write_video(tmp_path / "in" / "cfr.mkv", moving_frames_thwc_u8(30, 24, 32), fps=rate)
    assert read_timeline(src, rate).constant_rate
    flags = ["--lossless"] if lossless else []
    name = "cfr.mkv" if lossless else "cfr.mp4"
    assert derain_run(src, tmp_path / "one", tiny_checkpoint, *flags) == 0
    split = ["--segment-frames", "12", "--warmup-frames", "4"]
    assert derain_run(src, tmp_path / "seg", tiny_checkpoint, *flags, *split) == 0
    grid = [i / rate for i in range(30)]
    tick = Fraction(1, 1000) if lossless else Fraction(0)  # Matroska keeps milliseconds
    for run in ("one", "seg"):
        times = shown_times(tmp_path / run / name)
        assert len(times) == 30
        assert all(abs(t - g) <= tick / 2 for t, g in zip(times, grid, strict=True)), run
        assert rotation_of(tmp_path / run / name) == 0
        rows = frames_table(tmp_path / run)
        assert rows["timestamp_s"] == pytest.approx([float(g) for g in grid], abs=1e-12)

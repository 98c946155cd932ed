"""The de-rain stage: a J4R-Net on a device, streaming one video's frames through it.

:class:`DerainStage` is Ray-agnostic (declared resources, ``setup()`` loads weights inside the
worker, ``process()`` does one video); the pure helpers below it carry layout and dtype in
their names. The recurrent memory is carried across decode chunks, so the output does not
depend on the chunk size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.io.overlap import BackgroundSink, prefetch
from pipeline.io.timing import (
    REORDER_WINDOW,
    Timeline,
    display_matrix,
    expected_frames,
    read_timeline,
)
from pipeline.io.video import DecodeReport, VideoWriter, probe, read_chunks
from pipeline.stage.config import Resources, StageConfig
from pipeline.stage.segments import Segment
from pipeline.stage.tiles import check_frame_fits, chunk_frames_for, tiles_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameStats:
    """Per-frame statistics of what the network predicted (for the manifests)."""

    alpha_mean: float  # mean P(α = 1)
    alpha_frac: float  # fraction of pixels with P(α = 1) > 0.5
    alpha_p95: float
    streak_mean: float  # mean |Ŝ|
    change_mean: float  # mean |B̂ − O| on luma
    rain_probability: float = 1.0  # the presence head's P(rain in this frame); 1 without one


@dataclass
class VideoResult:
    source: str
    output: str
    frames: int
    fps: float
    width: int
    height: int
    seconds: float
    frame_stats: list[FrameStats] = field(default_factory=list)
    precision: str = "fp32"  # resolved: fp32 or bf16
    tiles: int = 1  # tiles per frame (1: frames ran whole)
    # One frame in the middle of the video, before and after (h, w, 3) uint8, for reports.
    thumbnail_before: np.ndarray | None = None
    thumbnail_after: np.ndarray | None = None
    # Why the decode was incomplete ("decoded N of M declared frames: ..."); None: complete.
    incomplete: str | None = None
    # Each written frame's presentation time, seconds from the video's first frame (a
    # segment's frames carry their times in the whole video).
    timestamps_s: list[float] = field(default_factory=list)

    @property
    def alpha_mean(self) -> float:
        return float(np.mean([s.alpha_mean for s in self.frame_stats])) if self.frame_stats else 0.0


def frames_thwc_u8_to_tchw_float(frames_thwc_u8: np.ndarray, device: str):
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(frames_thwc_u8)).to(device)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def tchw_float_to_frames_thwc_u8(frames_tchw) -> np.ndarray:
    import torch

    frames_u8 = frames_tchw.clamp(0, 1).mul(255.0).round().to(torch.uint8)
    return frames_u8.permute(0, 2, 3, 1).cpu().numpy()


def frame_stats(out, luma_b1hw) -> list[FrameStats]:
    """Statistics for each frame in a step's batch."""
    import torch

    prob = torch.softmax(out.alpha_logits.float(), dim=1)[:, 1].flatten(1)
    change = (out.background.clamp(0, 1) - luma_b1hw).abs().flatten(1).mean(1)
    rain = torch.sigmoid(out.presence_logits.float()).flatten()
    # torch.quantile refuses inputs over 16M elements; kthvalue has no such limit.
    k = max(1, round(0.95 * prob.shape[1]))
    p95 = prob.kthvalue(k, dim=1).values
    return [
        FrameStats(
            alpha_mean=float(prob[i].mean()),
            alpha_frac=float((prob[i] > 0.5).float().mean()),
            alpha_p95=float(p95[i]),
            streak_mean=float(out.streaks[i].abs().mean()),
            change_mean=float(change[i]),
            rain_probability=float(rain[i]),
        )
        for i in range(prob.shape[0])
    ]


def resolve_stage_precision(requested: str, device: str) -> str:
    """``auto``/``fp32``/``bf16`` on a resolved device (``cpu``, ``cuda:1``) -> fp32 or bf16."""
    from j4r.precision import resolve_precision

    return resolve_precision(requested, str(device).split(":")[0])


def prepare_for_precision(model, precision: str):
    from j4r.model import prepare_for_precision as prepare

    return prepare(model, precision)


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Hand freed heap pages back to the system (glibc ``malloc_trim``; no-op elsewhere).

    Per-frame activations are several MB each; glibc keeps the freed blocks in a fragmented
    heap, so without this a long video's RSS wanders upward (measured at 320x240: peaks of
    600 MiB against a flat 442 MiB with a trim per chunk, at the same speed).
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def tiled_frame_stats(stats) -> FrameStats:
    """:class:`FrameStats` of a tiled frame from its tiles' sums (p95 to 1/4096)."""
    return FrameStats(
        alpha_mean=stats.alpha_sum / stats.pixels,
        alpha_frac=stats.alpha_over_half / stats.pixels,
        alpha_p95=stats.alpha_quantile(0.95),
        streak_mean=stats.streak_abs_sum / stats.pixels,
        change_mean=stats.change_sum / stats.pixels,
        rain_probability=stats.rain_probability,
    )


def derain_frames(
    step: Callable,
    chunks_thwc_u8: Iterable[np.ndarray],
    *,
    device: str,
    make_tiles: Callable[[int, int], object] | None = None,
) -> Iterator[tuple[np.ndarray, list[FrameStats]]]:
    """Stream chunks of one clip through ``step``, carrying its memory across chunks.

    ``step(rgb (1, 3, h, w), memory) -> (rgb, StepOutput, memory)`` is the network on its own
    (:func:`j4r.model.derain_rgb_step`) or a :class:`~pipeline.stage.batching.StepBatcher` that
    runs it for several clips at once. ``make_tiles(width, height)``: a
    :class:`~pipeline.stage.tiles.TiledClip` for frames that run as tiles (each tile keeps its
    own memory, carried across chunks the same way), or None to run them whole.
    """

    from j4r.color import rgb_to_luma

    memory = None
    tiled = None
    started = False
    try:
        for chunk in chunks_thwc_u8:
            if not started:
                started = True
                tiled = make_tiles(chunk.shape[2], chunk.shape[1]) if make_tiles else None
            # Converted frame by frame into one preallocated uint8 chunk: whole-chunk float
            # copies (cat, clamp, scale: ~15 MB each at 320x240 x 16 frames) were the largest
            # transient allocations per chunk and made the heap swing by ~50 MB.
            derained_thwc_u8 = np.empty_like(chunk)
            stats: list[FrameStats] = []
            for t in range(len(chunk)):
                if tiled is not None:
                    derained_thwc_u8[t], tile_stats = _tiled_frame(step, chunk[t], tiled, device)
                    stats.append(tiled_frame_stats(tile_stats))
                    continue
                frame = frames_thwc_u8_to_tchw_float(chunk[t : t + 1], device)
                derained, out, memory = step(frame, memory)
                derained_thwc_u8[t] = tchw_float_to_frames_thwc_u8(derained)[0]
                stats += frame_stats(out, rgb_to_luma(frame))
            yield derained_thwc_u8, stats
            release_free_memory()
    finally:
        if tiled is not None:
            tiled.close()


def _tiled_frame(step: Callable, frame_hw3_u8: np.ndarray, tiled, device: str):
    import torch

    from j4r.tiling import derain_tiled_frame

    frame = torch.from_numpy(np.ascontiguousarray(frame_hw3_u8))
    out, stats = derain_tiled_frame(
        step,
        frame,
        tiled.grid,
        tiled.memories,
        device=device,
        presence_ramp=tiled.presence_ramp,
        chroma_fill=tiled.chroma_fill,
    )
    return out.numpy(), stats


def tap_frame(
    chunks: Iterable[np.ndarray], index: int | None, keep: dict[str, np.ndarray], name: str
) -> Iterator[np.ndarray]:
    """Pass chunks through, keeping a copy of frame ``index`` (counted from 0) in ``keep``."""
    seen = 0
    for chunk in chunks:
        if index is not None and seen <= index < seen + len(chunk):
            keep[name] = chunk[index - seen].copy()
        seen += len(chunk)
        yield chunk


def drop_leading(
    chunks: Iterable[tuple[np.ndarray, list[FrameStats]]], count: int
) -> Iterator[tuple[np.ndarray, list[FrameStats]]]:
    """Skip the first ``count`` frames (and their stats) of a chunked stream: the warm-up."""
    for frames, stats in chunks:
        if count >= len(frames):
            count -= len(frames)
            continue
        yield frames[count:], stats[count:]
        count = 0


def frame_times(timeline: Timeline, first: int, count: int) -> list[int]:
    """Output pts of the ``count`` frames from frame ``first`` of the whole video on: the
    source's times, so a segment's part carries its frames' times in the whole video."""
    return [timeline.pts_for(first + k) for k in range(count)]


class DerainStage:
    """One J4R-Net on one device; ``process`` de-rains a whole local video file."""

    def __init__(self, config: StageConfig):
        self.config = config
        self.options = config.encode
        self.batcher = None
        self.model = None
        self.info = None
        self.device = "cpu"
        self.precision = "fp32"  # resolved in setup()
        self.channels = 0

    @property
    def resources(self) -> Resources:
        return self.config.resources

    def setup(self) -> None:
        """Load the weights on this worker's device (call once, inside the worker), after
        clearing scratch folders that killed runs left on this machine."""
        from pipeline.io.scratch import sweep_stale_scratch
        from pipeline.registry.checkpoints import load_model
        from pipeline.stage.device import check_device_available, resolve_device

        sweep_stale_scratch()
        self.device = resolve_device(self.config.device)
        # Here, not only in the driver: on a cluster the workers' machines are not the driver's.
        check_device_available(self.device)
        checkpoint = self.config.checkpoint
        if checkpoint is not None and "://" in checkpoint:
            from pipeline.registry.models import fetch_checkpoint

            checkpoint = fetch_checkpoint(checkpoint, dict(self.config.checkpoint_options))
        self.model, self.info = load_model(checkpoint, device=self.device)
        self.precision = resolve_stage_precision(self.config.precision, self.device)
        prepare_for_precision(self.model, self.precision)
        self.channels = self.model.memory_channels  # sizes tile memories and budgets
        if self.config.clips_per_batch > 1:
            from pipeline.stage.batching import StepBatcher

            self.batcher = StepBatcher(
                self.model, max_batch=self.config.clips_per_batch, precision=self.precision
            )
        logger.info(
            "loaded %s %s on %s (%s)", self.info.name, self.info.version, self.device,
            self.precision,
        )  # fmt: skip

    def _step(self, rgb_b3hw, memory):
        from j4r.model import derain_rgb_step

        if self.batcher:
            return self.batcher.step(rgb_b3hw, memory)
        return derain_rgb_step(self.model, rgb_b3hw, memory, self.precision)

    def _make_tiles(self, width: int, height: int):
        from pipeline.stage.tiles import TiledClip

        return TiledClip.for_frame(
            width,
            height,
            self.config,
            self.channels,
            self.device,
            self.model.presence_ramp,
            self.model.chroma_fill,
        )

    def process(
        self,
        source: str | Path,
        output: str | Path,
        on_frames: Callable[[int], None] | None = None,
        segment: Segment | None = None,
    ) -> VideoResult:
        """De-rain ``source`` into ``output`` (atomically); raises on an unreadable input.

        With ``segment``, only frames ``[segment.start, segment.stop)`` are written, after the
        warm-up frames before them have rebuilt the recurrent memory; the source's audio goes
        into segment 0 only (the parts are joined later by :func:`pipeline.io.video.concat_videos`).
        Every frame keeps its source time stamp and the source's rotation
        (:mod:`pipeline.io.timing`).
        """
        if self.model is None:
            self.setup()
        started = time.monotonic()
        info = probe(source)
        # Before anything is decoded: a frame too big even for tiles fails here, alone.
        check_frame_fits(
            info.width, info.height, self.config, self.channels, lossless=self.options.lossless
        )
        grid = tiles_for(info.width, info.height, self.config, self.channels)
        chunk_frames = chunk_frames_for(info.width, info.height, self.config)
        segment = segment or Segment(0, 0, None, 0)
        timeline = read_timeline(source, info.fps)
        expected = expected_frames(info.frames, timeline)
        stats: list[FrameStats] = []
        times: list[int] = []
        decode_report = DecodeReport()
        with VideoWriter(
            output,
            fps=info.fps,
            width=info.width,
            height=info.height,
            options=self.options,
            audio_source=source if segment.index == 0 else None,
            time_base=None if timeline.constant_rate else timeline.time_base,
            display_matrix=display_matrix(source),
        ) as writer:
            # Decode ahead and encode behind the network, two chunks of slack each way.
            decoded = read_chunks(
                source,
                chunk_frames,
                start=segment.warm_start,
                stop=segment.stop,
                info=info,
                report=decode_report,
                reorder=REORDER_WINDOW if timeline.out_of_order else 0,
            )
            # Segment 0 (a whole video, or the first part of a split one) keeps a thumbnail.
            middle = ((segment.stop or expected) // 2) if segment.index == 0 else None
            thumbs: dict[str, np.ndarray] = {}
            # Frames so big that a chunk is one frame (8K: 100 MB each) keep one chunk of slack:
            # the network takes minutes per such frame, decoding a second.
            slack = 2 if chunk_frames > 1 else 1
            chunks = prefetch(tap_frame(decoded, middle, thumbs, "before"), depth=slack)
            sink = BackgroundSink(lambda item: writer.write(*item), depth=slack)
            if self.batcher:
                self.batcher.register()
            try:
                derained = derain_frames(
                    self._step, chunks, device=self.device, make_tiles=self._make_tiles
                )
                for frames, chunk_stats in drop_leading(derained, segment.warmup):
                    if middle is not None and len(stats) <= middle < len(stats) + len(frames):
                        thumbs["after"] = frames[middle - len(stats)].copy()
                    pts = frame_times(timeline, segment.start + len(stats), len(frames))
                    sink.put((frames, pts))
                    times += pts
                    stats += chunk_stats
                    if on_frames:
                        on_frames(len(frames))
            finally:
                if self.batcher:
                    self.batcher.unregister()
                sink.close()
            final = writer.commit()
        return VideoResult(
            source=str(source),
            output=str(final),
            frames=len(stats),
            fps=float(info.fps),
            width=info.width,
            height=info.height,
            seconds=time.monotonic() - started,
            frame_stats=stats,
            precision=self.precision,
            tiles=len(grid) if grid is not None else 1,
            thumbnail_before=thumbs.get("before"),
            thumbnail_after=thumbs.get("after"),
            incomplete=decode_report.shortfall(
                min(segment.stop or expected, expected) - segment.warm_start
            ),
            timestamps_s=[float(p * timeline.time_base) for p in times],
        )

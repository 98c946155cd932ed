"""When each frame is shown, and which way up: read from the source, carried to the output.

A de-rained video must show frame i when the source showed it. The times come from the
container's packets, read once before decoding (demuxing alone, no picture is decoded):
sorted, they are the frames' presentation times in presentation order, and output frame i gets
the i-th of them. A source whose times sit on the ``i / fps`` grid (within one tick of its
time base, which is how a Matroska file rounds 29.97 fps to milliseconds) is *constant rate*:
it is written exactly as before, in ``1 / fps`` ticks with pts ``i``. Any other source is
written in its own stream's time base, so variable-rate clips keep every frame's time.

Decoders hand frames out in presentation order, except in broken files whose codec does not
reorder (intra-only codecs such as FFV1 or MJPEG) but whose packets are stored out of time
order. Those are read with PyAV and sorted by time stamp within :data:`REORDER_WINDOW` frames,
so the recurrent net sees presentation order; a frame displaced further than that is kept
where it came (memory stays bounded) and a warning says so. Output time stamps are the sorted
source times, strictly increasing whatever the decoder hands out, so no muxer rejects them.

The display matrix (a phone's 90° rotation) travels from the first decoded frame's side data
to the output stream's coded side data (PyAV 18: ``VideoFrame.side_data`` /
``VideoStream.set_display_matrix``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

logger = logging.getLogger(__name__)

# Decoded frames a reader may hold to put an out-of-order file back in presentation order.
REORDER_WINDOW = 64
IDENTITY_MATRIX = (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)


def writer_rate(fps: Fraction) -> Fraction:
    """The frame rate an output stream is declared with (what its constant-rate ticks are)."""
    return Fraction(fps).limit_denominator(1_000_000)


@dataclass(frozen=True)
class Timeline:
    """Presentation time of every frame, counted from the first frame, in ``time_base`` ticks.

    ``pts`` is strictly increasing; empty for a constant-rate timeline, where frame i is at
    tick i. ``out_of_order``: the decoder will hand frames out in another order than their
    time stamps (see the module docstring). ``frames``: packets counted (0: not counted).
    """

    time_base: Fraction
    pts: tuple[int, ...] = ()
    constant_rate: bool = True
    out_of_order: bool = False
    frames: int = 0

    def pts_for(self, index: int) -> int:
        """Frame ``index``'s time; past the last known frame (a decoder that gives more frames
        than packets were counted) the last interval repeats."""
        if self.constant_rate or not self.pts:
            return index
        if index < len(self.pts):
            return self.pts[index]
        step = self.pts[-1] - self.pts[-2] if len(self.pts) > 1 else 1
        return self.pts[-1] + max(1, step) * (index - len(self.pts) + 1)

    def seconds(self, index: int) -> float:
        return float(self.pts_for(index) * self.time_base)


def constant_rate_timeline(fps: Fraction, *, out_of_order: bool = False, frames: int = 0):
    return Timeline(time_base=1 / writer_rate(fps), out_of_order=out_of_order, frames=frames)


def is_constant_rate(relative_pts: Sequence[int], time_base: Fraction, fps: Fraction) -> bool:
    """Whether every frame i is within one tick of ``i / fps`` (integer arithmetic: long videos
    have hundreds of thousands of frames)."""
    if fps <= 0:
        return False
    tb, rate = Fraction(time_base), Fraction(fps)
    # |p * tb - i / rate| < tb, times tb.den * rate.num (both positive):
    scale_p = tb.numerator * rate.numerator
    scale_i = tb.denominator * rate.denominator
    return all(abs(p * scale_p - i * scale_i) < scale_p for i, p in enumerate(relative_pts))


def strictly_increasing(values: Sequence[int]) -> list[int]:
    """``values`` with repeats nudged one tick up (two packets with one time stamp)."""
    out: list[int] = []
    for value in values:
        out.append(value if not out or value > out[-1] else out[-1] + 1)
    return out


def is_monotonic(values: Sequence[int]) -> bool:
    return all(b >= a for a, b in itertools.pairwise(values))


def timeline_from_packets(
    packet_pts: Sequence[int], time_base: Fraction, fps: Fraction, *, decoder_reorders: bool
) -> Timeline:
    """The timeline of a stream whose packets (in file order) carry ``packet_pts``.

    ``decoder_reorders``: the codec's decoder puts frames in presentation order itself (H.264
    with B-frames); otherwise packets stored out of time order come out of it that way.
    """
    out_of_order = not decoder_reorders and not is_monotonic(packet_pts)
    if not packet_pts:
        return constant_rate_timeline(fps)
    ordered = sorted(packet_pts)
    relative = [p - ordered[0] for p in ordered]
    if is_constant_rate(relative, time_base, fps):
        return constant_rate_timeline(fps, out_of_order=out_of_order, frames=len(ordered))
    return Timeline(
        time_base=Fraction(time_base),
        pts=tuple(strictly_increasing(relative)),
        constant_rate=False,
        out_of_order=out_of_order,
        frames=len(ordered),
    )


def expected_frames(declared: int, timeline: Timeline) -> int:
    """How many frames a complete decode gives: the container's count, except for a variable
    rate, where a container without one (Matroska) only yields duration × average rate and
    the packets counted are the better number."""
    if not timeline.constant_rate and timeline.frames:
        return timeline.frames
    return declared


def read_timeline(path: str | Path, fps: Fraction) -> Timeline:
    """Demux (without decoding) ``path``'s first video stream for its frames' times.

    Packets without a time stamp (raw streams, some AVI files) leave only the frame rate to go
    by: the timeline is then constant rate, as every output was before times were kept. A
    demuxer error part-way (a truncated file) keeps the times read so far.
    """
    import av
    from av.codec.codec import Properties

    try:
        container = av.open(str(path))
    except Exception as exc:  # FFmpeg's error types; the decoder reports the file's problem
        logger.info("%s: no time stamps (%s); assuming a constant rate", path, exc)
        return constant_rate_timeline(fps)
    with container:
        stream = container.streams.video[0]
        reorders = bool(stream.codec_context.codec.properties & Properties.REORDER.value)
        pts: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # end-of-stream marker, edit list
                    continue
                if packet.pts is None:
                    logger.info("%s: packets without time stamps; assuming a constant rate", path)
                    return constant_rate_timeline(fps)
                pts.append(packet.pts)
        except Exception as exc:  # FFmpeg's error types: a damaged file
            logger.info("%s: demuxing stopped after %d packets (%s)", path, len(pts), exc)
        timeline = timeline_from_packets(pts, stream.time_base, fps, decoder_reorders=reorders)
    if not timeline.constant_rate:
        logger.info("%s: variable frame rate; keeping each frame's time stamp", path)
    if timeline.out_of_order:
        logger.warning("%s: frames stored out of time order; sorting them by time stamp", path)
    return timeline


def display_matrix(path: str | Path) -> tuple[int, ...] | None:
    """The source's display matrix (9 int32, FFmpeg's layout), or None for none or identity.

    PyAV 18 reads it only from decoded frames (``VideoFrame.side_data``; the stream-level
    ``side_data`` was removed in PyAV 14), so the first frame is decoded.
    """
    import av
    import numpy as np
    from av.sidedata.sidedata import Type

    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(container.streams.video[0]), None)
            data = frame.side_data.get(Type.DISPLAYMATRIX) if frame is not None else None
            if data is None:
                return None
            matrix = tuple(int(v) for v in np.frombuffer(bytes(data), dtype="=i4")[:9])
    except Exception as exc:  # FFmpeg's error types; the decoder reports the file's problem
        logger.info("%s: display matrix unreadable (%s); none written", path, exc)
        return None
    return None if matrix == IDENTITY_MATRIX else matrix

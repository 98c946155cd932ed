"""Video in (decord for short videos, PyAV for long ones and as fallback) and out (PyAV).

Frames travel as ``frames_thwc_u8``: numpy ``(t, h, w, 3)`` uint8 RGB, in bounded chunks.
Nothing here holds a whole video in memory (which is why decord, whose reader buffers every
frame ahead of the read position, only reads videos that fit ``DECORD_BUDGET_BYTES``). The
writer encodes to a temporary file beside the destination that is renamed into place only when
complete, so a half-written video is never at its final path.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.errors import VideoError

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".mpg", ".mpeg", ".m4v", ".webm")
MP4_AUDIO_CODECS = {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # frames the container claims; the reader stops early if fewer decode
    fps: Fraction
    width: int
    height: int
    codec: str


def probe(path: str | Path | BinaryIO) -> VideoInfo:
    """Container metadata through PyAV (exact rational frame rate).

    ``path`` may be an open binary file (e.g. an fsspec S3 file): only the bytes the demuxer
    asks for are read, so probing a remote object does not download it.
    """
    import av

    try:
        with av.open(path if hasattr(path, "read") else str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream (is it an audio or image file?)")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            # MP4 stores a frame count; Matroska and others only a duration.
            frames = stream.frames
            if not frames and stream.duration and stream.time_base:
                frames = round(float(stream.duration * stream.time_base * rate))
            if not frames and container.duration:
                frames = round(container.duration / 1_000_000 * float(rate))
            return VideoInfo(
                frames=int(frames or 0),
                fps=Fraction(rate),
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                codec=stream.codec_context.name,
            )
    except VideoError:
        raise
    except Exception as exc:  # PyAV raises many FFmpeg error types
        raise VideoError(f"{path}: not a readable video ({type(exc).__name__}: {exc})") from exc


@dataclass
class DecodeReport:
    """What a :func:`read_chunks` call decoded: frames passed on, and the decoder error that
    ended it early (None: it reached the end, or ``stop``)."""

    frames: int = 0
    error: str | None = None

    def shortfall(self, expected: int) -> str | None:
        """Why the decode is incomplete, or None: a decoder error, or clearly fewer frames
        than ``expected`` (the container's count; estimated from the duration in Matroska, so
        1 % and one frame of slack)."""
        short = expected > 0 and expected - self.frames > max(1, expected // 100)
        if self.error is None and not short:
            return None
        why = self.error or "the stream ends early, without a decoder error (truncated file?)"
        return f"decoded {self.frames} of {expected} declared frames: {why}"


def _decord_chunks(
    path: str,
    chunk_frames: int,
    start: int,
    stop: int | None,
    report: DecodeReport | None = None,
) -> Iterator[np.ndarray]:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    total = len(reader) if stop is None else min(len(reader), stop)
    for first in range(start, total, chunk_frames):
        indices = list(range(first, min(total, first + chunk_frames)))
        try:
            yield reader.get_batch(indices).asnumpy()
        except decord.DECORDError:
            # The container's count can exceed what decodes: read on frame by frame, stop
            # at the first frame that fails.
            for index in indices:
                try:
                    yield reader.get_batch([index]).asnumpy()
                except decord.DECORDError as exc:
                    if index == start:
                        raise  # nothing decodes here: let read_chunks try PyAV
                    logger.warning("%s: frames %d..%d do not decode; stopping", path, index, total)
                    if report is not None:
                        report.error = f"decord: {_first_line(exc)}"
                    return


def _seek_before(container, stream, start: int) -> bool:
    """Seek to the keyframe at or before frame ``start``; False if the stream cannot say where."""
    rate = stream.average_rate or stream.guessed_rate
    if start <= 0 or not rate or stream.time_base is None:
        return False
    target = (stream.start_time or 0) + int(start / (rate * stream.time_base))
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
    except Exception as exc:  # FFmpeg raises many error types; decode from the start instead
        logger.info("seek to frame %d failed (%s); decoding from the start", start, exc)
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:300]


def in_presentation_order(frames: Iterator, window: int, path: str = "") -> Iterator:
    """Decoded frames sorted by ``pts`` within ``window`` frames (0: as they come).

    A frame displaced further than ``window`` cannot be put back with bounded memory: it is
    passed on where it comes, with a warning. A decoder error first hands out the frames held,
    then propagates (the caller keeps what decoded).
    """
    if window <= 0:
        yield from frames
        return
    held: list = []
    order = 0
    last = None

    def release():
        nonlocal last
        _, _, frame = heapq.heappop(held)
        if last is not None and frame.pts is not None and frame.pts < last:
            logger.warning("%s: a frame at pts %d is more than %d frames out of place; "
                           "kept where it decoded", path, frame.pts, window)  # fmt: skip
        last = frame.pts if frame.pts is not None else last
        return frame

    try:
        for frame in frames:
            key = frame.pts if frame.pts is not None else (last if last is not None else -1)
            heapq.heappush(held, (key, order, frame))
            order += 1
            if len(held) > window:
                yield release()
    except Exception:
        while held:
            yield release()
        raise
    while held:
        yield release()


def _pyav_chunks(
    path: str,
    chunk_frames: int,
    start: int,
    stop: int | None,
    report: DecodeReport | None = None,
    reorder: int = 0,
) -> Iterator[np.ndarray]:
    import av

    buffer: list[np.ndarray] = []
    kept = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame/slice threads: same pictures, decoded faster
        seeked = _seek_before(container, stream, start)
        rate, first_pts = stream.average_rate or stream.guessed_rate, stream.start_time or 0
        index = -1
        frames = in_presentation_order(container.decode(stream), reorder, path)
        while True:
            try:
                frame = next(frames, None)
            except Exception as exc:  # FFmpeg's errors: a truncated or damaged file
                if kept == 0:
                    raise  # nothing decodes: let read_chunks try the other reader
                logger.warning("%s: decoding stopped after %d frames: %s", path, kept, exc)
                if report is not None:
                    report.error = f"PyAV: {_first_line(exc)}"
                break
            if frame is None:
                break
            if seeked and index < 0 and frame.pts is not None:
                # After a seek, the first frame's timestamp says where we landed.
                index = round(float((frame.pts - first_pts) * stream.time_base * rate))
            else:
                index += 1
            if stop is not None and index >= stop:
                break
            if index < start:
                continue  # decoded and dropped: a seek lands on the keyframe before ``start``
            buffer.append(frame.to_ndarray(format="rgb24"))
            kept += 1
            if len(buffer) == chunk_frames:
                yield np.stack(buffer)
                buffer = []
    if buffer:
        yield np.stack(buffer)


# decord's reader decodes ahead to the end of the file in a thread of its own and keeps every
# frame (measured: a 1440-frame 320x240 video reached +353 MB two seconds after the first
# get_batch, whatever the chunk size). It is the reader when the rest of the video fits this
# budget; longer videos stream through PyAV, which decodes a frame when it is asked for one.
DECORD_BUDGET_BYTES = 64 * 2**20


def _readers_for(path: str, start: int, info: VideoInfo | None = None, reorder: int = 0):
    if reorder > 0:
        # Only PyAV says which time stamp each decoded frame has; decord (decode order, no
        # time stamps) is the fallback for a file PyAV cannot open.
        sorted_pyav = functools.partial(_pyav_chunks, reorder=reorder)
        return (("PyAV", sorted_pyav), ("decord", _decord_chunks))
    if info is None:
        try:
            info = probe(path)
        except VideoError:
            return (("decord", _decord_chunks), ("PyAV", _pyav_chunks))  # let both say why
    decoded_bytes = max(0, info.frames - start) * info.width * info.height * 3
    if decoded_bytes <= DECORD_BUDGET_BYTES:
        return (("decord", _decord_chunks), ("PyAV", _pyav_chunks))
    return (("PyAV", _pyav_chunks), ("decord", _decord_chunks))


def _counted(
    first: np.ndarray, chunks: Iterator[np.ndarray], report: DecodeReport | None
) -> Iterator[np.ndarray]:
    for chunk in _chain_first(first, chunks):
        if report is not None:
            report.frames += len(chunk)
        yield chunk


def _chain_first(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def read_chunks(
    path: str | Path,
    chunk_frames: int = 16,
    *,
    start: int = 0,
    stop: int | None = None,
    info: VideoInfo | None = None,
    report: DecodeReport | None = None,
    reorder: int = 0,
) -> Iterator[np.ndarray]:
    """Yield ``frames_thwc_u8`` chunks of frames ``[start, stop)``, at most ``chunk_frames`` each.

    decord is the reader while the decoded rest of the video fits ``DECORD_BUDGET_BYTES``
    (it buffers all of it), PyAV beyond that; either falls back to the other when it cannot open
    the file or decode its first frame. A file neither can decode raises :class:`VideoError`
    with both reasons. ``info``: the file's :func:`probe`, if the caller already has it.
    ``report`` (a :class:`DecodeReport`) gets the frames passed on and the decoder error that
    ended the decode early, if one did: a truncated file then yields what decodes.
    ``reorder`` > 0: the file's frames decode out of time order (:mod:`pipeline.io.timing`);
    PyAV reads it, sorting frames by time stamp within that many frames.
    """
    path = str(path)
    errors: list[str] = []
    for name, reader in _readers_for(path, start, info, reorder):
        chunks = reader(path, chunk_frames, start, stop, report)
        try:
            first = next(chunks, None)
        except Exception as exc:  # decord and FFmpeg raise many error types
            errors.append(f"{name}: {exc}")
            continue
        if first is None and start > 0:
            return  # nothing at or after ``start`` (segment 0 reports an unreadable file)
        if first is None:
            errors.append(f"{name}: no frame decodes")
            continue
        if errors:
            logger.info("%s: decoding with %s (%s)", path, name, "; ".join(errors))
        yield from _counted(first, chunks, report)
        return
    raise VideoError(
        f"{path}: cannot decode ({'; '.join(errors)}); check that the file is a complete video"
    )


@dataclass(frozen=True)
class EncodeOptions:
    lossless: bool = False  # FFV1 in .mkv instead of H.264 in .mp4
    crf: int = 18

    @property
    def extension(self) -> str:
        return ".mkv" if self.lossless else ".mp4"

    @property
    def container_format(self) -> str:
        return "matroska" if self.lossless else "mp4"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux can say (/proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting it, and put it back at once
    os.umask(mask)
    return mask


def chmod_like_new_file(path: str | Path) -> None:
    """Give a temp file (``mkstemp`` makes them 0600) the mode a plain new file would get:
    0666 minus the umask, so an output renamed into place is as readable as any file."""
    os.chmod(path, 0o666 & ~current_umask())


def temp_beside(final_path: Path) -> Path:
    """An empty hidden temp file in ``final_path``'s folder (renamed into place when complete)."""
    final_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(
        prefix=f".{final_path.stem}.", suffix=".part", dir=final_path.parent
    )
    os.close(handle)
    return Path(tmp)


def open_audio_copy(out_container, source: str | Path | None, options: EncodeOptions):
    """Add ``source``'s first audio stream to ``out_container`` (copied, not re-encoded).

    Returns the handle :func:`copy_audio` takes, or None when there is no audio to carry over.
    """
    import av

    if source is None:
        return None
    container = av.open(str(source))
    if not container.streams.audio:
        container.close()
        return None
    in_stream = container.streams.audio[0]
    codec = in_stream.codec_context.name
    if not options.lossless and codec not in MP4_AUDIO_CODECS:
        logger.warning(
            "%s: %s audio cannot go into .mp4; dropped (use --lossless for .mkv)", source, codec
        )
        container.close()
        return None
    out_stream = out_container.add_stream_from_template(in_stream)
    return container, in_stream, out_stream


def copy_audio(audio, out_container) -> None:
    """Mux every packet of the stream :func:`open_audio_copy` opened, then close its input."""
    container, in_stream, out_stream = audio
    try:
        for packet in container.demux(in_stream):
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = out_stream
            out_container.mux(packet)
    finally:
        container.close()


# x264 keeps up to rc-lookahead frames (40 at preset medium) in flight: 2 GB at 8K. Frames
# above 1080p get a shorter lookahead so that the frames it holds stay near this many pixels.
X264_LOOKAHEAD_PIXELS = 2**27


def _x264_bounds(width: int, height: int) -> dict[str, str]:
    """Encoder options that bound memory for big frames; none for 1080p and smaller."""
    lookahead = X264_LOOKAHEAD_PIXELS // max(1, width * height)
    if lookahead >= 40:
        return {}
    return {"rc-lookahead": str(max(4, lookahead))}


def mov_track_timescale(time_base: Fraction) -> int:
    """The timescale FFmpeg's MP4 muxer gives a video track of ``time_base`` (its denominator,
    doubled up to at least 10000)."""
    timescale = Fraction(time_base).denominator
    while timescale < 10000:
        timescale *= 2
    return timescale


def muxer_options(options: EncodeOptions, time_base: Fraction) -> dict[str, str]:
    """MP4: the movie timescale of the video track's, so the edit list that says when the
    first frame shows is exact (at the default 1000 a segment part starting at 8008/30000 s
    reads back as 7980/30000 s). Matroska keeps milliseconds whatever is asked."""
    if options.lossless:
        return {}
    return {"movie_timescale": str(mov_track_timescale(time_base))}


@dataclass
class _TrackSpan:
    """What an MP4 video track needs to last from its first frame to the end of its last.

    The MP4 muxer measures a track by its decode times plus the last packet's duration. x264
    gives variable-rate packets no duration and decode times that trail the presentation times
    by its B-frame delay (frames, not ticks), so a variable-rate track would read as far shorter
    than it shows (10 frames over 1.24 s: 0.82 s). The last packet's duration makes up the
    difference; the last frame lasts one frame at the declared rate (as Matroska counts it).
    """

    frame_ticks: int
    first_pts: int | None = None
    last_pts: int | None = None
    first_dts: int | None = None

    def saw(self, pts: int, packets) -> None:
        self.first_pts = pts if self.first_pts is None else self.first_pts
        self.last_pts = pts
        for packet in packets:
            if self.first_dts is None and packet.dts is not None:
                self.first_dts = packet.dts

    def stretch_last(self, packets) -> None:
        if not packets or self.first_pts is None:
            return
        self.saw(self.last_pts, packets)  # the flush may hold the first packets of all
        last = packets[-1]
        if last.dts is None or self.first_dts is None:
            return
        span = self.last_pts + self.frame_ticks - self.first_pts
        last.duration = max(last.duration or 0, span - (last.dts - self.first_dts))


class VideoWriter:
    """Encode frames to a temp file; :meth:`commit` renames it to ``final_path``.

    Use as a context manager: leaving without :meth:`commit` (an error) deletes the temp file.
    """

    def __init__(
        self,
        final_path: str | Path,
        *,
        fps: Fraction,
        width: int,
        height: int,
        options: EncodeOptions,
        audio_source: str | Path | None = None,
        time_base: Fraction | None = None,
        display_matrix: tuple[int, ...] | None = None,
    ):
        """``time_base``: the ticks :meth:`write`'s ``pts`` count (None: ``1 / fps``, frames
        at a constant rate). ``display_matrix``: the source's rotation, 9 int32 in FFmpeg's
        layout (:func:`pipeline.io.timing.display_matrix`), written as the stream's side data.
        """
        import av

        self.final_path = Path(final_path)
        self.tmp_path = temp_beside(self.final_path)
        rate = Fraction(fps).limit_denominator(1_000_000)
        clock = 1 / rate if time_base is None else Fraction(time_base)
        self._container = av.open(
            str(self.tmp_path),
            mode="w",
            format=options.container_format,
            options=muxer_options(options, clock),
        )
        if options.lossless:
            stream = self._container.add_stream("ffv1", rate=rate)
            stream.pix_fmt = "bgr0"  # RGB kept bit-exact
        else:
            stream = self._container.add_stream("libx264", rate=rate)
            # 4:2:0 needs even sizes; odd-sized videos keep full chroma instead.
            stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            stream.options = {
                "crf": str(options.crf),
                "preset": "medium",
                **_x264_bounds(width, height),
            }
        stream.width, stream.height = width, height
        if time_base is None:
            stream.time_base = clock
        else:  # the encoder's clock too: frame pts are read in the codec's time base
            stream.time_base = stream.codec_context.time_base = clock
        if display_matrix is not None:
            stream.set_display_matrix(list(display_matrix))
        self._stream = stream
        self.frames_written = 0
        # Variable-rate MP4: the track's length is stretched to the last frame's end at commit.
        self._span: _TrackSpan | None = None
        if time_base is not None and not options.lossless:
            self._span = _TrackSpan(frame_ticks=max(1, round(1 / (rate * clock))))
        self._audio = None
        try:
            self._audio = open_audio_copy(self._container, audio_source, options)
        except Exception:
            self.abort()
            raise

    def write(self, frames_thwc_u8: np.ndarray, pts: Sequence[int] | None = None) -> None:
        """Encode frames; ``pts``: their presentation times in the writer's time base,
        strictly increasing across calls (None: the count of frames written before each)."""
        import av

        for k, rgb in enumerate(frames_thwc_u8):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self.frames_written if pts is None else int(pts[k])
            if self.frames_written == 0:
                packets = self._first_encode(frame)  # FFmpeg opens the encoder here
            else:
                packets = self._stream.encode(frame)
            if self._span is not None:
                self._span.saw(frame.pts, packets)
            self._container.mux(packets)
            self.frames_written += 1

    def _first_encode(self, frame):
        """Encode the first frame; an encoder that refuses the video says why, readably."""
        try:
            return self._stream.encode(frame)
        except Exception as exc:  # FFmpeg's error types
            codec, width, height = self._stream.codec_context.name, frame.width, frame.height
            if codec == "ffv1" and width == 1 and height > 1:
                hint = "FFV1 (--lossless) cannot encode a video 1 pixel wide; run it without "
                hint += "--lossless (H.264 takes it)"
            else:
                hint = f"the {codec} encoder refuses a {width}x{height} video"
            raise VideoError(f"{hint} ({type(exc).__name__}: {exc})") from exc

    def commit(self) -> Path:
        packets = self._stream.encode(None)
        if self._span is not None:
            self._span.stretch_last(packets)
        self._container.mux(packets)
        if self._audio:
            audio, self._audio = self._audio, None
            copy_audio(audio, self._container)
        self._container.close()
        self._container = None
        chmod_like_new_file(self.tmp_path)
        os.replace(self.tmp_path, self.final_path)
        return self.final_path

    def abort(self) -> None:
        if self._audio:
            self._audio[0].close()
            self._audio = None
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._container is not None:
            self.abort()


def _joined_packets(container, in_stream, last_dts: int | None) -> Iterator:
    """One part's video packets, decode times set to follow the previous part's ``last_dts``.

    Parts carry their frames' own presentation times (a segment writes the source's times for
    its frames), so pts are copied as they are. Decode times are pulled back to follow the
    previous part's last decode time with no gap (for a constant rate, a gap would read as a
    lower frame rate) but never pushed later; a decode time that would not follow the previous
    one is raised to one tick after it, and a part that cannot be joined that way (a packet
    decoding after it shows) is refused.
    """
    rate = in_stream.average_rate or in_stream.guessed_rate
    ticks_per_frame = max(1, round(1 / (rate * in_stream.time_base))) if rate else 1
    dts_shift = None
    for packet in container.demux(in_stream):
        if packet.dts is None:  # end-of-stream marker
            continue
        if dts_shift is None:
            dts_shift = 0 if last_dts is None else min(0, last_dts + ticks_per_frame - packet.dts)
        dts = packet.dts + dts_shift
        if last_dts is not None and dts <= last_dts:
            dts = last_dts + 1
        if packet.pts is not None and dts > packet.pts:
            raise VideoError(
                f"cannot join the parts: a frame at pts {packet.pts} would decode at {dts}, "
                "after it shows (parts overlap in time?)"
            )
        packet.dts = last_dts = dts
        yield packet


def _stream_end(stream) -> int | None:
    """Where a part's video track ends (its first frame's time plus its length), if known."""
    if stream.start_time is None or not stream.duration:
        return None
    return stream.start_time + stream.duration


def _stretch_to(packet, first_pts: int, first_dts: int, end: int | None) -> None:
    """Give the joined track's last packet the duration that makes it end at ``end`` (the
    last part's end), as :class:`_TrackSpan` did for each part; never shortens it."""
    if end is None or packet.dts is None:
        return
    needed = (end - first_pts) - (packet.dts - first_dts)
    packet.duration = max(packet.duration or 0, needed)


def concat_videos(parts: list[Path], final_path: Path, *, options: EncodeOptions) -> Path:
    """Join video parts encoded with identical settings into one file, without re-encoding.

    Each part carries its frames' presentation times from the video's start (a segment's
    writer is given them), so the joined video keeps them, gaps and variable rates included.

    The first part's audio stream (if any) is carried over whole: a segmented run writes the
    source's audio into segment 0 only. Written to a temp file and renamed into place.
    """
    import av

    if not parts:
        raise VideoError("no parts to join")
    final_path = Path(final_path)
    tmp = temp_beside(final_path)
    try:
        with av.open(str(parts[0])) as first:
            time_base = first.streams.video[0].time_base
        with av.open(
            str(tmp),
            mode="w",
            format=options.container_format,
            options=muxer_options(options, time_base),
        ) as out:
            with av.open(str(parts[0])) as first:
                template = first.streams.video[0]
                out_stream = out.add_stream_from_template(template)
            audio = open_audio_copy(out, parts[0], options)
            # Each packet is muxed when the next one arrives: the last one's duration is set
            # (MP4) so that the joined track lasts as long as its frames show.
            pending, last_dts, first, end = None, None, None, None
            for part in parts:
                with av.open(str(part)) as container:
                    stream = container.streams.video[0]
                    if stream.time_base != time_base:
                        raise VideoError(f"{part}: time base differs from the first part's")
                    for packet in _joined_packets(container, stream, last_dts):
                        first = first or (packet.pts, packet.dts)
                        last_dts, packet.stream = packet.dts, out_stream
                        if pending is not None:
                            out.mux(pending)
                        pending = packet
                    end = _stream_end(stream)
            if pending is not None:
                if not options.lossless:
                    _stretch_to(pending, *first, end)
                out.mux(pending)
            if audio:
                copy_audio(audio, out)
        chmod_like_new_file(tmp)
        os.replace(tmp, final_path)
    finally:
        tmp.unlink(missing_ok=True)
    return final_path


def write_frames(
    path: str | Path, frames_thwc_u8: np.ndarray, *, fps: Fraction | int = 25, crf: int = 18
) -> Path:
    """Encode in-memory frames to an H.264 file (demo and benchmark inputs)."""
    _, h, w, _ = frames_thwc_u8.shape
    options = EncodeOptions(crf=crf)
    with VideoWriter(path, fps=Fraction(fps), width=w, height=h, options=options) as writer:
        for start in range(0, len(frames_thwc_u8), 64):
            writer.write(frames_thwc_u8[start : start + 64])
        return writer.commit()

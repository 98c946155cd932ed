"""Test data shared by several test modules: synthetic frames and videos written with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def moving_frames_thwc_u8(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth textured scene panning right with a few bright streak-like lines."""
    rng = np.random.default_rng(seed)
    base = rng.random((height // 4 + 2, (width + frames * 2) // 4 + 2, 3))
    big = np.kron(base, np.ones((4, 4, 1)))[:height, : width + frames * 2]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        frame = big[:, 2 * t : 2 * t + width].copy()
        cols = rng.integers(0, width, 6)
        frame[:, cols] = 0.95
        out[t] = (frame * 255).astype(np.uint8)
    return out


def write_video(
    path: Path,
    frames_thwc_u8: np.ndarray,
    *,
    fps: Fraction | int = 25,
    codec: str = "ffv1",
    audio_seconds: float = 0.0,
) -> Path:
    """Encode test frames (and, if asked, a 440 Hz AAC tone) with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {"ffv1": "matroska", "libx264": "mp4", "mpeg4": "avi"}[codec]
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = frames_thwc_u8.shape[2], frames_thwc_u8.shape[1]
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        audio = container.add_stream("aac", rate=44100) if audio_seconds else None
        for rgb in frames_thwc_u8:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
        if audio is not None:
            t = np.arange(int(44100 * audio_seconds)) / 44100
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(tone), 1024):
                block = tone[None, start : start + 1024]
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
                frame.sample_rate = 44100
                container.mux(audio.encode(frame))
            container.mux(audio.encode(None))
    return path

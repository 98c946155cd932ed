"""The quick start's parts: rainy clips from held-out footage, and how close the result is.

Library of ``derain demo``; the archive job in between is :func:`pipeline.job.archive.run_archive`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.io.video import read_chunks, write_frames

DEMO_CLIPS = (("bikes.mp4#0", "light"), ("china.jpg#0", "heavy"), ("flower.jpg#1", "light"))


def write_clip(path: Path, frames_tchw) -> None:
    """A ``(t, 3, h, w)`` float tensor in [0, 1] as a high-quality H.264 file."""
    frames_thwc_u8 = (frames_tchw.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()
    write_frames(path, frames_thwc_u8, crf=10)


def read_all(path: Path) -> np.ndarray:
    """Every frame of a video as ``frames_thwc_u8``."""
    return np.concatenate(list(read_chunks(path)))


def write_rainy_clips(rainy_dir: Path, frames: int) -> dict[str, np.ndarray]:
    """Synthesise :data:`DEMO_CLIPS` into ``rainy_dir/STEM.mp4``; ``{stem: clean thwc u8}``.

    Raises ``j4r.sources.MissingContentError`` when the held-out footage is not installed.
    """
    from j4r.evaluate import build_eval_set

    sets = {p: build_eval_set(p, frames=frames, crop=192) for p in ("light", "heavy")}
    clean_by_stem = {}
    for name, preset in DEMO_CLIPS:
        clip = next(c for c in sets[preset] if c.name == name)
        stem = f"{name.replace('#', '-').replace('.', '_')}-{preset}"
        write_clip(rainy_dir / f"{stem}.mp4", clip.rainy)
        clean_by_stem[stem] = (clip.clean.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    return clean_by_stem


def compare(
    rainy_dir: Path, derained_dir: Path, clean_by_stem: dict[str, np.ndarray], compare_dir: Path
) -> list[tuple[str, float, float]]:
    """``(stem, PSNR rainy, PSNR derained)`` per clip against its clean frames, and a
    rainy | derained | clean PNG of its middle frame in ``compare_dir``."""
    from skimage import io

    from j4r.metrics import psnr

    compare_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for stem, clean in clean_by_stem.items():
        rainy = read_all(rainy_dir / f"{stem}.mp4")
        derained = read_all(derained_dir / f"{stem}.mp4")
        rows.append(
            (stem, psnr(rainy, clean, data_range=255), psnr(derained, clean, data_range=255))
        )
        middle = len(clean) // 2
        panel = np.concatenate([rainy[middle], derained[middle], clean[middle]], axis=1)
        io.imsave(compare_dir / f"{stem}.png", panel, check_contrast=False)
    return rows

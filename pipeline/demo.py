"""``derain demo``: the one-command quick start on synthetic rain over held-out footage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pipeline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipeline.video import EncodeOptions, VideoWriter, read_chunks

DEMO_CLIPS = (("bikes.mp4#0", "light"), ("china.jpg#0", "heavy"), ("flower.jpg#1", "light"))


def write_clip(path: Path, frames_tchw, fps: int = 25) -> None:
    frames_thwc_u8 = (frames_tchw.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()
    _, h, w, _ = frames_thwc_u8.shape
    with VideoWriter(path, fps=fps, width=w, height=h, options=EncodeOptions(crf=10)) as writer:
        writer.write(frames_thwc_u8)
        writer.commit()


def read_all(path: Path) -> np.ndarray:
    return np.concatenate(list(read_chunks(path)))


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255.0**2
    return float(10 * np.log10(1 / max(mse, 1e-12)))


def demo_command(args: argparse.Namespace) -> int:
    from skimage import io

    from j4r.evaluate import build_eval_set
    from j4r.sources import MissingContentError
    from pipeline.derain import DerainStage

    out: Path = args.out
    try:
        sets = {p: build_eval_set(p, frames=args.frames, crop=256) for p in ("light", "heavy")}
    except MissingContentError as exc:
        print(f"derain demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stage = DerainStage(args.checkpoint)
    stage.setup()
    print(f"derain demo: {stage.info.name} {stage.info.version} on {stage.device}")
    print(f"{'clip':<24} {'rain':<6} {'PSNR rainy':>10} {'PSNR derained':>14} {'frames/s':>9}")
    failures = 0
    for name, preset in DEMO_CLIPS:
        clip = next(c for c in sets[preset] if c.name == name)
        stem = f"{name.replace('#', '-').replace('.', '_')}-{preset}"
        rainy_path = out / "rainy" / f"{stem}.mp4"
        write_clip(rainy_path, clip.rainy)
        result = stage.process(rainy_path, out / "derained" / f"{stem}.mp4")
        rainy, derained = read_all(rainy_path), read_all(Path(result.output))
        clean = (clip.clean.permute(0, 2, 3, 1) * 255).round().byte().numpy()
        before, after = psnr_u8(rainy, clean), psnr_u8(derained, clean)
        failures += len(derained) != len(rainy)
        print(
            f"{name:<24} {preset:<6} {before:>10.2f} {after:>14.2f} "
            f"{result.frames / result.seconds:>9.1f}"
        )
        middle = len(clean) // 2
        panel = np.concatenate([rainy[middle], derained[middle], clean[middle]], axis=1)
        (out / "compare").mkdir(parents=True, exist_ok=True)
        io.imsave(out / "compare" / f"{stem}.png", panel, check_contrast=False)
    print(
        f"derain demo: videos in {out / 'derained'}, rainy | derained | clean PNGs in "
        f"{out / 'compare'}"
    )
    return EXIT_FAILED if failures else EXIT_OK

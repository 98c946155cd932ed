"""``derain demo``: the one-command quick start on synthetic rain over held-out footage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pipeline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipeline.video import read_chunks, write_frames

DEMO_CLIPS = (("bikes.mp4#0", "light"), ("china.jpg#0", "heavy"), ("flower.jpg#1", "light"))


def write_clip(path: Path, frames_tchw) -> None:
    frames_thwc_u8 = (frames_tchw.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()
    write_frames(path, frames_thwc_u8, crf=10)


def read_all(path: Path) -> np.ndarray:
    return np.concatenate(list(read_chunks(path)))


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255.0**2
    return float(10 * np.log10(1 / max(mse, 1e-12)))


def demo_command(args: argparse.Namespace) -> int:
    from skimage import io

    from j4r.checkpoint import DEFAULT_CHECKPOINT, read_info
    from j4r.evaluate import build_eval_set
    from j4r.sources import MissingContentError
    from pipeline.archive import ArchiveJob, run_archive
    from pipeline.run_cli import make_runner

    out: Path = args.out
    try:
        sets = {p: build_eval_set(p, frames=args.frames, crop=192) for p in ("light", "heavy")}
    except MissingContentError as exc:
        print(f"derain demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    clean_by_stem = {}
    for name, preset in DEMO_CLIPS:
        clip = next(c for c in sets[preset] if c.name == name)
        stem = f"{name.replace('#', '-').replace('.', '_')}-{preset}"
        write_clip(out / "rainy" / f"{stem}.mp4", clip.rainy)
        clean_by_stem[stem] = (clip.clean.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    info = read_info(args.checkpoint or DEFAULT_CHECKPOINT)
    runner = make_runner(
        args, {"checkpoint": str(args.checkpoint) if args.checkpoint else None, "device": "auto"}
    )
    try:
        summary = run_archive(
            ArchiveJob(source=str(out / "rainy"), destination=str(out / "derained"), force=True),
            runner,
            model_name=info.name,
            model_version=info.version,
        )
    finally:
        runner.close()
    print(
        f"derain demo: {info.name} {info.version}; {summary.runner}; "
        f"{summary.frames} frames at {summary.frames_per_second:.1f} frames/s"
    )
    print(f"{'clip':<28} {'PSNR rainy':>10} {'PSNR derained':>14}")
    (out / "compare").mkdir(parents=True, exist_ok=True)
    for stem, clean in clean_by_stem.items():
        rainy = read_all(out / "rainy" / f"{stem}.mp4")
        derained = read_all(out / "derained" / f"{stem}.mp4")
        print(f"{stem:<28} {psnr_u8(rainy, clean):>10.2f} {psnr_u8(derained, clean):>14.2f}")
        middle = len(clean) // 2
        panel = np.concatenate([rainy[middle], derained[middle], clean[middle]], axis=1)
        io.imsave(out / "compare" / f"{stem}.png", panel, check_contrast=False)
    print(
        f"derain demo: videos in {out / 'derained'}, manifests in {summary.manifest_url}, "
        f"rainy | derained | clean PNGs in {out / 'compare'}"
    )
    return EXIT_FAILED if summary.failed else EXIT_OK

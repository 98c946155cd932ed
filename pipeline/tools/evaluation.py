"""Scoring a checkpoint on the held-out test sets, and writing the record beside it.

Library of ``derain eval`` and of the ``train-j4r`` flow's evaluation step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def evaluate_checkpoint(
    checkpoint: Path,
    single_checkpoint: Path | None = None,
    *,
    frames: int,
    crop: int,
    sets: tuple[str, ...] | None = None,
    precision: str = "fp32",
    ablations: bool = False,
) -> tuple[dict[str, Any], str]:
    """Score ``checkpoint`` (and its stage-1 model) on the test sets: (record, Markdown table).

    ``single_checkpoint`` defaults to ``checkpoint/stage1`` when that exists. ``precision``
    (auto, fp32, bf16; resolved for the CPU) runs both networks under that autocast, as
    ``derain run`` does; the record says which one was used. ``ablations`` adds the network
    with its presence head and its gate switched off (:func:`j4r.evaluate.j4r_ablation_methods`).
    """
    from j4r.evaluate import SETS, evaluate, markdown_table
    from j4r.model import AtPrecision
    from j4r.precision import resolve_precision
    from pipeline.registry.checkpoints import load_model

    checkpoint = Path(checkpoint)
    single_path = single_checkpoint or (checkpoint / "stage1")
    resolved = resolve_precision(precision, "cpu")
    model, info = load_model(checkpoint)
    single = load_model(single_path)[0] if single_path.exists() else None
    if resolved != "fp32":
        model = AtPrecision(model, resolved)
        single = AtPrecision(single, resolved) if single is not None else None
    started = time.monotonic()
    results = evaluate(
        model, single, frames=frames, crop=crop, sets=sets or SETS, ablations=ablations
    )
    record = {
        "model": info.identity,
        "precision": resolved,
        "frames": frames,
        "crop": crop,
        "seconds": round(time.monotonic() - started, 1),
        "results": results,
    }
    return record, markdown_table(results)


def write_evaluation(record: dict[str, Any], table: str, out: Path) -> None:
    """``out/eval.json`` (the record) and ``out/eval.md`` (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "eval.md").write_text(table)


def parse_sets(text: str) -> tuple[str, ...]:
    """``"light,clean"`` -> ``("light", "clean")``; unknown names raise ValueError."""
    from j4r.evaluate import EXTRA_SETS, SETS

    known = SETS + EXTRA_SETS
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"unknown test sets {unknown or [text]}; choose from {', '.join(known)}")
    return names


def write_samples(checkpoint: Path, out: Path, *, frames: int = 24) -> list[Path]:
    """Before/after PNGs at full frame size: rain-free and rainy real footage through the model.

    ``bikes.mp4`` (640x272, held out) as is, with the project's heavy rain and with the
    foreign heavy rain; each PNG stacks input, output and 4x the absolute difference for the
    last of ``frames`` frames (the memory has seen the clip by then).
    """
    import numpy as np
    import torch
    from skimage import io

    from j4r.config import rain_config
    from j4r.evalsets.foreign_rain import add_foreign_rain
    from j4r.evaluate import EVAL_SEED, j4r_method
    from j4r.rain import add_rain
    from j4r.sources import evaluation_sources
    from pipeline.registry.checkpoints import load_model

    model, _ = load_model(Path(checkpoint))
    video = next(s for s in evaluation_sources() if s.name == "bikes.mp4").rgb[:frames]
    inputs = {
        "clean-bikes": video,
        "heavy-bikes": add_rain(video, rain_config("heavy"), seed=EVAL_SEED).rainy,
        "foreign-heavy-bikes": add_foreign_rain(video, "heavy", seed=EVAL_SEED),
    }
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, clip in inputs.items():
        derained, _ = j4r_method(model)(clip)
        last = -1
        diff = ((derained[last] - clip[last]).abs() * 4).clamp(0, 1)
        panel = torch.cat([clip[last], derained[last], diff], dim=1).permute(1, 2, 0)
        path = out / f"{name}.png"
        io.imsave(path, (panel.numpy() * 255).round().astype(np.uint8), check_contrast=False)
        written.append(path)
    return written


def luma_scores(record: dict[str, Any], method: str = "J4R-Net") -> dict[str, float]:
    """``{"light_psnr_y": dB, "light_ssim_y": ..., "heavy_...": ...}`` of one method."""
    return {
        f"{preset}_{metric}": methods[method][metric]
        for preset, methods in record["results"].items()
        for metric in ("psnr_y", "ssim_y")
    }

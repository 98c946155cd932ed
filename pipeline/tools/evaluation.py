"""Scoring a checkpoint on the Light and Heavy test sets, and writing the record beside it.

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
    precision: str = "fp32",
) -> tuple[dict[str, Any], str]:
    """Score ``checkpoint`` (and its stage-1 model) on both test sets: (record, Markdown table).

    ``single_checkpoint`` defaults to ``checkpoint/stage1`` when that exists. ``precision``
    (auto, fp32, bf16; resolved for the CPU) runs both networks under that autocast, as
    ``derain run`` does; the record says which one was used.
    """
    from j4r.evaluate import evaluate, markdown_table
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
    results = evaluate(model, single, frames=frames, crop=crop)
    record = {
        "model": {"name": info.name, "version": info.version, "sha256": info.sha256},
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


def luma_scores(record: dict[str, Any], method: str = "J4R-Net") -> dict[str, float]:
    """``{"light_psnr_y": dB, "light_ssim_y": ..., "heavy_...": ...}`` of one method."""
    return {
        f"{preset}_{metric}": methods[method][metric]
        for preset, methods in record["results"].items()
        for metric in ("psnr_y", "ssim_y")
    }

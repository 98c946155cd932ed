"""Deterministic Light and Heavy test sets from held-out content, and the comparison table.

Methods compared on the same rainy clips: the rainy input itself, a temporal median filter,
the single-frame model (stage 1 only) and J4R-Net. PSNR and SSIM are computed per frame on
RGB and on luma (Y) and averaged over all frames of all clips; α detection precision and
recall are reported on Heavy, the only set with occlusions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from j4r.arch import J4RNet
from j4r.color import rgb_to_luma, rgb_to_ycbcr, with_luma
from j4r.config import rain_config
from j4r.metrics import psnr, ssim
from j4r.motion import CameraPath, render_path
from j4r.rain import add_rain
from j4r.sources import CleanSource, evaluation_sources

EVAL_SEED = 20180618  # CVPR 2018 opening day: fixed forever so numbers stay comparable


@dataclass(frozen=True)
class EvalClip:
    """RGB clips ``(t, 3, h, w)`` in [0, 1] and the true occlusion map ``(t, 1, h, w)``."""

    name: str
    rainy: torch.Tensor
    clean: torch.Tensor
    alpha: torch.Tensor


def _clean_clips(
    sources: Sequence[CleanSource], frames: int, crop: int
) -> list[tuple[str, torch.Tensor]]:
    """Seven clean clips: two camera paths over each photo, windows of the real videos."""
    clips: list[tuple[str, torch.Tensor]] = []
    paths = (
        CameraPath(pan_px=(0.6, 1.4), zoom=0.002, rotate_deg=0.1, shake_px=0.2),
        CameraPath(pan_px=(-1.0, -0.5), zoom=-0.003, rotate_deg=-0.15, shake_px=0.3),
    )
    for source in sources:
        if not source.is_video:
            _, h, w = source.rgb.shape
            for i, path in enumerate(paths):
                centre = (h * (0.4 + 0.2 * i), w * (0.35 + 0.3 * i))
                clip = render_path(
                    source.rgb, path, frames=frames, height=crop, width=crop, centre_yx=centre
                )
                clips.append((f"{source.name}#{i}", clip))
        else:
            t, _, h, w = source.rgb.shape
            windows = 2 if h >= crop and w >= 2 * crop else 1
            for i in range(windows):
                start = min(t - frames, i * 40)
                size_h, size_w = min(crop, h), min(crop, w)
                top = (h - size_h) // 2
                left = (w - size_w) * (1 + 2 * i) // 4 if windows > 1 else (w - size_w) // 2
                clip = source.rgb[
                    start : start + frames, :, top : top + size_h, left : left + size_w
                ]
                clips.append((f"{source.name}#{i}", clip.contiguous()))
    return clips


def build_eval_set(preset: str, *, frames: int = 24, crop: int = 192) -> list[EvalClip]:
    """The ``light`` or ``heavy`` test set (same clean clips, rain seeded per clip)."""
    config = rain_config(preset)
    clips = []
    for index, (name, clean) in enumerate(_clean_clips(evaluation_sources(), frames, crop)):
        sample = add_rain(clean, config, seed=EVAL_SEED + 1000 * index + (preset == "heavy"))
        clips.append(EvalClip(name, sample.rainy, clean, sample.alpha))
    return clips


# A method maps a rainy RGB clip (t, 3, h, w) to (de-rained RGB, P(α = 1) (t, 1, h, w) or None).
Method = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def identity_method(rainy: torch.Tensor) -> tuple[torch.Tensor, None]:
    return rainy, None


def temporal_median(rainy: torch.Tensor, radius: int = 2) -> tuple[torch.Tensor, None]:
    """Median over a centred window of ``2 radius + 1`` frames (not causal: a baseline)."""
    t = rainy.shape[0]
    out = torch.empty_like(rainy)
    for i in range(t):
        lo, hi = max(0, i - radius), min(t, i + radius + 1)
        out[i] = rainy[lo:hi].median(dim=0).values
    return out, None


def single_frame_method(model: J4RNet) -> Method:
    @torch.inference_mode()
    def run(rainy: torch.Tensor) -> tuple[torch.Tensor, None]:
        ycbcr = rgb_to_ycbcr(rainy)
        background, _ = model.single_frame(ycbcr[:, :1])
        return with_luma(ycbcr, background.clamp(0, 1)), None

    return run


def j4r_method(model: J4RNet) -> Method:
    @torch.inference_mode()
    def run(rainy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ycbcr = rgb_to_ycbcr(rainy)
        out, _ = model(ycbcr[None, :, :1])
        background = out.background[0].clamp(0, 1)
        alpha = torch.softmax(out.alpha_logits[0], dim=1)[:, 1:]
        return with_luma(ycbcr, background), alpha

    return run


def score(method: Method, clips: list[EvalClip]) -> dict[str, float]:
    rows: dict[str, list[float]] = {"psnr_rgb": [], "ssim_rgb": [], "psnr_y": [], "ssim_y": []}
    true_pos = pred_pos = real_pos = 0.0
    have_alpha = False
    for clip in clips:
        derained, alpha_prob = method(clip.rainy)
        for t in range(clip.clean.shape[0]):
            pred, clean = derained[t], clip.clean[t]
            rows["psnr_rgb"].append(psnr(pred, clean))
            rows["ssim_rgb"].append(ssim(pred, clean))
            rows["psnr_y"].append(psnr(rgb_to_luma(pred), rgb_to_luma(clean)))
            rows["ssim_y"].append(ssim(rgb_to_luma(pred), rgb_to_luma(clean)))
        if alpha_prob is not None:
            have_alpha = True
            predicted = alpha_prob > 0.5
            actual = clip.alpha > 0.5
            true_pos += float((predicted & actual).sum())
            pred_pos += float(predicted.sum())
            real_pos += float(actual.sum())
    result = {k: float(np.mean(v)) for k, v in rows.items()}
    if have_alpha and real_pos > 0:
        result["alpha_precision"] = true_pos / pred_pos if pred_pos else 0.0
        result["alpha_recall"] = true_pos / real_pos
    return result


def evaluate(j4r: J4RNet, single: J4RNet | None, *, frames: int = 24, crop: int = 192) -> dict:
    """Scores of every method on both sets: ``{set: {method: {metric: value}}}``."""
    methods: dict[str, Method] = {
        "rainy input": identity_method,
        "temporal median": temporal_median,
    }
    if single is not None:
        methods["single-frame (stage 1)"] = single_frame_method(single)
    methods["J4R-Net"] = j4r_method(j4r)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for preset in ("light", "heavy"):
        clips = build_eval_set(preset, frames=frames, crop=crop)
        results[preset] = {name: score(method, clips) for name, method in methods.items()}
    return results


def markdown_table(results: dict) -> str:
    lines = [
        "| set | method | PSNR RGB | SSIM RGB | PSNR Y | SSIM Y | α precision | α recall |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for preset, methods in results.items():
        for name, m in methods.items():
            alpha = (
                (f"{m['alpha_precision']:.3f}", f"{m['alpha_recall']:.3f}")
                if "alpha_precision" in m and preset == "heavy"
                else ("", "")
            )
            lines.append(
                f"| {preset} | {name} | {m['psnr_rgb']:.2f} | {m['ssim_rgb']:.4f} | "
                f"{m['psnr_y']:.2f} | {m['ssim_y']:.4f} | {alpha[0]} | {alpha[1]} |"
            )
    return "\n".join(lines) + "\n"

"""Deterministic test sets from held-out content, and the comparison table.

Sets (all from evaluation content only, never used in training):

* ``light`` / ``heavy``: the project's own rain renderer (:mod:`j4r.rain`) over seven clips;
* ``foreign-light`` / ``foreign-heavy``: rain from the evaluation-only renderer
  (:mod:`j4r.evalsets.foreign_rain`, a different style) over the same seven clips and five
  drawn provoking scenes: the generalisation numbers;
* ``clean``: rain-free provoking clips (:mod:`j4r.evalsets.clean_scenes`); the output is
  scored against the input ("does no harm").

Methods compared on the same clips: the rainy input itself, a temporal median filter, the
single-frame model (stage 1 only) and J4R-Net. PSNR and SSIM are computed per frame on RGB and
on luma (Y); each set reports the mean over all frames, the worst clip, and (rainy sets) the
luma gain over the input, mean and worst clip; α detection precision and recall where the set
has occlusions (``heavy``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from j4r.arch import J4RNet
from j4r.color import rgb_to_luma, rgb_to_ycbcr, with_luma
from j4r.config import rain_config
from j4r.metrics import mse, psnr, psnr_from_mse, ssim
from j4r.motion import CameraPath, render_path
from j4r.rain import add_rain, fainter
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


# The ``faint`` set: the light set's streaks, same places, at this share of their strength
# (input about 30 dB where light is 24.5). Rain this faint is where the network starts to leave
# rain as it came (round 15 in the model card), and it is common in real footage.
FAINT_STRENGTH = 0.5


def build_eval_set(preset: str, *, frames: int = 24, crop: int = 192) -> list[EvalClip]:
    """The ``light``, ``heavy`` or ``faint`` test set (same clean clips, rain seeded per clip;
    ``faint`` is ``light`` with every streak at :data:`FAINT_STRENGTH` of its strength)."""
    if preset == "faint":
        config = dataclasses.replace(fainter(rain_config("light"), FAINT_STRENGTH), name="faint")
    else:
        config = rain_config(preset)
    clips = []
    for index, (name, clean) in enumerate(_clean_clips(evaluation_sources(), frames, crop)):
        sample = add_rain(clean, config, seed=EVAL_SEED + 1000 * index + (preset == "heavy"))
        clips.append(EvalClip(name, sample.rainy, clean, sample.alpha))
    return clips


# A method maps a rainy RGB clip (t, 3, h, w) to (de-rained RGB, P(α = 1) (t, 1, h, w) or None).
# rainy RGB (t, 3, h, w) -> derained RGB, P(α = 1) per pixel (t, 1, h, w) or None.
Method = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class J4RRun(tuple):
    """What :func:`j4r_method` returns: unpacks as ``(derained, alpha)`` like every method,
    and also carries the network's per-frame P(rain) ``(t,)`` as ``.rain``."""

    rain: torch.Tensor


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


def _run_network(model: J4RNet, rainy: torch.Tensor):
    """The network over a rainy RGB clip's luma: ``(YCbCr clip, outputs, P(α = 1))``."""
    ycbcr = rgb_to_ycbcr(rainy)
    out, _ = model(ycbcr[None, :, :1])
    alpha = torch.softmax(out.alpha_logits[0].float(), dim=1)[:, 1:]
    return ycbcr, out, alpha


def j4r_method(model: J4RNet) -> Method:
    @torch.inference_mode()
    def run(rainy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ycbcr, out, alpha = _run_network(model, rainy)
        background = out.background[0].clamp(0, 1)
        result = J4RRun((with_luma(ycbcr, background, chroma_fill=model.chroma_fill), alpha))
        result.rain = torch.sigmoid(out.presence_logits[0, :, 0].float())
        return result

    return run


def j4r_ablation_methods(model: J4RNet) -> dict[str, Method]:
    """The same network with a part switched off, to tell where a loss comes from.

    ``presence off``: every frame gets the whole local change (``B̂_local``), as if the
    presence head judged it rainy; ``gate open``: the joint estimate ``B̃`` itself, every
    pixel changed (recovered from ``B̂_local = O + σ(g)(B̃ − O)``); ``R-Net only``: the
    streak subtraction ``O − Ŝ`` alone, before JRC-Net joins in C-Net's fill from memory. If
    even ``gate open`` gains little on a set, the removal itself (the trunk) fails there, not
    the decisions about where and when to apply it; if ``R-Net only`` gains more than ``gate
    open``, the joint stage loses what R-Net removed.
    """

    def variant(part: str) -> Method:
        @torch.inference_mode()
        def run(rainy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            ycbcr, out, alpha = _run_network(model, rainy)
            luma = ycbcr[:, :1]
            local = out.local_background[0].float()
            if part == "gate open":  # σ(g) under 1e-4 leaves B̃ unknowable there: keep the input
                share = torch.sigmoid(out.gate_logits[0].float())
                local = torch.where(share > 1e-4, luma + (local - luma) / share, luma)
            elif part == "R-Net only":
                local = luma - out.streaks[0].float()
            return with_luma(ycbcr, local.clamp(0, 1), chroma_fill=model.chroma_fill), alpha

        return run

    parts = ("presence off", "gate open", "R-Net only")
    return {f"J4R-Net, {part}": variant(part) for part in parts}


SETS = ("light", "heavy", "foreign-light", "foreign-heavy", "clean")
# Scored only when asked for (``derain eval --sets faint``): not in the shipped table.
EXTRA_SETS = ("faint",)
# Sets whose reference is the input itself: the score says how much the method changed it.
NO_HARM_SETS = ("clean",)


def build_foreign_set(preset: str, *, frames: int = 24, crop: int = 192) -> list[EvalClip]:
    """Rain from the evaluation-only renderer over the seven standard clips and the five
    drawn provoking scenes (poles, fence, night windows, sign, crossing traffic)."""
    from j4r.evalsets.clean_scenes import clean_clips
    from j4r.evalsets.foreign_rain import add_foreign_rain

    sources = evaluation_sources()
    scenes = [c for c in clean_clips(sources, frames=frames, crop=crop) if "real" not in c[0]]
    clips = []
    for index, (name, clean) in enumerate(_clean_clips(sources, frames, crop) + scenes):
        rainy = add_foreign_rain(clean, preset, seed=EVAL_SEED + 7919 * index + len(preset))
        clips.append(EvalClip(name, rainy, clean, torch.zeros_like(clean[:, :1])))
    return clips


def build_clean_set(*, frames: int = 24, crop: int = 192) -> list[EvalClip]:
    """Rain-free provoking clips; the method's output is scored against its own input."""
    from j4r.evalsets.clean_scenes import clean_clips

    return [
        EvalClip(name, clip, clip, torch.zeros_like(clip[:, :1]))
        for name, clip in clean_clips(evaluation_sources(), frames=frames, crop=crop)
    ]


def build_set(name: str, *, frames: int = 24, crop: int = 192) -> list[EvalClip]:
    if name in ("light", "heavy", "faint"):
        return build_eval_set(name, frames=frames, crop=crop)
    if name.startswith("foreign-"):
        return build_foreign_set(name.removeprefix("foreign-"), frames=frames, crop=crop)
    if name == "clean":
        return build_clean_set(frames=frames, crop=crop)
    known = ", ".join(SETS + EXTRA_SETS)
    raise ValueError(f"unknown evaluation set {name!r}; choose from {known}")


# A frame whose output differs from the reference by less than this MSE is unchanged: far
# under one 8-bit step (1 / 255² ≈ 1.5e-5), only float round-off of the colour conversion.
UNCHANGED_MSE = 1e-10


def pooled_psnr(frame_mses: list[float]) -> float:
    """PSNR of a clip's mean squared error over all its frames (not the mean of per-frame
    PSNRs, which frames identical to the reference, at 120 dB each, would inflate)."""
    return psnr_from_mse(float(np.mean(frame_mses)))


def score(method: Method, clips: list[EvalClip]) -> dict:
    """Mean over every frame of every clip, plus per-clip means (``clips``) and the worst clip.

    Also the clip's PSNR from its pooled MSE (``pooled_psnr_rgb``, its worst clip and all
    frames pooled) and the share of frames left unchanged (``unchanged_frames``: what
    counts on a set whose reference is the input)."""
    rows: dict[str, list[float]] = {"psnr_rgb": [], "ssim_rgb": [], "psnr_y": [], "ssim_y": []}
    frame_mses: list[float] = []
    per_clip: dict[str, dict[str, float]] = {}
    true_pos = pred_pos = real_pos = 0.0
    have_alpha = False
    rain: list[float] = []
    for clip in clips:
        ran = method(clip.rainy)
        derained, alpha_prob = ran
        if isinstance(ran, J4RRun):
            rain += ran.rain.tolist()
        first = len(rows["psnr_rgb"])
        for t in range(clip.clean.shape[0]):
            pred, clean = derained[t], clip.clean[t]
            frame_mses.append(mse(pred, clean))
            rows["psnr_rgb"].append(psnr_from_mse(frame_mses[-1]))  # not a second pass
            rows["ssim_rgb"].append(ssim(pred, clean))
            rows["psnr_y"].append(psnr(rgb_to_luma(pred), rgb_to_luma(clean)))
            rows["ssim_y"].append(ssim(rgb_to_luma(pred), rgb_to_luma(clean)))
        per_clip[clip.name] = {k: float(np.mean(v[first:])) for k, v in rows.items()}
        per_clip[clip.name]["pooled_psnr_rgb"] = pooled_psnr(frame_mses[first:])
        if isinstance(ran, J4RRun):
            per_clip[clip.name]["rain_probability"] = float(ran.rain.mean())
        if alpha_prob is not None:
            have_alpha = True
            predicted = alpha_prob > 0.5
            actual = clip.alpha > 0.5
            true_pos += float((predicted & actual).sum())
            pred_pos += float(predicted.sum())
            real_pos += float(actual.sum())
    result: dict = {k: float(np.mean(v)) for k, v in rows.items()}
    worst = min(per_clip, key=lambda name: per_clip[name]["psnr_rgb"])
    result["worst_clip"] = worst
    result["worst_psnr_rgb"] = per_clip[worst]["psnr_rgb"]
    result["pooled_psnr_rgb"] = pooled_psnr(frame_mses)
    result["worst_pooled_psnr_rgb"] = min(c["pooled_psnr_rgb"] for c in per_clip.values())
    result["unchanged_frames"] = float(np.mean(np.asarray(frame_mses) < UNCHANGED_MSE))
    result["clips"] = per_clip
    if rain:  # the network's verdict: frames it judged rainy (presence head; 1 without one)
        result["rain_probability"] = float(np.mean(rain))
        result["rainy_frames"] = float(np.mean(np.asarray(rain) > 0.5))
    if have_alpha and real_pos > 0:
        result["alpha_precision"] = true_pos / pred_pos if pred_pos else 0.0
        result["alpha_recall"] = true_pos / real_pos
    return result


def add_gains(methods: dict[str, dict]) -> None:
    """Per method: luma PSNR gain over the rainy input, mean and worst clip (in place)."""
    reference = methods.get("rainy input")
    if reference is None:
        return
    for name, m in methods.items():
        if name == "rainy input":
            continue
        gains = {
            clip: m["clips"][clip]["psnr_y"] - reference["clips"][clip]["psnr_y"]
            for clip in m["clips"]
        }
        m["gain_y"] = m["psnr_y"] - reference["psnr_y"]
        m["worst_gain_clip"] = min(gains, key=gains.get)
        m["worst_gain_y"] = gains[m["worst_gain_clip"]]


def evaluate(
    j4r: J4RNet,
    single: J4RNet | None,
    *,
    frames: int = 24,
    crop: int = 192,
    sets: tuple[str, ...] = SETS,
    ablations: bool = False,
) -> dict:
    """Scores of every method on every set: ``{set: {method: {metric: value}}}``.

    ``ablations`` adds :func:`j4r_ablation_methods` (three more runs of the network per clip).

    ``clean`` scores the output against the input (no rain: the ideal output is the input),
    so "rainy input" is left out there; the other sets also get gains over the input.
    """
    methods: dict[str, Method] = {
        "rainy input": identity_method,
        "temporal median": temporal_median,
    }
    if single is not None:
        methods["single-frame (stage 1)"] = single_frame_method(single)
    methods["J4R-Net"] = j4r_method(j4r)
    if ablations:
        methods.update(j4r_ablation_methods(j4r))
    results: dict[str, dict[str, dict]] = {}
    for name in sets:
        clips = build_set(name, frames=frames, crop=crop)
        chosen = {
            k: v for k, v in methods.items() if not (name in NO_HARM_SETS and k == "rainy input")
        }
        results[name] = {k: score(method, clips) for k, method in chosen.items()}
        add_gains(results[name])
    return results


def markdown_table(results: dict) -> str:
    """One row per set and method; ``clean`` rows compare the output with the input."""
    lines = [
        "| set | method | PSNR RGB | SSIM RGB | PSNR Y | SSIM Y | worst clip PSNR RGB "
        "| gain Y (mean / worst clip) | α precision | α recall | frames judged rainy "
        "| pooled PSNR RGB (all / worst clip) | frames unchanged |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for preset, methods in results.items():
        for name, m in methods.items():
            alpha = (
                (f"{m['alpha_precision']:.3f}", f"{m['alpha_recall']:.3f}")
                if "alpha_precision" in m
                else ("", "")
            )
            worst = f"{m['worst_psnr_rgb']:.2f}" if "worst_psnr_rgb" in m else ""
            gain = f"{m['gain_y']:+.2f} / {m['worst_gain_y']:+.2f}" if "gain_y" in m else ""
            judged = f"{m['rainy_frames']:.0%}" if "rainy_frames" in m else ""
            pooled = (
                f"{m['pooled_psnr_rgb']:.2f} / {m['worst_pooled_psnr_rgb']:.2f}"
                if "pooled_psnr_rgb" in m
                else ""
            )
            unchanged = (
                f"{m['unchanged_frames']:.0%}"
                if preset in NO_HARM_SETS and "unchanged_frames" in m
                else ""
            )
            lines.append(
                f"| {preset} | {name} | {m['psnr_rgb']:.2f} | {m['ssim_rgb']:.4f} | "
                f"{m['psnr_y']:.2f} | {m['ssim_y']:.4f} | {worst} | {gain} | "
                f"{alpha[0]} | {alpha[1]} | {judged} | {pooled} | {unchanged} |"
            )
    return "\n".join(lines) + "\n"

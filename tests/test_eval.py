"""Evaluation sets and the comparison table; a quality floor for the shipped checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from j4r.config import net_config
from j4r.evaluate import build_eval_set, evaluate, markdown_table, psnr
from j4r.model import build_model


@pytest.fixture(scope="module")
def small_sets():
    return {p: build_eval_set(p, frames=4, crop=64) for p in ("light", "heavy")}


def test_sets_are_deterministic_held_out_and_calibrated(small_sets):
    again = build_eval_set("heavy", frames=4, crop=64)
    for a, b in zip(small_sets["heavy"], again, strict=True):
        torch.testing.assert_close(a.rainy, b.rainy, rtol=0, atol=0)
    names = {c.name.split("#")[0] for c in small_sets["light"]}
    assert names == {"china.jpg", "flower.jpg", "bikes.mp4", "carphone_pristine.mp4"}
    assert all(c.alpha.sum() == 0 for c in small_sets["light"])
    assert all(c.alpha.sum() > 0 for c in small_sets["heavy"])
    light = sum(psnr(c.rainy, c.clean) for c in small_sets["light"]) / len(small_sets["light"])
    heavy = sum(psnr(c.rainy, c.clean) for c in small_sets["heavy"]) / len(small_sets["heavy"])
    assert 21.5 < light < 27.5 and 12.5 < heavy < 17.5, (light, heavy)


def test_table_has_every_method_and_the_input_row_is_the_input(small_sets):
    torch.manual_seed(0)
    tiny = build_model(net_config("tiny")).eval()
    results = evaluate(tiny, tiny, frames=4, crop=64, sets=("light", "heavy"))
    assert set(results) == {"light", "heavy"}
    methods = {"rainy input", "temporal median", "single-frame (stage 1)", "J4R-Net"}
    assert set(results["light"]) == methods
    clips = small_sets["light"]
    per_frame = [psnr(c.rainy[t], c.clean[t]) for c in clips for t in range(4)]
    assert results["light"]["rainy input"]["psnr_rgb"] == pytest.approx(
        sum(per_frame) / len(per_frame)
    )
    assert "alpha_recall" in results["heavy"]["J4R-Net"]
    table = markdown_table(results)
    assert table.count("\n") == 2 + 2 * len(methods)


@pytest.mark.slow
def test_shipped_checkpoint_removes_rain():
    """A floor well under the measured gains (see the model card): catches a broken model."""
    from j4r.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

    model, _ = load_checkpoint()
    single, _ = load_checkpoint(DEFAULT_CHECKPOINT / "stage1")
    results = evaluate(model, single, frames=8, crop=96, sets=("light", "heavy"))
    for preset in ("light", "heavy"):
        gain = results[preset]["J4R-Net"]["psnr_y"] - results[preset]["rainy input"]["psnr_y"]
        assert gain > 4.0, (preset, gain)
    # Occluded pixels are ~2 % of the frame: a D-Net that learned nothing scores ~0.02 precision.
    assert results["heavy"]["J4R-Net"]["alpha_precision"] > 0.2
    assert results["heavy"]["J4R-Net"]["alpha_recall"] > 0.05
    # The recurrent path earns its keep on heavy rain.
    heavy = results["heavy"]
    assert heavy["J4R-Net"]["psnr_y"] > heavy["single-frame (stage 1)"]["psnr_y"] + 0.5


@pytest.mark.slow
def test_shipped_checkpoint_does_less_harm_than_its_predecessor():
    """Floors under the measured figures at this size (2026.12.07.3 and 2026.12.07.2: 94.8 dB
    clean mean, 54.7 worst clip, +1.00 dB foreign-light gain; 2026.12.07: 105.7 / 64.2 /
    +0.80; 2026.12.04: 49.5 / 34.3 / +1.02; 2026.12.03: 41.7 / 30.2 / +0.47; 2026.12.02: 33.2
    / 26.8 / +0.58; 2026.12.01: 30.8 / 27.0 / +0.67; 2026.11.30: 22.8 / 16.7 / -2.45)."""
    from j4r.checkpoint import load_checkpoint

    model, _ = load_checkpoint()
    results = evaluate(model, None, frames=8, crop=96, sets=("clean", "foreign-light"))
    clean = results["clean"]["J4R-Net"]
    assert clean["psnr_rgb"] > 90.0 and clean["worst_psnr_rgb"] > 50.0, clean["clips"]
    assert results["foreign-light"]["J4R-Net"]["gain_y"] > 0.5


def test_pooled_psnr_and_unchanged_frames_are_not_inflated_by_identical_frames():
    """Three frames returned exactly and one changed: the mean of per-frame PSNRs is ~94 dB
    (three at the 120 dB cap), the clip's pooled PSNR is what the changed frame costs."""
    from j4r.evaluate import EvalClip, score

    clean = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    clip = EvalClip("c", clean, clean, torch.zeros(4, 1, 16, 16))

    def changes_one_frame(rainy):
        out = rainy.clone()
        out[2] = (out[2] + 0.01).clamp(0, 1)
        return out, None

    result = score(changes_one_frame, [clip])
    one_frame = psnr(changes_one_frame(clean)[0][2], clean[2])
    assert result["psnr_rgb"] == pytest.approx((3 * 120 + one_frame) / 4)
    assert result["pooled_psnr_rgb"] == pytest.approx(one_frame + 10 * math.log10(4))
    assert result["worst_pooled_psnr_rgb"] == result["pooled_psnr_rgb"]
    assert result["unchanged_frames"] == 0.75


def _share_apart(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() > 1e-4).float().mean())


def test_ablations_switch_off_the_presence_head_and_the_gate_and_nothing_else(small_sets):
    from j4r.checkpoint import load_checkpoint
    from j4r.color import rgb_to_ycbcr
    from j4r.evaluate import j4r_ablation_methods, j4r_method

    # Grey, so that going back to RGB clips nothing the luma does not clip.
    rainy = small_sets["light"][0].rainy.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    # A network without gate or presence head: the ablations are the network itself.
    torch.manual_seed(0)
    tiny = build_model(net_config("tiny")).eval()
    plain = j4r_method(tiny)(rainy)[0]
    tiny_ablated = j4r_ablation_methods(tiny)
    for name in ("J4R-Net, presence off", "J4R-Net, gate open"):
        torch.testing.assert_close(tiny_ablated[name](rainy)[0], plain, rtol=0, atol=1e-6)
    # The shipped network has both: "presence off" is B̂_local, and "gate open" is the B̃
    # that the gate scales back into B̂_local.
    model, _ = load_checkpoint()
    luma = rgb_to_ycbcr(rainy)[:, :1]
    with torch.inference_mode():
        out, _ = model(luma[None])
    ablated = j4r_ablation_methods(model)
    local = rgb_to_ycbcr(ablated["J4R-Net, presence off"](rainy)[0])[:, :1]
    assert _share_apart(local, out.local_background[0].clamp(0, 1)) < 1e-3
    tilde = rgb_to_ycbcr(ablated["J4R-Net, gate open"](rainy)[0])[:, :1]
    share = torch.sigmoid(out.gate_logits[0])
    inside = (tilde > 1e-3) & (tilde < 1 - 1e-3)  # B̃ not clamped there
    recomposed = luma + share * (tilde - luma)
    assert _share_apart(recomposed[inside], out.local_background[0][inside]) < 1e-3
    assert (tilde - luma).abs().mean() > (local - luma).abs().mean()  # the gate holds back
    # "R-Net only" is O − Ŝ: the streaks subtracted, nothing of the joint stage.
    rnet = rgb_to_ycbcr(ablated["J4R-Net, R-Net only"](rainy)[0])[:, :1]
    assert _share_apart(rnet, (luma - out.streaks[0]).clamp(0, 1)) < 1e-3
    assert _share_apart(rnet, local) > 0.1


def test_eval_with_ablations_adds_three_rows():
    torch.manual_seed(0)
    tiny = build_model(net_config("tiny")).eval()
    results = evaluate(tiny, None, frames=3, crop=48, sets=("light",), ablations=True)
    ablated = {"J4R-Net, presence off", "J4R-Net, gate open", "J4R-Net, R-Net only"}
    assert ablated <= set(results["light"])
    assert "gain_y" in results["light"]["J4R-Net, gate open"]


def test_the_faint_set_is_the_light_sets_streaks_at_half_strength():
    from j4r.evaluate import FAINT_STRENGTH, build_set

    light = build_eval_set("light", frames=3, crop=48)
    faint = build_set("faint", frames=3, crop=48)
    assert [c.name for c in faint] == [c.name for c in light]
    for a, b in zip(light, faint, strict=True):
        assert torch.equal(a.clean, b.clean)
        rain, half = a.rainy - a.clean, b.rainy - b.clean
        assert half.abs().sum() > 0
        # Same streaks in the same places, at half the strength (up to clipping at white).
        unclipped = (a.rainy < 0.999).all(dim=1, keepdim=True).expand_as(rain)
        assert torch.allclose(half[unclipped], FAINT_STRENGTH * rain[unclipped], atol=2e-3)


def test_faint_is_scored_only_when_named():
    from j4r.evaluate import SETS
    from pipeline.tools.evaluation import parse_sets

    assert "faint" not in SETS
    assert parse_sets("faint,light") == ("faint", "light")
    with pytest.raises(ValueError, match="faint"):
        parse_sets("drizzle")

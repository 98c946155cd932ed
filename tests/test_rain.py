"""Hybrid rain synthesis: the model equation, presets, calibration, determinism, density."""

from __future__ import annotations

import math

import pytest
import torch

from j4r.config import rain_config
from j4r.rain import add_rain, render_rain
from j4r.sources import package_dir, read_image_rgb


@pytest.fixture(scope="module")
def photo():
    """A natural photo from scikit-image (training content, fine for synthesis tests)."""
    return read_image_rgb(package_dir("skimage") / "data" / "coffee.png")


def psnr(a, b):
    return 10 * math.log10(1 / float(((a - b) ** 2).mean()))


def test_hybrid_model_equation_holds(photo):
    clean = photo[None, :, :128, :128].repeat(3, 1, 1, 1)
    sample = add_rain(clean, rain_config("heavy"), seed=3)
    occluded = sample.alpha.bool().expand_as(clean)
    # α = 1: the background is hidden, O = A.
    torch.testing.assert_close(sample.rainy[occluded], sample.reliance.expand_as(clean)[occluded])
    # α = 0: O = B + S (S is the effective, clipped streak layer; grey rain adds equally).
    visible = ~occluded
    unclipped = visible & (sample.rainy < 0.999).all(dim=1, keepdim=True)
    diff = (sample.rainy - clean)[unclipped]
    torch.testing.assert_close(diff, sample.streaks.expand_as(clean)[unclipped], atol=1e-5, rtol=0)
    assert sample.alpha.unique().tolist() == [0.0, 1.0]


def test_light_has_no_occlusion_heavy_a_few_percent():
    _, alpha_light, _ = render_rain(rain_config("light"), frames=4, height=256, width=256, seed=1)
    _, alpha_heavy, reliance = render_rain(
        rain_config("heavy"), frames=4, height=256, width=256, seed=1
    )
    assert alpha_light.sum() == 0
    assert 0.01 < float(alpha_heavy.mean()) < 0.05
    assert float(reliance[alpha_heavy.bool()].mean()) > 0.7  # opaque drops are bright


def test_calibrated_like_the_paper_inputs(photo):
    """Light ≈ 24 dB, heavy ≈ 15 dB on natural content (RainSynLight25 / Complex25 inputs)."""
    clean = photo[None].repeat(4, 1, 1, 1)
    light = psnr(add_rain(clean, rain_config("light"), seed=0).rainy, clean)
    heavy = psnr(add_rain(clean, rain_config("heavy"), seed=0).rainy, clean)
    assert 22.0 < light < 27.0, light
    assert 12.5 < heavy < 17.5, heavy


def test_seeded_and_changing_every_frame():
    a = render_rain(rain_config("light"), frames=3, height=64, width=64, seed=5)[0]
    b = render_rain(rain_config("light"), frames=3, height=64, width=64, seed=5)[0]
    c = render_rain(rain_config("light"), frames=3, height=64, width=64, seed=6)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # drops fall: every frame has new rain


def test_density_is_per_area():
    """A 32 px patch gets the same rain per pixel as a full frame, not a frame's worth."""
    config = rain_config("heavy")
    small = render_rain(config, frames=400, height=32, width=32, seed=0)[0].mean()
    large = render_rain(config, frames=4, height=320, width=320, seed=0)[0].mean()
    assert 0.75 < float(small / large) < 1.33

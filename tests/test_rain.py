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


def test_photometric_streaks_blend_toward_the_refracted_light():
    """Additive streaks brighten every background alike; photometric ones bring it toward L,
    so over a background as bright as L they vanish and over black they add m·L."""
    import dataclasses

    config = dataclasses.replace(rain_config("light"), refracted_light=(0.8, 0.8))
    additive = add_rain(torch.zeros(2, 3, 64, 64), config, seed=4)
    photometric = dataclasses.replace(config, photometric=1.0)
    over_black = add_rain(torch.zeros(2, 3, 64, 64), photometric, seed=4)
    over_light = add_rain(torch.full((2, 3, 64, 64), 0.8), photometric, seed=4)
    torch.testing.assert_close(over_black.rainy, additive.rainy * 0.8, atol=1e-6, rtol=0)
    torch.testing.assert_close(over_light.rainy, torch.full_like(over_light.rainy, 0.8))
    assert over_light.streaks.abs().max() < 1e-6  # nothing to remove: the target says so
    half = add_rain(torch.zeros(2, 3, 64, 64), dataclasses.replace(config, photometric=0.5), seed=4)
    torch.testing.assert_close(half.rainy, additive.rainy * 0.9, atol=1e-6, rtol=0)


def test_randomised_rain_draws_photometric_styles_only_when_asked():
    """At probability 0 the random stream is that of earlier training rounds (reproducible)."""
    import numpy as np

    from j4r.rain import random_rain_config

    old, new = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(20):
        assert random_rain_config(old) == random_rain_config(new, photometric_probability=0.0)
    assert old.random() == new.random()
    drawn = [random_rain_config(new, photometric_probability=0.5) for _ in range(200)]
    share = sum(c.photometric > 0 for c in drawn) / len(drawn)
    assert 0.35 < share < 0.65
    assert all(0.5 <= c.photometric <= 1.0 for c in drawn if c.photometric)


def _frame_correlation(streaks):
    a, b = streaks[0].flatten(), streaks[1].flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_falling_drops_persist_across_frames_where_default_drops_do_not():
    import dataclasses

    from j4r.config import RainConfig

    still = dataclasses.replace(RainConfig(), angle_deg=(0.0, 0.0), angle_jitter_deg=0.0)
    independent, _, _ = render_rain(still, frames=2, height=96, width=96, seed=1)
    falling, _, _ = render_rain(
        dataclasses.replace(still, fall=0.05), frames=2, height=96, width=96, seed=1
    )
    assert abs(_frame_correlation(independent)) < 0.2
    assert _frame_correlation(falling) > 0.6  # the same drops, moved a twentieth of a length
    # The drops move down (vertical rain): frame 1 matches frame 0 shifted down, not up.
    down = torch.roll(falling[0], 1, dims=-2)
    up = torch.roll(falling[0], -1, dims=-2)
    assert ((falling[1] - down) ** 2).sum() < ((falling[1] - up) ** 2).sum()
    # Per frame, falling rain is as dense as independent rain (same density per 10k px).
    ratio = float(falling.sum() / independent.sum())
    assert 0.7 < ratio < 1.4


def test_flat_streaks_keep_their_strength_to_the_ends():
    import dataclasses

    from j4r.config import RainConfig

    one = dataclasses.replace(
        RainConfig(),
        layers=((1.0, (40.0, 40.0), 0.3, (0.5, 0.5)),),
        angle_deg=(0.0, 0.0),
        angle_jitter_deg=0.0,
    )
    tapered, _, _ = render_rain(one, frames=1, height=128, width=128, seed=2)
    flat, _, _ = render_rain(
        dataclasses.replace(one, flat_ends=True), frames=1, height=128, width=128, seed=2
    )
    assert float(flat.max()) == pytest.approx(float(tapered.max()), abs=0.02)
    # A taper loses about a fifth of a streak's mass to its soft ends; a flat streak none.
    assert float(flat.sum()) > 1.15 * float(tapered.sum())


def test_downpour_covers_most_of_the_frame_and_is_drawn_only_when_asked():
    import dataclasses

    import numpy as np

    from j4r.rain import random_rain_config

    def coverage(config, seed):
        bare = dataclasses.replace(config, veil=0.0, lens_drops=0.0, occlusion=0.0, sparkle=0.0)
        streaks, _, _ = render_rain(bare, frames=1, height=128, width=128, seed=seed)
        return float((streaks > 0.02).float().mean())

    old, new = np.random.default_rng(3), np.random.default_rng(3)
    plain = [random_rain_config(old, photometric_probability=0.5) for _ in range(40)]
    asked_none = [
        random_rain_config(
            new, photometric_probability=0.5, falling_probability=0.0, downpour_probability=0.0
        )
        for _ in range(40)
    ]
    assert plain == asked_none  # earlier rounds' clips stay reproducible
    rng = np.random.default_rng(4)
    downpours = [random_rain_config(rng, downpour_probability=1.0) for _ in range(30)]
    assert all(c.name == "downpour" for c in downpours)
    usual = [coverage(c, i) for i, c in enumerate(plain[:30])]
    heavy = [coverage(c, i) for i, c in enumerate(downpours)]
    assert np.median(heavy) > 0.6 > np.percentile(usual, 90)
    falling = [random_rain_config(rng, falling_probability=0.5) for _ in range(200)]
    share = sum(c.fall > 0 for c in falling) / len(falling)
    assert 0.35 < share < 0.65


def test_faint_rain_is_the_same_streaks_fainter_and_drawn_only_when_asked():
    import numpy as np

    from j4r.rain import fainter, random_rain_config

    light = rain_config("light")
    full, _, _ = render_rain(light, frames=2, height=64, width=64, seed=5)
    half, _, _ = render_rain(fainter(light, 0.5), frames=2, height=64, width=64, seed=5)
    assert torch.allclose(half, full * 0.5, atol=1e-6)  # same drops, same places
    assert float(full.abs().sum()) > 0
    old, new = np.random.default_rng(8), np.random.default_rng(8)
    kwargs = dict(photometric_probability=0.5, downpour_probability=0.25)
    plain = [random_rain_config(old, **kwargs) for _ in range(40)]
    assert plain == [random_rain_config(new, **kwargs, faint_probability=0.0) for _ in range(40)]
    rng = np.random.default_rng(9)
    faint = [random_rain_config(rng, **kwargs, faint_probability=1.0) for _ in range(40)]
    ceiling = [max(hi for *_, (lo, hi) in c.layers) for c in faint]
    usual = [max(hi for *_, (lo, hi) in c.layers) for c in plain]
    assert np.median(ceiling) < 0.6 * np.median(usual)

"""Training batches: deterministic per step, camera motion is smooth, rain is the hybrid model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from j4r.config import ClipConfig
from j4r.data import ClipSampler
from j4r.motion import CameraPath, render_path
from j4r.rain import random_rain_config
from j4r.scenes import add_sprites, draw_structures
from j4r.sources import CleanSource, package_dir, read_image_rgb


@pytest.fixture(scope="module")
def sources():
    data = package_dir("skimage") / "data"
    return [CleanSource(n, read_image_rgb(data / n)) for n in ("brick.png", "coffee.png")]


@pytest.fixture(scope="module")
def sampler(sources):
    return ClipSampler(sources, ClipConfig())


def test_batches_are_a_function_of_seed_and_step(sampler):
    a = sampler.batch(seed=1, step=7, batch_size=3)
    b = sampler.batch(seed=1, step=7, batch_size=3)
    c = sampler.batch(seed=1, step=8, batch_size=3)
    torch.testing.assert_close(a.rainy, b.rainy, rtol=0, atol=0)
    assert not torch.equal(a.rainy, c.rainy)
    config = ClipConfig()
    assert a.rainy.shape == (3, config.frames, 1, config.size, config.size)
    assert a.alpha.shape == a.rainy.shape
    assert float(a.rainy.min()) >= 0 and float(a.rainy.max()) <= 1


def test_pan_moves_the_scene_by_the_requested_pixels():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 120, 120)).astype(np.float32))
    path = CameraPath(pan_px=(0.0, 2.0), zoom=0.0, rotate_deg=0.0)
    frames = render_path(image, path, frames=3, height=40, width=40, centre_yx=(60, 50))
    # Frame 1 is frame 0 moved left by 2 px (the camera pans right).
    torch.testing.assert_close(frames[1, :, :, :-2], frames[0, :, :, 2:], atol=1e-5, rtol=0)
    assert not torch.allclose(frames[1], frames[0])


def test_clip_motion_is_smooth(sampler):
    batch = sampler.batch(seed=3, step=0, batch_size=4)
    step = (batch.clean[:, 1:] - batch.clean[:, :-1]).abs().mean()
    shuffled = (batch.clean[:, 1:] - batch.clean.flip(0)[:, :-1]).abs().mean()
    assert step < 0.5 * shuffled


def test_some_clips_stay_dry_and_their_target_is_the_input(sampler):
    batch = sampler.batch(seed=0, step=0, batch_size=40, frames=2)
    dry = [bool(torch.equal(batch.rainy[i], batch.clean[i])) for i in range(40)]
    assert 2 <= sum(dry) <= 18  # clean_fraction 0.2 of 40 clips
    for i in (i for i, d in enumerate(dry) if d):
        assert batch.streaks[i].abs().sum() == 0 and batch.alpha[i].sum() == 0


def test_rain_style_is_randomised_per_clip():
    rng = np.random.default_rng(0)
    configs = [random_rain_config(rng) for _ in range(200)]
    angles = [c.angle_deg[0] for c in configs]
    assert min(angles) < -30 and max(angles) > 30
    assert sum(abs(a) < 6 for a in angles) > 40  # many near-vertical
    widths = [layer[2] for c in configs for layer in c.layers]
    assert min(widths) < 0.4 and max(widths) > 1.4  # about 1 px to 4 px wide streaks
    assert 0.2 < np.mean([c.occlusion > 0 for c in configs]) < 0.5
    assert any(c.veil > 0 for c in configs) and any(c.lens_drops > 0 for c in configs)


def test_structures_and_sprites_are_drawn_into_the_clean_target():
    rng = np.random.default_rng(3)
    canvas = torch.full((80, 80), 0.3)
    drawn = draw_structures(rng, canvas)
    assert drawn.shape == canvas.shape and float((drawn - canvas).abs().max()) > 0.2
    clip = torch.full((5, 1, 48, 48), 0.2)
    donors = [torch.rand(1, 120, 120)]
    moved = add_sprites(np.random.default_rng(1), clip, donors)
    changed = (moved - clip).abs().sum(dim=(1, 2, 3))
    assert float(changed.min()) > 0
    # The objects move on their own: the changed region differs between first and last frame.
    first, last = (moved[0] - clip[0]).abs() > 0.01, (moved[-1] - clip[-1]).abs() > 0.01
    assert not torch.equal(first, last)


def test_clip_settings_reach_the_randomised_rain(sources):
    """``clip.downpour_probability`` and ``clip.falling_probability`` (``--set clip.…``) are
    what the sampler's randomised rain draws with; by default neither is drawn."""
    rainy_only = {"clean_fraction": 0.0, "preset_fraction": 0.0}
    asked = ClipSampler(
        sources, ClipConfig(**rainy_only, downpour_probability=1.0, falling_probability=1.0)
    )
    default = ClipSampler(sources, ClipConfig(**rainy_only))
    rng = np.random.default_rng(0)
    rains = [asked.clip_at(rng, 2)[1] for _ in range(6)]
    assert all(r.name == "downpour" and r.fall > 0 for r in rains)
    rains = [default.clip_at(rng, 2)[1] for _ in range(6)]
    assert all(r.name == "random" and r.fall == 0 for r in rains)

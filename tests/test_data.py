"""Training batches: deterministic per step, camera motion is smooth, rain is the hybrid model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from j4r.config import ClipConfig
from j4r.data import ClipSampler
from j4r.motion import CameraPath, render_path
from j4r.sources import CleanSource, package_dir, read_image_rgb


@pytest.fixture(scope="module")
def sampler():
    data = package_dir("skimage") / "data"
    sources = [CleanSource(n, read_image_rgb(data / n)) for n in ("brick.png", "coffee.png")]
    return ClipSampler(sources, ClipConfig())


def test_batches_are_a_function_of_seed_and_step(sampler):
    a = sampler.batch(seed=1, step=7, batch_size=3)
    b = sampler.batch(seed=1, step=7, batch_size=3)
    c = sampler.batch(seed=1, step=8, batch_size=3)
    torch.testing.assert_close(a.rainy, b.rainy, rtol=0, atol=0)
    assert not torch.equal(a.rainy, c.rainy)
    assert a.rainy.shape == (3, 9, 1, 32, 32)
    assert a.alpha.shape == (3, 9, 1, 32, 32)
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

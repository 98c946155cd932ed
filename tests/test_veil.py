"""The veil head: a fresh one leaves the network as it was, its loss from frame moments is the
output's error computed directly, tiles reach the whole frame's estimate, a fit learns to lift a
veil where there is one and to leave frames without one alone, and fit-veil writes a checkpoint
whose only new weights are the head's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from j4r.arch import VEIL_MAX, lay_veil, lift_veil
from j4r.color import rgb_to_ycbcr
from j4r.config import net_config
from j4r.metrics import psnr
from j4r.model import build_model, derain_rgb_step
from j4r.tiling import derain_tiled_frame, plan_tiles


def veiled_tiny(seed=0, ramp=(0.0, 1.0)):
    torch.manual_seed(seed)
    net = net_config("tiny", rain_gate=True, rain_presence=True, veil_head=True,
                     presence_ramp=ramp)  # fmt: skip
    return build_model(net).eval()


def logits_for(share: float, level: float) -> torch.Tensor:
    return torch.tensor([[math.log(share / (VEIL_MAX - share)), math.log(level / (1 - level))]])


def test_lifting_a_veil_undoes_laying_it():
    x = torch.rand(2, 1, 9, 11)
    z = torch.cat([logits_for(0.3, 0.8), logits_for(0.05, 0.6)])
    veiled = lay_veil(x, z)
    torch.testing.assert_close(veiled[0], 0.7 * x[0] + 0.3 * 0.8)
    torch.testing.assert_close(lift_veil(veiled, z), x)


@torch.no_grad()
def test_a_fresh_veil_head_leaves_the_network_as_it_was():
    model = veiled_tiny()
    plain_net = net_config("tiny", rain_gate=True, rain_presence=True)
    plain = build_model(plain_net).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("veil.") for k in unexpected)
    x = torch.rand(1, 4, 1, 17, 21, generator=torch.Generator().manual_seed(1))
    out, _ = model(x)
    ref, _ = plain(x)
    torch.testing.assert_close(out.background, ref.background, atol=1e-6, rtol=0)
    assert out.veil_logits.shape == (1, 4, 2) and ref.veil_logits.shape == (1, 4, 0)
    # The final output is the presence scale applied to the lifted local output.
    model.veil.decision.bias.copy_(logits_for(0.2, 0.7)[0])
    out, _ = model(x)
    scale = torch.sigmoid(out.presence_logits)[..., None, None]
    lifted = lift_veil(ref.local_background[0], logits_for(0.2, 0.7).expand(4, 2))
    torch.testing.assert_close(out.local_background[0], lifted)
    torch.testing.assert_close(out.background - x, scale * (out.local_background - x))


def test_a_veil_head_needs_the_presence_head():
    with pytest.raises(ValueError, match="veil_head needs rain_presence"):
        build_model(net_config("tiny", veil_head=True))


def test_the_loss_from_frame_moments_is_the_outputs_error():
    from j4r.veil import frame_moments, lift_affine, output_mse

    g = torch.Generator().manual_seed(2)
    rainy, local, clean = (torch.rand(3, 1, 13, 15, generator=g) for _ in range(3))
    scale = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    z = torch.cat([logits_for(0.1, 0.9), logits_for(0.3, 0.5), logits_for(0.2, 0.7)])
    gain, offset = lift_affine(z)
    from_moments = output_mse(frame_moments(rainy, local, clean), scale, gain, offset)
    s = scale[:, None, None, None]
    output = (1 - s) * rainy.double() + s * lift_veil(local.double(), z)
    direct = (output - clean.double()).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(from_moments, direct)


@pytest.mark.parametrize("ramp", [(0.0, 1.0), (0.3, 0.7)])
@torch.no_grad()
def test_tiles_reach_the_whole_frame_veil_estimate(ramp):
    """Each tile alone would estimate a different veil (one half of the frame is dark); the
    frame's estimate comes from all tiles and is lifted once from the blend."""
    model = veiled_tiny(seed=4, ramp=ramp)
    g = torch.Generator().manual_seed(0)
    model.veil.decision.weight.normal_(0, 2.0, generator=g)
    model.veil.decision.bias.copy_(torch.tensor([-1.0, 0.5]))
    model.presence.decision.weight.normal_(0, 2.0, generator=g)
    model.presence.decision.bias.zero_()
    rng = np.random.default_rng(0)
    h, w = 128, 192
    frames = rng.integers(0, 255, (3, h, w, 3), dtype=np.uint8)
    frames[:, :, : w // 2] //= 4
    grid = plan_tiles(h, w, max_pixels=8000, overlap=16)
    assert len(grid) > 1
    memories: list = [None] * len(grid)
    memory, tile_shares = None, []
    for t in range(3):
        step = lambda rgb, m: derain_rgb_step(model, rgb, m)  # noqa: E731
        tiled, stats = derain_tiled_frame(
            step, torch.from_numpy(frames[t]), grid, memories,
            presence_ramp=model.presence_ramp, chroma_fill=model.chroma_fill,
        )  # fmt: skip
        rgb = torch.from_numpy(frames[t]).permute(2, 0, 1)[None].float() / 255
        whole, out, memory = derain_rgb_step(model, rgb, memory)
        whole_u8 = whole[0].permute(1, 2, 0).mul(255).round().to(torch.uint8)
        assert psnr(tiled.float() / 255, whole_u8.float() / 255) > 45
        luma = rgb_to_ycbcr(rgb[0])[0]
        change = float((out.background.clamp(0, 1)[0, 0] - luma).abs().sum())
        assert abs(stats.change_sum - change) < 0.02 * change  # the frame's change, veil included
        dark = derain_rgb_step(model, rgb[..., : w // 2], None)[1].veil_logits
        bright = derain_rgb_step(model, rgb[..., w // 2 :], None)[1].veil_logits
        tile_shares.append(float((dark - bright).abs().max()))
    assert min(tile_shares) > 0.1  # the halves alone would have estimated different veils


def synthetic_samples(frames=512, pixels=64, seed=0):
    """Frames whose head inputs are ``(O, x)`` per pixel: half with a veil (v = 0.3, L = 0.8)
    on both, half without; the network's output ``x`` is the clean frame with the veil and
    an error of its own."""
    from j4r.veil import VeilSamples, frame_moments

    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(frames, 1, 8, 8, generator=g) ** 1.5
    veiled = torch.arange(frames) % 2 == 1
    share = torch.where(veiled, 0.3, 0.0)[:, None, None, None]
    local = (1 - share) * clean + share * 0.8 + 0.02 * torch.randn(frames, 1, 8, 8, generator=g)
    rainy = local + 0.05 * torch.rand(frames, 1, 8, 8, generator=g)  # streaks on top
    pick = torch.randint(0, 64, (frames, pixels), generator=g)
    inputs = torch.stack(
        [rainy.flatten(1).gather(1, pick), local.flatten(1).gather(1, pick)], dim=2
    ).half()
    return VeilSamples(
        inputs,
        frame_moments(rainy, local, clean),
        torch.ones(frames, dtype=torch.float64),
        torch.where(veiled, 15.0, 50.0),
        torch.arange(frames) // 4,
    )


def test_a_fit_lifts_a_veil_where_there_is_one_and_leaves_the_rest_alone():
    from j4r.arch import VeilHead
    from j4r.veil import fit_and_score, gains_db

    samples = synthetic_samples()
    head = VeilHead(in_channels=2)
    report = fit_and_score(head, samples, epochs=80, batch_frames=32, held_out=0.25)
    held = report["held_out"]
    assert held["gain_db_downpour"] > 3.0  # the veiled frames: PSNR 15 in this record
    assert held["gain_db_dry"] > -0.2
    gains = gains_db(head, samples)
    assert float(gains[1::2].min()) > 1.0  # every veiled frame gains


def test_fit_veil_command_writes_a_checkpoint_whose_only_new_weights_are_the_head(tmp_path, capsys):
    from j4r.checkpoint import load_checkpoint, save_checkpoint
    from j4r.presence import save_samples
    from j4r.veil import VeilSamples, with_veil_head
    from pipeline.cli.main import main

    torch.manual_seed(0)
    net = net_config("tiny", rain_gate=True, rain_presence=True)
    folder = tmp_path / "tiny"
    save_checkpoint(build_model(net), folder, name="j4r-tiny", version="test", net=net)
    model, _ = with_veil_head(folder)
    base = synthetic_samples(frames=64, pixels=16)
    channels = model.veil.in_channels
    inputs = torch.rand(64, 16, channels, generator=torch.Generator().manual_seed(5)).half()
    save_samples(VeilSamples(inputs, *list(vars(base).values())[1:]), tmp_path / "s.pt")
    out = tmp_path / "ck"
    args = ["fit-veil", "--checkpoint", str(folder), "--out", str(out)]
    assert main([*args, "--clips", "0", "--samples", str(tmp_path / "s.pt"), "--epochs", "2"]) == 0
    assert "held-out frames" in capsys.readouterr().out
    fitted, info = load_checkpoint(out)
    assert info.net.veil_head and info.extra["veil_fit"]["epochs"] == 2
    source, _ = load_checkpoint(folder)
    for key, value in source.state_dict().items():
        assert torch.equal(fitted.state_dict()[key], value), key
    assert main([*args, "--clips", "0"]) == 2  # nothing to fit on
    assert "nothing to fit on" in capsys.readouterr().err
    plain = tmp_path / "plain"
    save_checkpoint(build_model(net_config("tiny")), plain, name="p", version="t",
                    net=net_config("tiny"))  # fmt: skip
    assert main(["fit-veil", "--checkpoint", str(plain), "--out", str(out), "--clips", "0"]) == 2
    assert "fit-presence" in capsys.readouterr().err


def test_fine_tuning_may_leave_a_checkpoints_veil_head_behind(tmp_path):
    from j4r.checkpoint import save_checkpoint
    from j4r.train import initialise_from

    model = veiled_tiny()
    net = net_config("tiny", rain_gate=True, rain_presence=True, veil_head=True)
    save_checkpoint(model, tmp_path / "v", name="v", version="t", net=net)
    without = net_config("tiny", rain_gate=True, rain_presence=True)
    trunk = build_model(without)
    initialise_from(trunk, tmp_path / "v", without)
    for key, value in trunk.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_veil_in_downpours_only_takes_the_veil_from_lighter_rain_and_changes_nothing_else():
    import dataclasses

    from j4r.rain import random_rain_config

    veiled_light = veiled_downpours = 0
    for seed in range(300):
        kwargs = dict(photometric_probability=0.5, downpour_probability=0.35)
        before = random_rain_config(np.random.default_rng(seed), **kwargs)
        after = random_rain_config(
            np.random.default_rng(seed), **kwargs, veil_in_downpours_only=True
        )
        assert dataclasses.replace(after, veil=before.veil) == before  # no other draw moved
        if before.name == "downpour":
            veiled_downpours += after.veil > 0
        else:
            veiled_light += before.veil > 0
            assert after.veil == 0.0
    assert veiled_light > 20 and veiled_downpours > 20

"""The rain-presence head: a frame judged dry comes out exactly as it went in, tiles reach the
whole frame's decision, fine-tuning can add the head and train it alone, and its target says
whether rain touched a frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from j4r.arch import apply_presence, presence_scale
from j4r.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from j4r.config import net_config, train_config
from j4r.losses import rain_present
from j4r.metrics import psnr
from j4r.model import build_model, derain_rgb_step
from j4r.tiling import derain_tiled_frame, plan_tiles
from j4r.train import initialise_from, make_optimizer


def clip(seed=1, t=4, h=17, w=21):
    return torch.rand(1, t, 1, h, w, generator=torch.Generator().manual_seed(seed))


def present_tiny(seed=0, smoothing=0.0, ramp=(0.0, 1.0), persistence=False):
    torch.manual_seed(seed)
    net = net_config(
        "tiny", rain_gate=True, rain_presence=True, presence_smoothing=smoothing,
        presence_ramp=ramp, presence_persistence=persistence,
    )  # fmt: skip
    return build_model(net).eval()


@torch.no_grad()
def test_a_frame_judged_dry_comes_out_bit_for_bit():
    model = present_tiny()
    model.presence.decision.bias.fill_(-200.0)
    x = clip()
    out, _ = model(x)
    assert torch.equal(out.background, x)
    assert not torch.equal(out.local_background, x)  # the per-pixel path would have changed it


@torch.no_grad()
def test_the_presence_scale_applies_to_the_whole_local_change():
    model = present_tiny()
    x = clip()
    out, _ = model(x)
    scale = torch.sigmoid(out.presence_logits)[..., None, None]
    torch.testing.assert_close(out.background - x, scale * (out.local_background - x))
    assert 0.95 < float(scale.mean()) < 0.99  # a new head starts open: σ(4)
    plain = build_model(net_config("tiny")).eval()
    assert torch.equal(torch.sigmoid(plain(x)[0].presence_logits), torch.ones(1, 4, 1))


def test_fine_tuning_adds_a_presence_head_to_a_checkpoint_without_one(tmp_path):
    torch.manual_seed(3)
    gated = net_config("tiny", rain_gate=True)
    source = build_model(gated)
    save_checkpoint(source, tmp_path / "ck", name="j4r-tiny", version="t", net=gated)
    net = dataclasses.replace(gated, rain_presence=True)
    model = build_model(net)
    initialise_from(model, tmp_path / "ck", net)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="differs"):  # the gate cannot be dropped on the way
        initialise_from(build_model(net_config("tiny", rain_presence=True)), tmp_path / "ck",
                        net_config("tiny", rain_presence=True))  # fmt: skip
    groups = make_optimizer(model, 2, train_config("tiny", presence_lr_scale=7.0)).param_groups
    assert groups[-1]["lr_scale"] == 7.0
    assert groups[-1]["params"] == list(model.presence.parameters())


def test_fine_tuning_may_leave_a_checkpoints_presence_head_behind(tmp_path):
    """The network under a shipped head is fine-tuned without it (the head is fitted again
    for the result): every other weight is copied; the gate still cannot be dropped."""
    torch.manual_seed(4)
    full = net_config("tiny", rain_gate=True, rain_presence=True, presence_ramp=(0.25, 0.75))
    source = build_model(full)
    save_checkpoint(source, tmp_path / "ck", name="j4r-tiny", version="t", net=full)
    net = net_config("tiny", rain_gate=True)
    model = build_model(net)
    initialise_from(model, tmp_path / "ck", net)
    assert model.presence is None
    for key, value in model.state_dict().items():
        assert torch.equal(source.state_dict()[key], value), key
    x = torch.rand(1, 3, 1, 16, 16)
    torch.testing.assert_close(model(x)[0].local_background, source(x)[0].local_background)
    with pytest.raises(ValueError, match="differs"):
        initialise_from(build_model(net_config("tiny")), tmp_path / "ck", net_config("tiny"))


def test_the_presence_target_is_whether_the_rain_costs_more_than_the_threshold():
    clean = torch.rand(1, 3, 1, 40, 40)
    rainy = clean.clone()
    rainy[0, 1, 0, 10:30, 20] += 0.3  # one streak: MSE 20 * 0.09 / 1600 -> 29.5 dB
    rainy[0, 2, 0, 5, 5] += 0.3  # one speck: 42.5 dB, invisible
    assert rain_present(rainy, clean, threshold_db=40).flatten().tolist() == [0.0, 1.0, 0.0]
    assert rain_present(rainy, clean, threshold_db=45).flatten().tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("ramp", "persistence"), [((0.0, 1.0), False), ((0.3, 0.7), False), ((0.3, 0.7), True)]
)
@torch.no_grad()
def test_tiles_reach_the_whole_frame_presence_decision(ramp, persistence):
    """Tiled and whole frames agree although each tile alone would decide differently: the
    frame's decision comes from all tiles, and the scale is applied once to the blend. With
    persistence, each tile's memory carries its previous change (the overlap covers the
    window), so the time cue is exact too."""
    model = present_tiny(seed=4, smoothing=0.6, ramp=ramp, persistence=persistence)
    # A decision that depends on the content, near its steepest point.
    model.presence.decision.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(0))
    model.presence.decision.bias.zero_()
    rng = np.random.default_rng(0)
    h, w = 128, 192
    frames = rng.integers(0, 255, (3, h, w, 3), dtype=np.uint8)
    frames[:, :, : w // 2] //= 4  # a dark half: its tiles see different evidence
    grid = plan_tiles(h, w, max_pixels=8000, overlap=16)
    assert len(grid) > 1
    memories: list = [None] * len(grid)
    memory = None
    verdicts = []
    for t in range(3):
        tiled, stats = derain_tiled_frame(
            lambda rgb, m: derain_rgb_step(model, rgb, m), torch.from_numpy(frames[t]), grid,
            memories, presence_ramp=model.presence_ramp, chroma_fill=model.chroma_fill,
        )  # fmt: skip
        rgb = torch.from_numpy(frames[t]).permute(2, 0, 1)[None].float() / 255
        whole, out, memory = derain_rgb_step(model, rgb, memory)
        whole_u8 = whole[0].permute(1, 2, 0).mul(255).round().to(torch.uint8)
        p_whole = float(torch.sigmoid(out.presence_logits))
        verdicts.append(p_whole)
        assert abs(stats.rain_probability - p_whole) < 0.02
        assert psnr(tiled.float() / 255, whole_u8.float() / 255) > 45
    assert min(verdicts) > 0.1 and max(verdicts) < 0.9  # the decision was not saturated


def test_the_ramp_leaves_frames_judged_dry_alone_and_gives_confident_rain_the_whole_change():
    logits = torch.logit(torch.tensor([0.05, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9]))
    torch.testing.assert_close(presence_scale(logits), torch.sigmoid(logits))  # no ramp: P
    scale = presence_scale(logits, (0.25, 0.75))
    torch.testing.assert_close(scale, torch.tensor([0.0, 0.0, 0.3, 0.5, 0.7, 1.0, 1.0]))


@torch.no_grad()
def test_with_a_ramp_a_frame_at_low_p_rain_comes_out_bit_for_bit():
    """Without a ramp P(rain) = 0.2 still applies a fifth of the change; with one it is none."""
    x = clip()
    outputs = {}
    for ramp in ((0.0, 1.0), (0.25, 0.75)):
        model = present_tiny(ramp=ramp)
        model.presence.decision.weight.zero_()
        model.presence.decision.bias.fill_(float(torch.logit(torch.tensor(0.2))))
        outputs[ramp], _ = model(x)
    assert torch.equal(outputs[(0.25, 0.75)].background, x)
    assert not torch.equal(outputs[(0.0, 1.0)].background, x)
    with pytest.raises(ValueError, match="presence_ramp"):
        present_tiny(ramp=(0.7, 0.3))


def test_apply_presence_is_the_identity_at_zero_and_the_local_output_at_one():
    luma, local = torch.rand(2, 1, 5, 5), torch.rand(2, 1, 5, 5)
    out = apply_presence(luma, local, torch.tensor([[-200.0], [200.0]]))
    assert torch.equal(out[0], luma[0]) and torch.equal(out[1], local[1])


def tiny_samples(model, clips=8, seed=0, size=24):
    from j4r.config import ClipConfig
    from j4r.data import ClipSampler
    from j4r.presence import collect
    from j4r.sources import CleanSource, package_dir, read_image_rgb

    image = read_image_rgb(package_dir("skimage") / "data" / "brick.png")
    clip_config = ClipConfig(frames=4, size=size, clean_fraction=0.5)
    sampler = ClipSampler([CleanSource("brick", image)], clip_config)
    return collect(model, sampler, clips=clips, batch_size=4, seed=seed, pixels_per_frame=64)


def test_presence_samples_hold_the_heads_inputs_and_whether_the_rain_shows():
    from j4r.presence import concat, head_logits

    model = present_tiny()
    samples = tiny_samples(model)
    assert samples.inputs.shape == (8 * 2, 64, model.presence.in_channels)  # 2 frames after warm-up
    assert torch.equal(samples.rainy, (samples.rain_psnr_db < 40).float())
    assert 0 < float(samples.rainy.mean()) < 1  # both kinds present
    # The mean over sampled pixels is the head on those pixels: same logit as the full frame
    # when every pixel is sampled (checked on the frame's own inputs below).
    x = torch.rand(1, model.presence.in_channels, 6, 7)
    whole = model.presence.decide(model.presence.pool(model.presence.evidence(x)))[:, 0]
    sampled = head_logits(model.presence, x.flatten(2).transpose(1, 2))
    torch.testing.assert_close(whole, sampled)
    from j4r.presence import relabel

    stricter = relabel(samples, 30.0)
    assert torch.equal(stricter.rainy, (samples.rain_psnr_db < 30).float())
    assert stricter.rainy.sum() <= samples.rainy.sum()
    both = concat([samples, samples])
    assert len(torch.unique(both.clip)) == 2 * len(torch.unique(samples.clip))


def test_fitting_the_head_separates_dry_frames_from_rainy_ones():
    from j4r.presence import fit_and_score, scores, with_presence_head

    model, _ = with_presence_head(DEFAULT_CHECKPOINT)  # a trained network: features that tell
    samples = tiny_samples(model, clips=32, size=32)
    before = scores(model.presence, samples)
    report = fit_and_score(model.presence, samples, epochs=200, held_out=0.25)
    assert report["train"]["log_loss"] < before["log_loss"]
    assert report["train"]["accuracy"] > 0.7
    assert set(report["held_out"]) >= {"accuracy", "dry_judged_rainy", "rainy_judged_dry"}


def test_fit_presence_command_writes_a_checkpoint_with_its_record(
    tiny_checkpoint, tmp_path, capsys
):
    from j4r.checkpoint import load_checkpoint
    from j4r.presence import save_samples, with_presence_head
    from pipeline.cli.main import main

    model, _ = with_presence_head(tiny_checkpoint)
    save_samples(tiny_samples(model, clips=12), tmp_path / "s.pt")
    out = tmp_path / "ck"
    args = ["fit-presence", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    code = main([*args, "--clips", "0", "--samples", str(tmp_path / "s.pt"), "--epochs", "3"])
    assert code == 0
    assert "held-out frames" in capsys.readouterr().out
    fitted, info = load_checkpoint(out)
    assert info.net.rain_presence and info.extra["presence_fit"]["threshold_db"] == 40.0
    # Saved samples are labelled again at the threshold asked for.
    assert main([*args, "--clips", "0", "--samples", str(tmp_path / "s.pt"), "--epochs", "1",
                 "--threshold-db", "100", "--ramp", "0.25,0.75"]) == 0  # fmt: skip
    refit, info = load_checkpoint(out)
    assert info.extra["presence_fit"]["rainy_share"] == 1.0
    assert info.net.presence_ramp == (0.25, 0.75) and refit.presence_ramp == (0.25, 0.75)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:  # argparse: a usage error
        main([*args, "--clips", "0", "--ramp", "0.8,0.2"])
    assert exited.value.code == 2 and "LO < HI" in capsys.readouterr().err
    source, _ = load_checkpoint(tiny_checkpoint)
    for key, value in source.state_dict().items():  # only the head is new
        assert torch.equal(fitted.state_dict()[key], value), key
    assert main([*args, "--clips", "0"]) == 2  # nothing to fit on
    assert "nothing to fit on" in capsys.readouterr().err


@torch.no_grad()
def test_the_verdict_is_a_running_average_of_the_frames_logits_carried_in_the_memory():
    plain, smooth = present_tiny(seed=2), present_tiny(seed=2, smoothing=0.75)
    for model in (plain, smooth):  # a verdict that swings with the frames' brightness
        model.presence.decision.weight.normal_(0, 300, generator=torch.Generator().manual_seed(1))
        model.presence.decision.bias.zero_()
    x = clip(seed=5, t=6) * torch.tensor([1.0, 0.2, 1.0, 0.2, 1.0, 0.2])[None, :, None, None, None]
    raw, _ = plain(x)
    out, memory = smooth(x)
    assert memory.shape[1] == smooth.memory_channels == smooth.channels + 2
    # sum / weight of an exponential average: the first frame is its own logit
    total = weight = 0.0
    expected = []
    for t in range(6):
        total = 0.75 * total + 0.25 * raw.presence_logits[:, t]
        weight = 0.75 * weight + 0.25
        expected.append(total / weight)
    torch.testing.assert_close(out.presence_logits, torch.stack(expected, dim=1))
    swing = raw.presence_logits.diff(dim=1).abs().mean()
    assert out.presence_logits.diff(dim=1).abs().mean() < 0.5 * swing and swing > 0.01
    # Everything but the verdict is the network without smoothing.
    torch.testing.assert_close(out.local_background, raw.local_background)
    # Carried across chunks: two halves with the memory passed on == one pass.
    first, memory = smooth(x[:, :3])
    second, _ = smooth(x[:, 3:], memory)
    torch.testing.assert_close(
        torch.cat([first.presence_logits, second.presence_logits], 1), out.presence_logits
    )
    torch.testing.assert_close(torch.cat([first.background, second.background], 1), out.background)
    with pytest.raises(ValueError, match="presence_smoothing"):
        build_model(net_config("tiny", rain_presence=True, presence_smoothing=1.0))


def test_derain_run_records_each_frames_rain_probability(tmp_path):
    """A presence head that doubts (P(rain) = σ(-1)) scales the change of every frame, and the
    frames table says so; tiled frames get the same verdict."""
    from pipeline.cli.main import main
    from pipeline.io.delta import read_table
    from pipeline.io.storage import open_location
    from pipeline.job.manifest import frames_schema, videos_schema
    from tests.helpers import moving_frames_thwc_u8, write_video

    model = present_tiny(seed=1)
    with torch.no_grad():
        model.presence.decision.weight.zero_()
        model.presence.decision.bias.fill_(-1.0)
    net = net_config("tiny", rain_gate=True, rain_presence=True)
    save_checkpoint(model, tmp_path / "ck", name="j4r-tiny", version="p", net=net)
    write_video(tmp_path / "in" / "a.mkv", moving_frames_thwc_u8(4, 32, 48, seed=3))
    base = ["run", str(tmp_path / "in"), "--checkpoint", str(tmp_path / "ck"), "--no-progress",
            "--runner", "sequential"]  # fmt: skip
    assert main([*base[:2], str(tmp_path / "whole"), *base[2:]]) == 0
    tiled = [*base[:2], str(tmp_path / "tiled"), *base[2:], "--tile-pixels", "1100",
             "--tile-overlap", "8"]  # fmt: skip
    assert main(tiled) == 0
    expected = float(torch.sigmoid(torch.tensor(-1.0)))
    for out in ("whole", "tiled"):
        location = open_location(str(tmp_path / out / "_manifests"))
        rows = read_table(location, "frames", frames_schema()).to_pylist()
        assert len(rows) == 4
        assert [r["rain_probability"] for r in rows] == pytest.approx([expected] * 4, abs=1e-4)
        (video,) = read_table(location, "videos", videos_schema()).to_pylist()
        assert video["tiles"] == (2 if out == "tiled" else 1)


def test_change_persistence_splits_a_structure_from_what_is_new():
    from j4r.arch import PERSISTENCE_STATE_CHANNELS, change_persistence

    state = torch.zeros(1, PERSISTENCE_STATE_CHANNELS, 12, 12)
    pole = torch.zeros(1, 1, 12, 12)
    pole[..., 4] = 0.3  # a column the network keeps changing
    (persistent, new), state = change_persistence(pole, state)
    assert torch.equal(persistent, pole.abs()) and not new.any()  # first frame: no time cue
    moved = torch.roll(pole, 1, dims=-1)  # the camera moved by a pixel: the same structure
    moved[..., 2, 9] = -0.5  # and a drop appeared elsewhere
    (persistent, new), state = change_persistence(moved, state)
    assert torch.allclose(persistent + new, moved.abs())
    assert torch.allclose(persistent[..., 5], torch.full((1, 1, 12), 0.3))
    assert new[..., 2, 9] == 0.5 and new.sum() == 0.5  # only the drop is new
    (persistent, new), state = change_persistence(torch.zeros_like(moved), state)
    assert not persistent.any() and not new.any()


@torch.no_grad()
def test_a_persistence_head_carries_its_time_cue_across_chunks_and_keeps_the_trunk():
    plain, timed = present_tiny(seed=3), present_tiny(seed=3, persistence=True)
    assert timed.memory_channels == timed.channels + 4
    assert timed.presence.in_channels == plain.presence.in_channels + 2
    trunk = {k: v for k, v in plain.state_dict().items() if not k.startswith("presence.")}
    timed.load_state_dict(trunk, strict=False)
    timed.presence.decision.weight.normal_(0, 50, generator=torch.Generator().manual_seed(2))
    x = clip(seed=7, t=6)
    out, _ = timed(x)
    raw, _ = plain(x)
    torch.testing.assert_close(out.local_background, raw.local_background)  # head only
    first, memory = timed(x[:, :2])
    second, _ = timed(x[:, 2:], memory)
    torch.testing.assert_close(
        torch.cat([first.presence_logits, second.presence_logits], 1), out.presence_logits
    )
    # The cue depends on the previous frame: the same frame after another one decides anew.
    alone, _ = timed(x[:, 3:4])
    assert not torch.allclose(alone.presence_logits[:, 0], out.presence_logits[:, 3])


def test_with_presence_head_replaces_a_head_that_did_not_see_persistence(tiny_checkpoint):
    from j4r.checkpoint import load_checkpoint
    from j4r.presence import with_presence_head

    model, info = with_presence_head(tiny_checkpoint, persistence=True)
    assert info.net.presence_persistence and model.presence.persistence
    source, _ = load_checkpoint(tiny_checkpoint)
    for key, value in source.state_dict().items():
        if not key.startswith("presence."):
            assert torch.equal(model.state_dict()[key], value), key

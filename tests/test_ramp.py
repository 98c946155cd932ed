"""Choosing the presence ramp on validation clips (``j4r.ramp``, ``derain tune-ramp``)."""

from __future__ import annotations

import json

import pytest
import torch

from j4r.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from j4r.presence import with_presence_head
from j4r.ramp import FrameChanges, choose_ramp, measure_changes, score_ramp, sweep


def brick_sampler(clips_size=24, frames=4):
    from j4r.config import ClipConfig
    from j4r.data import ClipSampler
    from j4r.sources import CleanSource, package_dir, read_image_rgb

    image = read_image_rgb(package_dir("skimage") / "data" / "brick.png")
    config = ClipConfig(frames=frames, size=clips_size, clean_fraction=0.5)
    return ClipSampler([CleanSource("brick", image)], config)


def test_output_mse_is_the_mse_of_the_scaled_change():
    g = torch.Generator().manual_seed(0)
    rainy, clean, local = (torch.rand(5, 1, 8, 9, generator=g, dtype=torch.float64) for _ in "abc")
    share = torch.rand(5, generator=g, dtype=torch.float64)
    rain, change = rainy - clean, local - rainy
    changes = FrameChanges(
        logits=torch.zeros(5, dtype=torch.float64),
        rain=rain.pow(2).mean(dim=(1, 2, 3)),
        change=change.pow(2).mean(dim=(1, 2, 3)),
        cross=(rain * change).mean(dim=(1, 2, 3)),
    )
    direct = (rainy + share[:, None, None, None] * change - clean).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(changes.output_mse(share), direct)


@torch.no_grad()
def test_one_pass_scores_each_ramp_as_a_network_built_with_that_ramp_would_do():
    """The sweep's figures for a ramp equal those of running the network with that ramp."""
    sampler, clips, seed, threshold = brick_sampler(), 8, 3, 35.0
    model, _ = with_presence_head(DEFAULT_CHECKPOINT)
    changes = measure_changes(model, sampler, clips=clips, seed=seed, batch_size=4)
    assert len(changes.logits) == clips * 2  # 4 frames, the first two left out
    for ramp in ((0.25, 0.75), (0.9, 0.99)):
        predicted = score_ramp(changes, ramp, threshold)
        ramped, _ = with_presence_head(DEFAULT_CHECKPOINT, ramp=ramp)
        gains, dry_harm, dry_changed = [], [], []
        for step in range(clips // 4):
            batch = sampler.batch(seed=seed, step=step, batch_size=4)
            out, _ = ramped(batch.rainy)
            for t in range(2, batch.rainy.shape[1]):
                rainy, clean = batch.rainy[:, t].double(), batch.clean[:, t].double()
                background = out.background[:, t].double()
                for i in range(rainy.shape[0]):
                    rain_mse = float((rainy[i] - clean[i]).pow(2).mean())
                    if rain_mse < 1e-12:
                        diff = float((background[i] - rainy[i]).pow(2).mean())
                        dry_harm.append(diff)
                        dry_changed.append(diff > 0)
                    elif -10 * torch.log10(torch.tensor(rain_mse)) < threshold:
                        out_mse = float((background[i] - clean[i]).pow(2).mean())
                        gains.append(10 * torch.log10(torch.tensor(rain_mse / out_mse)))
        assert predicted["rainy_frames"] == len(gains) > 0
        assert predicted["dry_frames"] == len(dry_harm) > 0
        assert predicted["rainy_gain_db"] == pytest.approx(
            float(torch.stack(gains).mean()), abs=1e-3
        )
        assert predicted["dry_changed"] == pytest.approx(sum(dry_changed) / len(dry_changed))
        if any(dry_changed):
            harm = -10 * torch.log10(torch.tensor(sum(dry_harm) / len(dry_harm)))
            assert predicted["dry_pooled_psnr"] == pytest.approx(float(harm), abs=1e-3)


def test_the_choice_removes_the_most_rain_within_the_bound_on_harm():
    rows = [
        {"ramp": [0.25, 0.75], "rainy_gain_db": 8.0, "dry_pooled_psnr": 38.0, "dry_changed": 0.2},
        {"ramp": [0.5, 0.9], "rainy_gain_db": 7.9, "dry_pooled_psnr": 40.5, "dry_changed": 0.1},
        {"ramp": [0.9, 0.99], "rainy_gain_db": 7.5, "dry_pooled_psnr": 44.0, "dry_changed": 0.02},
    ]
    assert choose_ramp(rows, min_dry_psnr=40.0)["ramp"] == [0.5, 0.9]
    assert choose_ramp(rows, min_dry_psnr=42.0)["ramp"] == [0.9, 0.99]
    assert choose_ramp(rows, min_dry_psnr=30.0)["ramp"] == [0.25, 0.75]
    assert choose_ramp(rows, min_dry_psnr=50.0)["ramp"] == [0.9, 0.99]  # none: least harm
    with pytest.raises(ValueError):
        choose_ramp([], min_dry_psnr=40.0)


def test_a_more_cautious_ramp_never_changes_more_dry_frames():
    model, _ = with_presence_head(DEFAULT_CHECKPOINT)
    changes = measure_changes(model, brick_sampler(), clips=8, seed=5, batch_size=4)
    rows = sweep(changes, ((0.0, 1.0), (0.25, 0.75), (0.5, 0.9), (0.9, 0.99)))
    changed = [r["dry_changed"] for r in rows]
    assert changed == sorted(changed, reverse=True)
    assert changed[0] == 1.0  # no ramp: a sigmoid never reaches 0


def test_tune_ramp_command_writes_the_chosen_ramp_and_leaves_the_weights(tmp_path, capsys):
    from pipeline.cli.main import main

    out, record = tmp_path / "tuned", tmp_path / "ramp.json"
    original = (DEFAULT_CHECKPOINT / "config.json").read_bytes()
    args = ["tune-ramp", "--clips", "4", "--ramp", "0.25,0.75", "--ramp", "0.9,0.99",
            "--set", "clip.frames=4", "--set", "clip.size=24", "--no-progress"]  # fmt: skip
    code = main([*args, "--out", str(out), "--json", str(record), "--model-version", "x.1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "(chosen)" in printed and "chosen ramp" in printed
    saved = json.loads(record.read_text())
    assert [row["ramp"] for row in saved["rows"]] == [[0.25, 0.75], [0.9, 0.99]]
    tuned, info = load_checkpoint(out)
    assert list(info.net.presence_ramp) == saved["chosen"] == list(tuned.presence_ramp)
    assert info.version == "x.1" and info.extra["ramp_choice"]["clips"] == 4
    source, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    for key, value in source.state_dict().items():  # the weights are the checkpoint's
        assert torch.equal(tuned.state_dict()[key], value), key
    assert (out / "stage1" / "config.json").exists()
    assert (DEFAULT_CHECKPOINT / "config.json").read_bytes() == original  # left as it was


def test_tune_ramp_refuses_a_checkpoint_without_a_presence_head(tiny_checkpoint, capsys):
    from pipeline.cli.main import main

    code = main(["tune-ramp", "--checkpoint", str(tiny_checkpoint), "--clips", "2"])
    assert code == 2
    assert "derain fit-presence" in capsys.readouterr().err
    capsys.readouterr()
    code = main(["tune-ramp", "--clips", "2", "--set", "clip.clean_fraction=0"])
    assert code == 2
    assert "clip.clean_fraction" in capsys.readouterr().err

"""`derain train` -> `derain eval` -> `derain run` through the CLI, with a tiny network."""

from __future__ import annotations

import json

import pytest

from j4r.checkpoint import DEFAULT_CHECKPOINT, read_info
from pipeline.cli.main import main
from tests.helpers import moving_frames_thwc_u8, write_video


@pytest.mark.slow
def test_train_export_eval_and_run(tmp_path, capsys):
    export = tmp_path / "model"
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--run-dir",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            "stage1_steps=2",
            "--set",
            "stage2_steps=2",
            "--set",
            "clip.size=16",
            "--set",
            "clip.frames=3",
            "--set",
            "net.channels=6",
            "--model-version",
            "9.9",
            "--out",
            str(export),
        ]
    )
    assert code == 0
    info = read_info(export)
    assert info.version == "9.9" and info.net.channels == 6
    assert info.extra["training"]["train"]["clip"]["size"] == 16
    assert read_info(export / "stage1").version == "9.9-stage1"

    code = main(
        [
            "eval",
            "--checkpoint",
            str(export),
            "--frames",
            "2",
            "--crop",
            "32",
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert code == 0
    record = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert record["model"]["version"] == "9.9"
    assert "single-frame (stage 1)" in record["results"]["heavy"]
    assert "| heavy | J4R-Net |" in (tmp_path / "eval" / "eval.md").read_text()
    assert set(record["results"]) == {"light", "heavy", "foreign-light", "foreign-heavy", "clean"}
    assert "gain_y" in record["results"]["foreign-heavy"]["J4R-Net"]
    samples = sorted(p.name for p in (tmp_path / "eval" / "samples").glob("*.png"))
    assert samples == ["clean-bikes.png", "foreign-heavy-bikes.png", "heavy-bikes.png"]
    assert main(["eval", "--checkpoint", str(export), "--sets", "light,bogus"]) == 2

    src = write_video(tmp_path / "in.mkv", moving_frames_thwc_u8(4, 16, 24))
    assert (
        main(
            [
                "run",
                str(src),
                str(tmp_path / "out"),
                "--checkpoint",
                str(export),
                "--no-progress",
                "--runner",
                "sequential",
            ]
        )
        == 0
    )
    assert "1 ok, 0 failed" in capsys.readouterr().out


def test_bad_override_is_a_usage_error(tmp_path, capsys):
    code = main(["train", "--preset", "tiny", "--run-dir", str(tmp_path), "--set", "nope=1"])
    assert code == 2
    assert "unknown TrainConfig keys ['nope']" in capsys.readouterr().err


def test_missing_checkpoint_is_a_usage_error(tmp_path, capsys):
    src = write_video(tmp_path / "in.mkv", moving_frames_thwc_u8(2, 16, 16))
    assert main(["run", str(src), str(tmp_path / "o"), "--checkpoint", str(tmp_path)]) == 2
    assert "derain train" in capsys.readouterr().err


def test_train_refuses_contradicting_settings_before_any_work(tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = ["train", "--preset", "tiny", "--run-dir", str(run_dir)]
    assert main([*base, "--init-from", str(tmp_path)]) == 2
    assert "is not a checkpoint" in capsys.readouterr().err
    # The shipped checkpoint is `small` with a rain gate: a tiny net cannot start from it.
    assert main([*base, "--init-from", str(DEFAULT_CHECKPOINT)]) == 2
    assert "differs from" in capsys.readouterr().err
    assert not run_dir.exists()

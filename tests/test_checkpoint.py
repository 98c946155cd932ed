"""Checkpoints: safetensors + JSON, round trip, clear errors, the shipped default."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from j4r.checkpoint import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    file_sha256,
    load_checkpoint,
    read_info,
    save_checkpoint,
)
from j4r.config import net_config
from j4r.model import build_model


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    net = net_config("tiny")
    model = build_model(net).eval()
    save_checkpoint(model, tmp_path / "c", name="j4r-tiny", version="1.2.3", net=net)
    loaded, info = load_checkpoint(tmp_path / "c")
    x = torch.rand(1, 3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0].background, model(x)[0].background)
    assert (info.name, info.version, info.net) == ("j4r-tiny", "1.2.3", net)
    assert info.sha256 == file_sha256(tmp_path / "c" / "model.safetensors")
    meta = json.loads((tmp_path / "c" / "config.json").read_text())
    assert meta["net"]["channels"] == net.channels
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_missing_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="derain train"):
        load_checkpoint(tmp_path)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    save_checkpoint(
        build_model(net_config("tiny")), tmp_path, name="x", version="1", net=net_config("tiny")
    )
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["net"]["rnet_blocks"] = 3
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path)


def test_shipped_checkpoint_loads_and_is_small():
    info = read_info(DEFAULT_CHECKPOINT)
    assert (DEFAULT_CHECKPOINT / "model.safetensors").stat().st_size < 5 * 2**20
    assert (DEFAULT_CHECKPOINT / "MODEL_CARD.md").exists()
    model, _ = load_checkpoint()
    assert info.name.startswith("j4r-")
    # The single-frame model has the same trunk; only the full network carries the heads (and
    # restores chroma, which is no weight).
    stage1 = read_info(DEFAULT_CHECKPOINT / "stage1").net
    no_heads = {
        "rain_gate": False,
        "rain_presence": False,
        "presence_smoothing": 0.0,
        "presence_ramp": (0.0, 1.0),
        "chroma_fill": False,
    }
    assert dataclasses.replace(stage1, **no_heads) == dataclasses.replace(info.net, **no_heads)
    assert not model.training

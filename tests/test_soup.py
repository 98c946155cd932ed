"""`derain average-weights`: every weight between two fine-tunes, the presence head left out."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from j4r.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from j4r.config import net_config
from j4r.model import build_model
from j4r.soup import average_weights
from pipeline.cli.exit_codes import EXIT_OK, EXIT_USAGE
from pipeline.cli.main import main


def tiny(folder, seed, **net):
    torch.manual_seed(seed)
    config = net_config("tiny", **{"rain_gate": True, **net})
    save_checkpoint(build_model(config), folder, name="j4r-tiny", version=f"v{seed}", net=config)
    return folder


@pytest.fixture
def pair(tmp_path):
    return tiny(tmp_path / "a", 1, rain_presence=True), tiny(tmp_path / "b", 2)


def test_the_average_lies_between_and_its_ends_are_the_networks(pair):
    first, second = pair
    a = load_checkpoint(first)[0].state_dict()
    b = load_checkpoint(second)[0].state_dict()
    half, info = average_weights(first, second, share=0.5)
    assert not info.net.rain_presence and info.net.rain_gate
    for key, value in half.state_dict().items():
        torch.testing.assert_close(value, (a[key] + b[key]) / 2)
    start = average_weights(first, second, share=0.0)[0].state_dict()
    end = average_weights(first, second, share=1.0)[0].state_dict()
    assert all(torch.equal(start[k], a[k]) and torch.equal(end[k], b[k]) for k in start)
    assert not any(k.startswith("presence.") for k in start)  # fitted to one network only


@torch.no_grad()
def test_a_part_only_one_network_has_is_averaged_with_zero(pair, tmp_path):
    first, _ = pair
    torch.manual_seed(5)
    config = net_config("tiny", rain_gate=True, rnet_memory=True)
    seeing = build_model(config)
    seeing.rnet.memory_input.weight.normal_(std=0.1)
    save_checkpoint(seeing, tmp_path / "m", name="j4r-tiny", version="m", net=config)
    half, info = average_weights(first, tmp_path / "m", share=0.5)
    assert info.net.rnet_memory
    w = seeing.rnet.memory_input.weight
    torch.testing.assert_close(half.rnet.memory_input.weight, w / 2)
    # ...which is what the network without the part computes: at zero it does nothing.
    without, _ = average_weights(first, tmp_path / "m", share=0.0)
    plain, _ = load_checkpoint(first)
    plain.presence = None
    clip = torch.rand(1, 3, 1, 12, 14, generator=torch.Generator().manual_seed(0))
    assert torch.count_nonzero(without.rnet.memory_input.weight) == 0
    torch.testing.assert_close(without(clip)[0].local_background, plain(clip)[0].local_background)


def test_networks_of_different_shapes_or_a_share_outside_0_1_are_refused(pair, tmp_path):
    first, _ = pair
    other = tiny(tmp_path / "c", 3, rain_gate=False)
    with pytest.raises(CheckpointError, match="rain_gate"):
        average_weights(first, other, share=0.5)
    with pytest.raises(ValueError, match="share"):
        average_weights(first, first, share=1.5)


def test_the_command_writes_a_checkpoint_and_leaves_the_originals(pair, tmp_path, capsys):
    first, second = pair
    before = {p: p.joinpath("model.safetensors").read_bytes() for p in pair}
    out = tmp_path / "soup"
    args = [str(first), str(second), "--share", "0.25", "--model-version", "soup.1"]
    assert main(["average-weights", *args, "--out", str(out)]) == EXIT_OK
    _, info = load_checkpoint(out)
    assert info.version == "soup.1" and info.extra["average_weights"]["share"] == 0.25
    expected = average_weights(first, second, share=0.25)[0].state_dict()
    written = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(written[k], v) for k, v in expected.items())
    assert all(p.joinpath("model.safetensors").read_bytes() == b for p, b in before.items())
    assert main(["average-weights", *args, "--out", str(first)]) == EXIT_USAGE
    assert main(["average-weights", str(first), str(tmp_path / "nope"), "--out",
                 str(tmp_path / "x")]) == EXIT_USAGE  # fmt: skip
    assert "average-weights" in capsys.readouterr().err

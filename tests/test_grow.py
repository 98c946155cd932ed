"""`derain grow-network`: more residual pairs that start as the identity."""

from __future__ import annotations

import pytest
import torch

from j4r.checkpoint import load_checkpoint, save_checkpoint
from j4r.config import net_config
from j4r.grow import grow_network
from j4r.model import build_model
from pipeline.cli.exit_codes import EXIT_OK, EXIT_USAGE
from pipeline.cli.main import main


@pytest.fixture
def parent(tmp_path):
    torch.manual_seed(4)
    config = net_config("tiny", rain_gate=True, rain_presence=True)
    model = build_model(config)
    with torch.no_grad():  # biases away from zero, so a mis-grown block would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path / "parent"
    save_checkpoint(model, folder, name="j4r-tiny", version="v1", net=config)
    return folder


def test_the_grown_network_computes_what_its_parent_did(parent):
    before, _ = load_checkpoint(parent)
    grown, info = grow_network(parent, rnet_blocks=3, cnet_blocks=2, jrc_blocks=3)
    assert (info.net.rnet_blocks, info.net.cnet_blocks, info.net.jrc_blocks) == (3, 2, 3)
    assert len(grown.rnet.body) == 3 and len(grown.jrc.body) == 3
    clip = torch.rand(1, 4, 1, 24, 20)
    with torch.inference_mode():
        a, _ = before(clip)
        b, _ = grown(clip)
    for name in ("background", "local_background", "alpha_logits", "presence_logits"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-6, rtol=1e-5)
    # ...and the new blocks can learn: they are not dead.
    grown.train()
    out, _ = grown(clip)
    out.background.mean().backward()
    assert grown.rnet.body[2].conv2.weight.grad.abs().sum() > 0


def test_shrinking_or_unknown_parts_are_refused(parent):
    with pytest.raises(ValueError, match="only grow"):
        grow_network(parent, rnet_blocks=0)
    with pytest.raises(ValueError, match="cannot grow"):
        grow_network(parent, channels=16)


def test_the_command_writes_a_new_checkpoint_and_leaves_the_parent(parent, tmp_path, capsys):
    before = (parent / "model.safetensors").read_bytes()
    out = tmp_path / "grown"
    assert main(["grow-network", str(parent), "--rnet-blocks", "2", "--out", str(out)]) == EXIT_OK
    _, info = load_checkpoint(out)
    assert info.net.rnet_blocks == 2 and info.extra["grown_from"]["rnet_blocks"] == 2
    assert (parent / "model.safetensors").read_bytes() == before
    assert main(["grow-network", str(parent), "--out", str(tmp_path / "x")]) == EXIT_USAGE
    assert main(["grow-network", str(parent), "--rnet-blocks", "2", "--out", str(parent)]) == (
        EXIT_USAGE
    )
    shrink = ["--rnet-blocks", "0", "--out", str(tmp_path / "y")]
    assert main(["grow-network", str(parent), *shrink]) == EXIT_USAGE
    assert "only grow" in capsys.readouterr().err

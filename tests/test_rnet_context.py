"""R-Net's coarse view (``net.rnet_context``): it starts as a no-op, it lets the streak
estimate see far beyond R-Net's own receptive field, fine-tuning can add it, and a weight
average with a network without it carries it at the averaged strength."""

from __future__ import annotations

import torch

from j4r.checkpoint import save_checkpoint
from j4r.config import net_config, train_config
from j4r.model import build_model
from j4r.soup import average_weights
from j4r.train import initialise_from, make_optimizer


def clip(seed: int, t: int = 3, h: int = 15, w: int = 19) -> torch.Tensor:
    return torch.rand(1, t, 1, h, w, generator=torch.Generator().manual_seed(seed))


def tiny(rnet_context: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(net_config("tiny", rain_gate=True, rnet_context=rnet_context)).eval()


def trained_branch(model: torch.nn.Module, std: float = 0.5) -> torch.nn.Module:
    with torch.no_grad():
        model.rnet.context.out.weight.normal_(std=std)
        model.rnet.context.out.bias.normal_(std=0.1)
    return model


@torch.no_grad()
def test_a_fresh_coarse_view_changes_nothing():
    plain, seeing = tiny(False), tiny(True)
    seeing.load_state_dict(plain.state_dict(), strict=False)  # the new output conv stays zero
    x = clip(3)
    a, _ = plain(x)
    b, _ = seeing(x)
    for name in ("background", "streaks", "local_background", "gate_logits"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@torch.no_grad()
def test_the_coarse_view_reaches_pixels_beyond_r_nets_own_view():
    frame = torch.rand(1, 1, 40, 96, generator=torch.Generator().manual_seed(5))
    moved = frame.clone()
    moved[..., 5:35, 62:66] += 0.5  # a streak 22-25 px right of the pixel watched at (20, 40)
    plain, seeing = tiny(False), trained_branch(tiny(True), std=20.0)
    assert plain.single_frame(frame)[1][..., 20, 40] == plain.single_frame(moved)[1][..., 20, 40]
    far = seeing.single_frame(frame)[1][..., 20, 40] - seeing.single_frame(moved)[1][..., 20, 40]
    assert far.abs().max() > 1e-5


def test_fine_tuning_adds_the_coarse_view_and_it_learns(tmp_path):
    plain = tiny(False)
    save_checkpoint(
        plain, tmp_path / "ck", name="j4r-tiny", version="t", net=net_config("tiny", rain_gate=True)
    )
    net = net_config("tiny", rain_gate=True, rnet_context=True)
    model = build_model(net)
    initialise_from(model, tmp_path / "ck", net)
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert torch.count_nonzero(model.rnet.context.out.weight) == 0
    out, _ = model(clip(4))
    out.streaks.square().sum().backward()
    assert model.rnet.context.out.weight.grad.abs().sum() > 0
    config = train_config("tiny", gate_lr_scale=5.0, rnet_context_lr_scale=10.0)
    groups = make_optimizer(model, 2, config).param_groups
    assert [g["lr_scale"] for g in groups] == [0.01, 1.0, 5.0, 10.0]
    assert {id(p) for p in groups[3]["params"]} == {id(p) for p in model.rnet.context.parameters()}


@torch.no_grad()
def test_averaging_with_a_network_without_it_halves_the_branch(tmp_path):
    with_branch = trained_branch(tiny(True))
    without = tiny(False)
    without.load_state_dict(with_branch.state_dict(), strict=False)  # one network, two fine-tunes
    save_checkpoint(with_branch, tmp_path / "a", name="j4r-tiny", version="a",
                    net=net_config("tiny", rain_gate=True, rnet_context=True))  # fmt: skip
    save_checkpoint(without, tmp_path / "b", name="j4r-tiny", version="b",
                    net=net_config("tiny", rain_gate=True))  # fmt: skip
    for first, second, share in ((tmp_path / "a", tmp_path / "b", 0.5),
                                 (tmp_path / "b", tmp_path / "a", 0.5)):  # fmt: skip
        model, info = average_weights(first, second, share=share)
        assert info.net.rnet_context
        features = torch.rand(1, 8, 12, 16)
        assert torch.allclose(
            model.rnet.context(features), 0.5 * with_branch.rnet.context(features), atol=1e-6
        )

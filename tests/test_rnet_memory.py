"""R-Net's view of the memory (``net.rnet_memory``): it starts as a no-op, it is the only way
R-Net's streak estimate can depend on earlier frames, and fine-tuning can add it."""

from __future__ import annotations

import torch

from j4r.checkpoint import save_checkpoint
from j4r.config import net_config
from j4r.model import build_model
from j4r.train import initialise_from


def clip(seed: int, t: int = 3, h: int = 15, w: int = 19) -> torch.Tensor:
    return torch.rand(1, t, 1, h, w, generator=torch.Generator().manual_seed(seed))


def tiny(rnet_memory: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(net_config("tiny", rain_gate=True, rnet_memory=rnet_memory)).eval()


def two_clips_that_differ_only_before_the_last_frame() -> tuple[torch.Tensor, torch.Tensor]:
    a, b = clip(1), clip(2)
    b[:, -1] = a[:, -1]
    return a, b


@torch.no_grad()
def test_a_fresh_memory_input_changes_nothing():
    plain, seeing = tiny(False), tiny(True)
    seeing.load_state_dict(plain.state_dict(), strict=False)  # the new conv stays zero
    x = clip(3)
    a, _ = plain(x)
    b, _ = seeing(x)
    for name in ("background", "streaks", "local_background", "gate_logits"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@torch.no_grad()
def test_only_with_the_memory_input_do_earlier_frames_reach_the_streak_estimate():
    a, b = two_clips_that_differ_only_before_the_last_frame()
    plain = tiny(False)
    # The paper's R-Net works from the frame alone: the same last frame, the same streaks.
    assert torch.equal(plain(a)[0].streaks[:, -1], plain(b)[0].streaks[:, -1])
    seeing = tiny(True)
    seeing.rnet.memory_input.weight.normal_(std=0.5)
    sa, sb = seeing(a)[0].streaks, seeing(b)[0].streaks
    assert (sa[:, -1] - sb[:, -1]).abs().max() > 1e-3
    # A clip's first frame has an empty memory: R-Net is the spatial one there, and so is the
    # single-frame path (stage 1), which never sees a memory.
    plain.load_state_dict(seeing.state_dict(), strict=False)
    assert torch.equal(sa[:, 0], plain(a)[0].streaks[:, 0])
    assert torch.equal(seeing.single_frame(a[:, 1])[1], plain.single_frame(a[:, 1])[1])


def test_fine_tuning_adds_the_memory_input_to_a_checkpoint_without_it(tmp_path):
    plain = tiny(False)
    plain_net = net_config("tiny", rain_gate=True)
    save_checkpoint(plain, tmp_path / "ck", name="j4r-tiny", version="t", net=plain_net)
    net = net_config("tiny", rain_gate=True, rnet_memory=True)
    model = build_model(net)
    initialise_from(model, tmp_path / "ck", net)
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert torch.count_nonzero(model.rnet.memory_input.weight) == 0
    # ...and it learns: the new conv gets a gradient from the second frame on.
    x = clip(4)
    out, _ = model(x)
    out.streaks[:, 1:].square().sum().backward()
    assert model.rnet.memory_input.weight.grad.abs().sum() > 0


def test_the_memory_view_learns_at_its_own_rate():
    from j4r.config import train_config
    from j4r.train import make_optimizer

    model = tiny(True)
    config = train_config("tiny", gate_lr_scale=5.0, rnet_memory_lr_scale=30.0)
    groups = make_optimizer(model, 2, config).param_groups
    assert [g["lr_scale"] for g in groups] == [0.01, 1.0, 5.0, 30.0]
    assert groups[3]["params"] == [model.rnet.memory_input.weight]
    assert all(model.rnet.memory_input.weight is not p for p in groups[1]["params"])

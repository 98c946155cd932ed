"""J4R-Net: streaming, causality, batching and sizes."""

from __future__ import annotations

import pytest
import torch

from j4r.config import net_config
from j4r.model import build_model, parameter_count


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model(net_config("tiny")).eval()
    # Random init leaves the recurrent path near-silent; bigger weights make the tests bite.
    with torch.no_grad():
        for p in net.fnet.parameters():
            p.mul_(3.0)
    return net


def clip(b=2, t=7, h=19, w=23, seed=1):
    return torch.rand(b, t, 1, h, w, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_one_pass_frame_by_frame_and_chunked_agree(model):
    x = clip()
    whole, memory_whole = model(x)
    memory = model.initial_state(x[:, 0])
    frames = []
    for t in range(x.shape[1]):
        out, memory = model.step(x[:, t], memory)
        frames.append(out.background)
    torch.testing.assert_close(torch.stack(frames, 1), whole.background)
    first, memory_chunk = model(x[:, :3])
    second, memory_chunk = model(x[:, 3:], memory_chunk)
    torch.testing.assert_close(
        torch.cat([first.background, second.background], 1), whole.background
    )
    torch.testing.assert_close(memory_chunk, memory_whole)


@torch.no_grad()
def test_memory_matters(model):
    """The recurrent path is live: the same frame with another history gives another output."""
    x = clip(b=1)
    with_history, _ = model(x)
    alone, _ = model(x[:, -1:])
    assert (with_history.background[:, -1] - alone.background[:, 0]).abs().max() > 1e-4


@torch.no_grad()
def test_causal_future_frames_never_change_the_past(model):
    x = clip()
    changed = x.clone()
    changed[:, 4:] = torch.rand_like(changed[:, 4:])
    a, _ = model(x)
    b, _ = model(changed)
    torch.testing.assert_close(a.background[:, :4], b.background[:, :4], rtol=0, atol=0)
    assert not torch.allclose(a.background[:, 4:], b.background[:, 4:])


@torch.no_grad()
def test_batch_of_two_equals_each_alone(model):
    x = clip(b=2)
    both, _ = model(x)
    for i in range(2):
        alone, _ = model(x[i : i + 1])
        torch.testing.assert_close(both.background[i : i + 1], alone.background)
        torch.testing.assert_close(both.alpha_logits[i : i + 1], alone.alpha_logits)


@pytest.mark.parametrize("size", [(1, 1), (7, 33), (32, 32), (45, 17)])
@torch.no_grad()
def test_any_frame_size(model, size):
    x = clip(b=1, t=2, h=size[0], w=size[1])
    out, memory = model(x)
    assert out.background.shape == x.shape
    assert out.alpha_logits.shape == (1, 2, 2, *size)
    assert memory.shape == (1, model.channels, *size)


def test_module_holds_no_state():
    net = build_model(net_config("tiny"))
    assert list(net.buffers()) == []


def test_paper_preset_is_about_the_released_size():
    n = parameter_count(build_model(net_config("paper")))
    assert 0.7e6 < n < 1.3e6, n


def test_rejects_rgb_input(model):
    with pytest.raises(ValueError, match=r"\(b, t, 1, h, w\)"):
        model(torch.rand(1, 2, 3, 8, 8))

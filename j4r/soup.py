"""Weight averaging ("model soup") of two fine-tunes of one network.

Two networks fine-tuned from a common ancestor can often be averaged tensor by tensor, and the
average can keep most of what each learned (one removes more unfamiliar rain, the other harms
dry texture less). The presence head is left out: it was fitted to one network's features, so
the average needs a head of its own (``derain fit-presence``).
"""

from __future__ import annotations

from pathlib import Path

from j4r.checkpoint import CheckpointError, ModelInfo, load_checkpoint

# NetConfig fields that must agree for tensors to line up and mean the same thing.
ARCHITECTURE_FIELDS = ("channels", "rnet_blocks", "cnet_blocks", "jrc_blocks", "dnet_layers",
                       "rain_gate")  # fmt: skip
# Parts a network may have and the other lack, because at zero they change nothing: a network
# without one computes what it would with the part's weights at zero, so those are averaged in.
ZERO_WHEN_ABSENT = {"rnet_memory": "rnet.memory_input.", "rnet_context": "rnet.context.out."}
# Where only a part's last layer is zero, its inner layers are taken from the network that has
# them: the average then carries that network's branch at ``share`` of its strength.
TAKEN_WHEN_ABSENT = ("rnet.context.body.",)


def average_weights(first: str | Path, second: str | Path, *, share: float):
    """``(1 − share) · first + share · second`` for every floating-point tensor of the network
    below the presence head; ``share`` in [0, 1]. Returns ``(model, info)`` of ``first`` with
    the presence head removed (``rain_presence`` off), in eval mode.

    Raises :class:`CheckpointError` where the two networks differ in architecture, and
    ``ValueError`` where ``share`` is outside [0, 1].
    """
    import dataclasses

    import torch

    from j4r.model import build_model

    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], not {share}")
    model_a, info_a = load_checkpoint(first)
    model_b, info_b = load_checkpoint(second)
    differ = [f for f in ARCHITECTURE_FIELDS
              if getattr(info_a.net, f) != getattr(info_b.net, f)]  # fmt: skip
    if differ:
        raise CheckpointError(
            f"{first} and {second} differ in {', '.join(differ)}: only fine-tunes of one "
            "network can be averaged"
        )
    either = {f: getattr(info_a.net, f) or getattr(info_b.net, f) for f in ZERO_WHEN_ABSENT}
    net = dataclasses.replace(info_a.net, rain_presence=False, presence_ramp=(0.0, 1.0), **either)
    model = build_model(net).eval()
    a, b = model_a.state_dict(), model_b.state_dict()
    absent_is_zero = tuple(ZERO_WHEN_ABSENT.values())

    def weight(state: dict, other: dict, key: str, like: torch.Tensor) -> torch.Tensor:
        if key in state:
            return state[key]
        if key.startswith(absent_is_zero):
            return torch.zeros_like(like)
        if key.startswith(TAKEN_WHEN_ABSENT) and key in other:
            return other[key]
        raise CheckpointError(f"{first} and {second}: {key} is in one network only")

    state = {}
    for key, like in model.state_dict().items():
        x, y = weight(a, b, key, like), weight(b, a, key, like)
        state[key] = (1.0 - share) * x + share * y if x.is_floating_point() else x
    model.load_state_dict(state)
    return model, dataclasses.replace(info_a, net=net)


def describe(first: ModelInfo, second: ModelInfo, share: float) -> dict:
    """What a checkpoint written from :func:`average_weights` records about its making."""
    return {
        "share": share,
        "first": first.identity,
        "second": second.identity,
    }

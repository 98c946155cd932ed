"""Step several clips through one network as one batch.

Each clip is processed by its own thread (decode → step → encode) and keeps its own recurrent
memory, which J4R-Net takes and returns explicitly. The :class:`StepBatcher` collects the
threads' step requests, stacks those with the same frame size into one batch, runs the network
once and hands every clip its own slice back, so the device stays full even when an actor holds
a few long videos rather than many short ones.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Request:
    rgb_b3hw: Any  # one frame, (1, 3, h, w) float in [0, 1]
    memory: Any  # (1, c, h, w) or None
    future: Future = field(default_factory=Future)


class StepBatcher:
    """Thread-safe: ``step`` blocks until its frame has been through the network.

    A batch runs when every registered clip has a request waiting, or after ``max_wait_s``, so
    a clip that is busy decoding never holds the others back for long.
    """

    def __init__(
        self, model, *, max_batch: int = 8, max_wait_s: float = 0.005, precision: str = "fp32"
    ):
        self.model = model
        self.precision = precision  # resolved: fp32 or bf16
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._lock = threading.Condition()
        self._pending: list[_Request] = []
        self._clips = 0
        self._running = False
        self.batches = 0
        self.frames = 0

    def register(self) -> None:
        with self._lock:
            self._clips += 1

    def unregister(self) -> None:
        with self._lock:
            self._clips -= 1
            self._lock.notify_all()

    def step(self, rgb_b3hw, memory):
        """``(derained rgb (1, 3, h, w), StepOutput, new memory)`` for one clip's frame."""
        request = _Request(rgb_b3hw, memory)
        with self._lock:
            self._pending.append(request)
            self._lock.notify_all()
        while True:
            with self._lock:
                deadline = time.monotonic() + self.max_wait_s
                while not request.future.done() and (self._running or not self._ready_to_run()):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 and not self._running:
                        break  # waited long enough: run whatever is pending
                    self._lock.wait(timeout=max(remaining, 0.001))
                if request.future.done():
                    return request.future.result()
                batch = self._take_batch()  # the oldest request's size; may not include ours
                self._running = True
            try:
                self._run(batch)
            finally:
                with self._lock:
                    self._running = False
                    self._lock.notify_all()

    def _ready_to_run(self) -> bool:
        return len(self._pending) >= min(self._clips, self.max_batch)

    def _take_batch(self) -> list[_Request]:
        """The oldest request and up to ``max_batch - 1`` others of the same frame size."""
        shape = self._pending[0].rgb_b3hw.shape
        batch = [r for r in self._pending if r.rgb_b3hw.shape == shape][: self.max_batch]
        taken = {id(r) for r in batch}
        self._pending = [r for r in self._pending if id(r) not in taken]
        return batch

    def _run(self, batch: list[_Request]) -> None:
        import torch

        from j4r.arch import StepOutput
        from j4r.model import derain_rgb_step

        try:
            rgb = torch.cat([r.rgb_b3hw for r in batch])
            memories = [
                r.memory if r.memory is not None else self.model.initial_state(r.rgb_b3hw[:, :1])
                for r in batch
            ]
            derained, out, memory = derain_rgb_step(
                self.model, rgb, torch.cat(memories), self.precision
            )
        except BaseException as exc:
            for r in batch:
                r.future.set_exception(exc)
            return
        self.batches += 1
        self.frames += len(batch)
        for i, r in enumerate(batch):
            piece = StepOutput(*(x[i : i + 1] for x in out))
            r.future.set_result((derained[i : i + 1], piece, memory[i : i + 1]))

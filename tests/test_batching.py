"""Several clips stepped together as one batch give each clip what it gets alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from j4r.checkpoint import load_checkpoint
from j4r.model import derain_rgb_step
from pipeline.io.video import EncodeOptions, read_chunks
from pipeline.stage.batching import StepBatcher
from pipeline.stage.config import StageConfig
from pipeline.stage.derain import DerainStage
from tests.helpers import moving_frames_thwc_u8, write_video


def run_alone(model, frames_t3hw):
    memory, out = None, []
    for t in range(frames_t3hw.shape[0]):
        rgb, _, memory = derain_rgb_step(model, frames_t3hw[t : t + 1], memory)
        out.append(rgb)
    return torch.cat(out)


@pytest.mark.parametrize("sizes", [[(16, 24)] * 3, [(16, 24), (20, 12), (16, 24)]])
def test_batched_clips_equal_clips_alone(tiny_checkpoint, sizes):
    model, _ = load_checkpoint(tiny_checkpoint)
    generator = torch.Generator().manual_seed(0)
    clips = [torch.rand(6 + i, 3, h, w, generator=generator) for i, (h, w) in enumerate(sizes)]
    batcher = StepBatcher(model, max_batch=4, max_wait_s=0.05)
    results: dict[int, torch.Tensor] = {}

    def worker(index: int) -> None:
        memory, out = None, []
        for t in range(clips[index].shape[0]):
            rgb, _, memory = batcher.step(clips[index][t : t + 1], memory)
            out.append(rgb)
        results[index] = torch.cat(out)
        batcher.unregister()

    for _ in clips:
        batcher.register()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(clips))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for index, clip in enumerate(clips):
        torch.testing.assert_close(results[index], run_alone(model, clip), atol=1e-5, rtol=1e-5)
    assert batcher.frames == sum(c.shape[0] for c in clips)
    assert batcher.batches < batcher.frames  # frames really shared batches


def test_stage_with_concurrent_videos_matches_one_at_a_time(tmp_path, tiny_checkpoint):
    sources = [
        write_video(tmp_path / f"in{i}.mkv", moving_frames_thwc_u8(5 + i, 16, 24, seed=i))
        for i in range(3)
    ]
    lossless = EncodeOptions(lossless=True)
    alone = DerainStage(StageConfig(tiny_checkpoint, device="cpu", encode=lossless))
    expected = [
        np.concatenate(list(read_chunks(alone.process(s, tmp_path / f"a{i}.mkv").output)))
        for i, s in enumerate(sources)
    ]
    together = DerainStage(
        StageConfig(tiny_checkpoint, device="cpu", encode=lossless, clips_per_batch=3)
    )
    together.setup()
    outputs: dict[int, str] = {}

    def work(i: int) -> None:
        outputs[i] = together.process(sources[i], tmp_path / f"b{i}.mkv").output

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for i in range(3):
        got = np.concatenate(list(read_chunks(outputs[i])))
        assert got.shape == expected[i].shape
        assert np.abs(got.astype(int) - expected[i]).max() <= 1  # float LSBs may round apart
    assert together.batcher.batches < together.batcher.frames

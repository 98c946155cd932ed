"""The CUDA path (run when a GPU is lent; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from j4r.checkpoint import load_checkpoint
from j4r.config import ClipConfig, train_config
from j4r.data import ClipSampler
from j4r.sources import CleanSource, package_dir, read_image_rgb
from j4r.train import make_optimizer, sample_batch, train_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_inference_matches_cpu():
    cpu, _ = load_checkpoint(device="cpu")
    gpu, _ = load_checkpoint(device="cuda")
    clip = torch.rand(2, 5, 1, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, _ = cpu(clip)
        got, _ = gpu(clip.cuda())
    torch.testing.assert_close(got.background.cpu(), expected.background, atol=2e-4, rtol=1e-3)


def test_bf16_training_step_on_cuda(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint, device="cuda")
    model.train()
    image = read_image_rgb(package_dir("skimage") / "data" / "brick.png")
    sampler = ClipSampler([CleanSource("brick", image)], ClipConfig(frames=3, size=32))
    config = train_config("tiny", stage1_steps=1, stage2_steps=1)
    optimizer = make_optimizer(model, 2, config)
    terms = train_step(
        model, optimizer, sample_batch(sampler, 1, config).to("cuda"), step=1, config=config
    )
    assert terms["stage"] == 2 and 0 < terms["joint"] < 1


def test_cuda_bf16_stage_batches_clips_and_matches_fp32(tmp_path):
    """bf16 autocast + channels_last on the GPU, several clips per batch, tiles: ≥ 40 dB of
    the fp32 CPU path (measured bf16 gaps are ~55 dB)."""
    import numpy as np

    from j4r.metrics import psnr
    from j4r.model import derain_rgb_step
    from pipeline.io.video import EncodeOptions, read_chunks
    from pipeline.stage.config import StageConfig
    from pipeline.stage.derain import DerainStage
    from tests.helpers import moving_frames_thwc_u8, write_video

    frames = moving_frames_thwc_u8(4, 128, 352)
    src = write_video(tmp_path / "clip.mkv", frames)
    config = StageConfig(
        None, device="cuda", precision="auto", encode=EncodeOptions(lossless=True),
        clips_per_batch=2, tile_pixels=200 * 128, tile_overlap=32,
    )  # fmt: skip
    stage = DerainStage(config)
    stage.setup()
    assert stage.precision == "bf16"
    result = stage.process(src, tmp_path / "out.mkv")
    assert result.tiles == 2
    got = np.concatenate(list(read_chunks(result.output)))
    cpu, _ = load_checkpoint(device="cpu")
    memory = None
    for t, frame in enumerate(frames):
        rgb = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
        expected, _, memory = derain_rgb_step(cpu, rgb, memory)
        assert psnr(torch.from_numpy(got[t]).permute(2, 0, 1) / 255, expected[0]) > 40

"""Inference precision (auto/fp32/bf16) and tiled inference for frames of any size.

bf16 is slow on CPUs without AMX or AVX512-BF16 (this project's CI machine: about 10x slower
convolutions), so the bf16 tests keep to tiny frames. Speed and memory figures live in
``derain bench``, not here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import j4r.precision as precision_module
from j4r.checkpoint import load_checkpoint
from j4r.config import net_config
from j4r.metrics import psnr
from j4r.model import AtPrecision, build_model, derain_rgb_step
from j4r.precision import resolve_precision
from j4r.tiling import ALPHA_BINS, TiledStats, derain_tiled_frame, plan_spans, plan_tiles
from pipeline.cli.main import main
from pipeline.errors import UsageError, VideoError
from pipeline.io.video import EncodeOptions, read_chunks
from pipeline.stage.config import DEFAULT_TILE_OVERLAP, StageConfig
from pipeline.stage.derain import DerainStage, derain_frames
from pipeline.stage.tiles import (
    SpilledMemories,
    TiledClip,
    check_frame_fits,
    chunk_frames_for,
    estimate_peak_bytes,
)
from tests.helpers import moving_frames_thwc_u8, write_video

# ---------------------------------------------------------------------------------- precision


def test_auto_precision_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for: honoured, even where slow
    with pytest.raises(ValueError):
        resolve_precision("fp16", "cpu")


def test_stage_config_takes_the_three_precisions():
    for name in ("auto", "fp32", "bf16"):
        assert StageConfig(precision=name).precision == name
    with pytest.raises(UsageError):
        StageConfig(precision="fp16")
    with pytest.raises(UsageError):
        StageConfig(tile_pixels=1000, tile_overlap=64)  # tiles smaller than their overlap


def test_stage_resolves_precision_on_its_device(tiny_checkpoint):
    stage = DerainStage(StageConfig(tiny_checkpoint, device="cpu", precision="auto"))
    stage.setup()
    assert stage.precision == resolve_precision("auto", "cpu")
    stage = DerainStage(StageConfig(tiny_checkpoint, device="cpu", precision="bf16"))
    stage.setup()
    assert stage.precision == "bf16"
    assert stage.model.features.head.weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_agrees_with_fp32_and_keeps_an_fp32_memory():
    """Shipped model, 6 frames of 40x48: bf16 convolutions, outputs far above 45 dB apart."""
    model, _ = load_checkpoint()
    frames = torch.from_numpy(moving_frames_thwc_u8(6, 40, 48)).permute(0, 3, 1, 2) / 255
    bf16 = AtPrecision(load_checkpoint()[0], "bf16")
    mem32 = mem16 = None
    for t in range(frames.shape[0]):
        rgb32, _, mem32 = derain_rgb_step(model, frames[t : t + 1], mem32)
        rgb16, out16, mem16 = derain_rgb_step(bf16.net, frames[t : t + 1], mem16, "bf16")
        assert mem16.dtype == torch.float32 and out16.background.dtype == torch.float32
        assert psnr(rgb16[0], rgb32[0]) > 45
    clip = frames[None, :, :1]
    out16, _ = bf16(clip)  # whole-clip path (evaluation) runs the same step
    assert out16.background.dtype == torch.float32


def test_bf16_memory_does_not_drift_over_a_long_clip(tiny_checkpoint):
    """Tiny net, 16x16, 240 frames: the bf16-vs-fp32 gap stays flat (no accumulating error).
    ``derain bench`` runs the same check over 3,000 frames with the shipped model."""
    model, _ = load_checkpoint(tiny_checkpoint)
    frames = torch.from_numpy(moving_frames_thwc_u8(240, 16, 16)).permute(0, 3, 1, 2) / 255
    mem32 = mem16 = None
    errors = []
    for t in range(frames.shape[0]):
        rgb32, _, mem32 = derain_rgb_step(model, frames[t : t + 1], mem32)
        rgb16, _, mem16 = derain_rgb_step(model, frames[t : t + 1], mem16, "bf16")
        errors.append(float((rgb16 - rgb32).abs().mean()))
    early, late = np.mean(errors[20:70]), np.mean(errors[-50:])
    assert late < 2 * early + 1e-4, (early, late)


# -------------------------------------------------------------------------------------- tiles


@pytest.mark.parametrize(("length", "count", "overlap"), [(100, 1, 0), (352, 2, 64), (1000, 5, 64)])
def test_spans_cover_once_and_weights_sum_to_one(length, count, overlap):
    spans = plan_spans(length, count, overlap)
    total = np.zeros(length)
    owned = np.zeros(length, dtype=int)
    for span in spans:
        total[span.start : span.stop] += span.weights
        owned[span.core_start : span.core_stop] += 1
        assert span.start <= span.core_start < span.core_stop <= span.stop
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert (owned == 1).all()
    for a, b in itertools.pairwise(spans):
        assert a.stop - b.start >= overlap


def test_tile_grid_keeps_the_budget():
    grid = plan_tiles(4320, 7680, 2**21, 64)
    assert grid.tile_pixels <= 2**21 and len(grid) > 1
    assert plan_tiles(1080, 1920, 2**21, 64).tile_pixels == 1920 * 1080  # fits: one tile
    with pytest.raises(ValueError):
        plan_tiles(1000, 1000, 100 * 100, 64)


def run_tiled(step, frames_thwc_u8, grid, memories, presence_ramp=(0.0, 1.0), chroma_fill=False):
    outs = []
    for frame in frames_thwc_u8:
        out, _ = derain_tiled_frame(
            step,
            torch.from_numpy(frame),
            grid,
            memories,
            presence_ramp=presence_ramp,
            chroma_fill=chroma_fill,
        )
        outs.append(out.numpy())
    return np.stack(outs)


def test_tiled_output_matches_untiled_with_the_shipped_model():
    """Shipped model, 352x128 in two tiles with the default overlap, 12 frames: >= 45 dB
    from untiled on every frame (the memory's receptive field grows over the first frames)."""
    model, _ = load_checkpoint()
    frames = moving_frames_thwc_u8(12, 128, 352, seed=4)
    grid = plan_tiles(128, 352, 200 * 128, DEFAULT_TILE_OVERLAP)
    assert len(grid) == 2

    def step(rgb, memory):
        return derain_rgb_step(model, rgb, memory)

    tiled = run_tiled(
        step, frames, grid, [None] * len(grid), model.presence_ramp, model.chroma_fill
    )
    memory = None
    for t, frame in enumerate(frames):
        rgb = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
        whole, _, memory = derain_rgb_step(model, rgb, memory)
        whole_u8 = (whole[0].permute(1, 2, 0) * 255).round().byte().numpy()
        mse = np.mean((tiled[t].astype(float) - whole_u8) ** 2)
        assert mse == 0 or 10 * np.log10(255**2 / mse) >= 45, (t, mse)


def test_tiled_chroma_fill_in_bands_matches_one_band():
    """Tiled frames restore chroma in bands of rows, each with CHROMA_FILL_REACH rows more
    around it: bands of 20 rows give the frame one band of all rows gives (to one 8-bit level,
    from float rounding), and chroma is really restored (the output differs from pass-through)."""
    torch.manual_seed(0)
    net = net_config("tiny", chroma_fill=True)
    model = build_model(net).eval()
    frames = moving_frames_thwc_u8(3, 96, 64, seed=6)
    grid = plan_tiles(96, 64, 48 * 64, 12)

    def step(rgb, memory):
        return derain_rgb_step(model, rgb, memory)

    def tiled(band_rows, chroma_fill=True):
        memories: list = [None] * len(grid)
        outs = []
        for frame in frames:
            out, _ = derain_tiled_frame(
                step, torch.from_numpy(frame), grid, memories, presence_ramp=(0.0, 1.0),
                chroma_fill=chroma_fill, band_rows=band_rows,
            )  # fmt: skip
            outs.append(out.numpy().astype(int))
        return np.stack(outs)

    one_band = tiled(10_000)
    assert np.abs(tiled(20) - one_band).max() <= 1
    assert np.abs(tiled(10_000, chroma_fill=False) - one_band).max() > 2


def test_tiled_chunked_equals_one_pass_and_memory_is_carried(tiny_checkpoint, tmp_path):
    """Each tile's memory travels across frames and chunks (also through a spill file)."""
    model, _ = load_checkpoint(tiny_checkpoint)
    frames = moving_frames_thwc_u8(7, 64, 96, seed=2)
    config = StageConfig(tiny_checkpoint, tile_pixels=48 * 64, tile_overlap=12)

    def step(rgb, memory):
        return derain_rgb_step(model, rgb, memory)

    def make_tiles(width, height):
        return TiledClip.for_frame(width, height, config, model.channels, "cpu")

    def run(chunks):
        outs = [f for f, _ in derain_frames(step, chunks, device="cpu", make_tiles=make_tiles)]
        return np.concatenate(outs)

    one_pass = run([frames])
    chunked = run([frames[:1], frames[1:4], frames[4:]])
    np.testing.assert_array_equal(one_pass, chunked)
    assert len(make_tiles(96, 64).grid) > 1
    # A fresh memory at the third frame (what losing it across a chunk would do) differs.
    restarted = np.concatenate([run([frames[:2]]), run([frames[2:]])])
    assert not np.array_equal(one_pass, restarted)
    # Memories kept in a temp file give the same frames, bit for bit.
    grid = make_tiles(96, 64).grid
    shapes = [(1, model.channels, r.size, c.size) for r, c in grid.tiles]
    spilled = SpilledMemories(shapes, "cpu", directory=str(tmp_path))
    np.testing.assert_array_equal(run_tiled(step, frames, grid, spilled), one_pass)
    spilled.close()


def test_tiled_stage_writes_tiles_and_precision_to_the_manifest(tmp_path, tiny_checkpoint):
    write_video(tmp_path / "in" / "big.mkv", moving_frames_thwc_u8(3, 64, 96))
    args = ["run", str(tmp_path / "in"), str(tmp_path / "out"), "--checkpoint"]
    args += [str(tiny_checkpoint), "--runner", "sequential", "--no-progress", "--lossless"]
    args += ["--precision", "fp32", "--tile-pixels", str(48 * 64), "--tile-overlap", "12"]
    assert main(args) == 0
    from pipeline.io.storage import open_location
    from pipeline.job.manifest import SCHEMA_VERSION, ManifestStore

    store = ManifestStore(open_location(str(tmp_path / "out" / "_manifests")))
    row = store.read("videos").to_pylist()[0]
    assert (row["precision"], row["schema_version"]) == ("fp32", SCHEMA_VERSION)
    assert row["tiles"] > 1
    out = np.concatenate(list(read_chunks(tmp_path / "out" / "big.mkv")))
    assert out.shape == (3, 64, 96, 3)


def test_chunks_are_bounded_by_pixels():
    config = StageConfig(chunk_frames=16)
    assert chunk_frames_for(320, 240, config) == 16
    assert chunk_frames_for(3840, 2160, config) == 2
    assert chunk_frames_for(7680, 4320, config) == 1


def test_a_frame_too_big_even_for_tiles_fails_alone(tmp_path, tiny_checkpoint):
    config = StageConfig(tiny_checkpoint, device="cpu")
    check_frame_fits(7680, 4320, config, channels=24)  # 8K fits the default 4 GiB
    with pytest.raises(VideoError, match="MiB"):
        check_frame_fits(40000, 40000, config, channels=24)
    small, big = (48, 64), (96, 128)
    write_video(tmp_path / "in" / "small.mkv", moving_frames_thwc_u8(2, *small))
    write_video(tmp_path / "in" / "big.mkv", moving_frames_thwc_u8(2, *big))
    # A limit between the two estimates: the big video fails with its reason, the other runs.
    lo = estimate_peak_bytes(small[1], small[0], config, 8, lossless=True)
    hi = estimate_peak_bytes(big[1], big[0], config, 8, lossless=True)
    limit = str((lo + hi) / 2 / 2**20)
    args = ["run", str(tmp_path / "in"), str(tmp_path / "out"), "--checkpoint"]
    args += [str(tiny_checkpoint), "--runner", "sequential", "--no-progress", "--lossless"]
    assert main([*args, "--memory-limit-mb", limit]) == 1
    assert (tmp_path / "out" / "small.mkv").exists()
    assert not (tmp_path / "out" / "big.mkv").exists()
    files = list((tmp_path / "out" / "_manifests" / "videos").rglob("*.parquet"))
    rows = {r["source_key"]: r for f in files for r in pq.read_table(f).to_pylist()}
    assert rows["big.mkv"]["error_type"] == "VideoError"
    assert "even in tiles" in rows["big.mkv"]["error_message"]


def test_tiled_stats_quantile_is_close_to_kthvalue():
    prob = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) ** 3
    hist = torch.histc(prob, bins=ALPHA_BINS, min=0, max=1).double()
    stats = TiledStats(prob.numel(), 0.0, 0, hist, 0.0, 0.0)
    exact = float(prob.kthvalue(round(0.95 * prob.numel())).values)
    assert abs(stats.alpha_quantile(0.95) - exact) <= 1 / ALPHA_BINS


def test_fp32_stage_output_is_unchanged_by_the_precision_plumbing(tmp_path, tiny_checkpoint):
    """fp32, untiled: the stage equals the plain model step, as before precision existed."""
    frames = moving_frames_thwc_u8(4, 24, 32)
    src = write_video(tmp_path / "clip.mkv", frames)
    stage = DerainStage(
        StageConfig(tiny_checkpoint, device="cpu", precision="fp32", encode=EncodeOptions(True))
    )
    out = np.concatenate(list(read_chunks(stage.process(src, tmp_path / "o.mkv").output)))
    model, _ = load_checkpoint(tiny_checkpoint)
    memory, expected = None, []
    for frame in frames:
        rgb = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
        derained, _, memory = derain_rgb_step(model, rgb, memory)
        expected.append((derained[0].permute(1, 2, 0) * 255).round().byte().numpy())
    np.testing.assert_array_equal(out, np.stack(expected))


def test_schema_1_shards_read_back_with_null_precision(tmp_path):
    import pyarrow as pa

    from pipeline.job.manifest import videos_schema

    old = pa.schema([f for f in videos_schema() if f.name not in ("precision", "tiles")])
    path = tmp_path / "old.parquet"
    row = {"schema_version": 1, "run_id": "r", "video_id": "v"}
    pq.write_table(pa.Table.from_pylist([row], schema=old), path)
    table = pq.read_table(path, schema=videos_schema())
    assert table.column("precision").to_pylist() == [None]
    assert table.column("tiles").to_pylist() == [None]

"""The quick-start demo and the benchmark command, end to end with a tiny network."""

from __future__ import annotations

import json

import pytest

from pipeline.cli.main import main


@pytest.mark.slow
def test_demo_runs_the_archive_job_and_reports(tmp_path, tiny_checkpoint, capsys):
    code = main(
        [
            "demo",
            "--out",
            str(tmp_path),
            "--checkpoint",
            str(tiny_checkpoint),
            "--frames",
            "4",
            "--runner",
            "sequential",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "PSNR rainy" in out and "bikes_mp4-0-light" in out
    assert len(list((tmp_path / "derained").glob("*.mp4"))) == 3
    assert len(list((tmp_path / "compare").glob("*.png"))) == 3
    from pipeline.io.storage import open_location
    from pipeline.job.manifest import ManifestStore

    store = ManifestStore(open_location(str(tmp_path / "derained" / "_manifests")))
    assert [run["ok"] for run in store.commits()] == [3]


@pytest.mark.slow
def test_bench_writes_consistent_figures(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--checkpoint",
            str(tiny_checkpoint),
            "--frames",
            "4",
            "--width",
            "32",
            "--height",
            "24",
            "--device",
            "cpu",
            "--bf16-frames",
            "2",
            "--drift-frames",
            "20",
            "--big",
            "64x48",
            "--big-frames",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    r = json.loads(out.read_text())
    assert r["frames_long"] == 10 * r["frames_short"] == 40
    # End-to-end runs at `auto` precision: bf16 on CPUs with bf16 units, so the ratio is
    # against the model-only rate at that precision, not always fp32's.
    precision = r["end_to_end_precision"]
    assert precision == r["precision_auto"]
    model_fps = r["model_only_fps_bf16"] if precision == "bf16" else r["model_only_fps"]
    assert r["e2e_over_model"] == pytest.approx(r["end_to_end_fps"] / model_fps)
    assert r["achieved_gflops"] == pytest.approx(r["gflops_per_frame"] * r["model_only_fps"])
    assert 0 < r["gflops_per_frame"] < 1 and r["matmul_ceiling_gflops"] > 0
    assert r["peak_rss_short_mib"] > 50
    assert r["precision_auto"] in ("fp32", "bf16") and isinstance(r["cpu_flags"], list)
    assert r["bf16_over_fp32"] == pytest.approx(r["model_only_fps_bf16"] / r["model_only_fps"])
    for key in ("matmul_ceiling_bf16_gflops", "conv_ceiling_gflops", "conv_ceiling_bf16_gflops"):
        assert r[key] > 0
    assert r["drift_frames"] == 20 and r["drift_psnr_last_db"] > 30
    assert (r["big_width"], r["big_frames"], r["big_tiles"]) == (64, 2, 1)
    assert r["big_peak_rss_mib"] > 50
    assert "end-to-end / model-only" in capsys.readouterr().out

"""`derain run` on local folders: outputs, failures, chunking, the light CLI process."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from j4r.checkpoint import load_checkpoint
from j4r.model import derain_rgb_step
from pipeline.cli.main import main
from pipeline.io.video import EncodeOptions, probe, read_chunks
from pipeline.stage.config import StageConfig
from pipeline.stage.derain import DerainStage
from tests.helpers import moving_frames_thwc_u8, write_video


def derain_run(src, dst, checkpoint, *flags: str) -> int:
    args = ["run", str(src), str(dst), "--checkpoint", str(checkpoint), "--no-progress"]
    return main([*args, "--runner", "sequential", *flags])


def videos_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "_manifests")


def make_archive(root):
    write_video(root / "a.mkv", moving_frames_thwc_u8(7, 24, 32, seed=1), fps=25)
    write_video(
        root / "sub dir" / "b.mp4",
        moving_frames_thwc_u8(5, 20, 36, seed=2),
        fps=Fraction(30000, 1001),
        codec="libx264",
    )
    write_video(
        root / "sub dir" / "c.avi", moving_frames_thwc_u8(4, 16, 16, seed=3), fps=12, codec="mpeg4"
    )
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    (root / "empty.mov").write_bytes(b"")
    (root / "notes.txt").write_text("not a video, not picked up")


def test_report_of_the_latest_run_lists_videos_with_plots_and_thumbnails(
    tmp_path, tiny_checkpoint, capsys
):
    assert main(["report", str(tmp_path / "out")]) == 2  # no such destination
    assert main(["manifest", str(tmp_path / "out")]) == 2  # the same answer
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    assert main(["report", str(tmp_path / "out")]) == 0  # exists, nothing committed yet
    assert main(["manifest", str(tmp_path / "out")]) == 0  # the same answer
    out = capsys.readouterr().out
    assert "no committed runs" in out and "no runs under" in out
    make_archive(tmp_path / "in")
    derain_run(tmp_path / "in", tmp_path / "out", tiny_checkpoint)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out"), "--print"]) == 0
    out = capsys.readouterr().out
    assert "3 ok, 2 failed" in out and "| broken.mp4 | failed |" in out
    (folder,) = (tmp_path / "out/_manifests/reports").iterdir()
    report = (folder / "report.md").read_text()
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert len(pngs) == 6  # alpha plot and thumbnail for each of the 3 good videos
    assert all(f"({name})" in report for name in pngs)  # every image is linked
    assert all((folder / name).read_bytes().startswith(b"\x89PNG") for name in pngs)
    assert main(["report", str(tmp_path / "out"), "--run", "nope"]) == 2


def test_run_folder_keeps_layout_and_reports_failures(tmp_path, tiny_checkpoint, capsys):
    make_archive(tmp_path / "in")
    code = derain_run(tmp_path / "in", tmp_path / "out", tiny_checkpoint)
    assert code == 1  # two inputs are broken; the others are done
    out = capsys.readouterr().out
    assert "3 ok, 2 failed" in out and "broken.mp4" in out and "empty.mov" in out
    produced = sorted(
        p.relative_to(tmp_path / "out").as_posix()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file() and "_manifests" not in p.parts
    )
    assert produced == ["a.mp4", "sub dir/b.mp4", "sub dir/c.mp4"]
    for name, source in (
        ("a.mp4", "a.mkv"),
        ("sub dir/b.mp4", "sub dir/b.mp4"),
        ("sub dir/c.mp4", "sub dir/c.avi"),
    ):
        src, dst = probe(tmp_path / "in" / source), probe(tmp_path / "out" / name)
        assert (dst.frames, dst.width, dst.height, dst.fps) == (
            src.frames,
            src.width,
            src.height,
            src.fps,
        )


def test_lossless_output_equals_direct_model_inference(tmp_path, tiny_checkpoint):
    """End to end (decode, net, encode) equals the model on the decoded frames, any chunking.

    Both in fp32: `auto` is bf16 on CPUs with bf16 units, 1 LSB off fp32 (tested elsewhere)."""
    frames = moving_frames_thwc_u8(9, 24, 32)
    src = write_video(tmp_path / "clip.mkv", frames)
    outputs = []
    for chunk in (2, 16):
        stage = DerainStage(
            StageConfig(
                tiny_checkpoint,
                device="cpu",
                precision="fp32",
                chunk_frames=chunk,
                encode=EncodeOptions(lossless=True),
            )
        )
        result = stage.process(src, tmp_path / f"out{chunk}" / "clip.mkv")
        assert result.frames == 9 and len(result.frame_stats) == 9
        outputs.append(np.concatenate(list(read_chunks(result.output))))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    model, _ = load_checkpoint(tiny_checkpoint)
    memory, expected = None, []
    for frame in frames:
        rgb = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
        derained, _, memory = derain_rgb_step(model, rgb, memory)
        expected.append((derained[0].permute(1, 2, 0) * 255).round().byte().numpy())
    np.testing.assert_array_equal(outputs[0], np.stack(expected))


def test_single_file_and_lossless_suffix(tmp_path, tiny_checkpoint):
    src = write_video(tmp_path / "one.mp4", moving_frames_thwc_u8(3, 16, 16), codec="libx264")
    code = derain_run(src, tmp_path / "o", tiny_checkpoint, "--lossless")
    assert code == 0
    assert videos_in(tmp_path / "o") == ["one.mkv"]


def test_same_stem_inputs_do_not_overwrite_each_other(tmp_path, tiny_checkpoint):
    write_video(tmp_path / "in" / "x.mkv", moving_frames_thwc_u8(2, 16, 16))
    write_video(tmp_path / "in" / "x.mp4", moving_frames_thwc_u8(2, 16, 16), codec="libx264")
    assert derain_run(tmp_path / "in", tmp_path / "o", tiny_checkpoint) == 0
    assert videos_in(tmp_path / "o") == ["x.mp4", "x_mp4.mp4"]


def test_missing_source_is_a_usage_error(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "from pipeline.cli.main import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['run', '--help'])\n"
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_progress_is_in_frames_and_moves_while_a_long_video_runs(tmp_path, tiny_checkpoint):
    from dataclasses import asdict

    from pipeline.job.archive import ArchiveJob, run_archive
    from pipeline.runtime.runners import SequentialRunner
    from pipeline.stage.config import StageConfig

    write_video(tmp_path / "in" / "long.mkv", moving_frames_thwc_u8(12, 16, 16))
    write_video(tmp_path / "in" / "short.mkv", moving_frames_thwc_u8(3, 16, 16))
    (tmp_path / "in" / "bad.mp4").write_bytes(b"not a video")
    seen: list[dict] = []
    job = ArchiveJob(
        source=str(tmp_path / "in"),
        destination=str(tmp_path / "out"),
        segment_frames=4,
        warmup_frames=2,
    )
    run_archive(
        job,
        SequentialRunner(StageConfig(str(tiny_checkpoint), device="cpu")),
        model_name="j4r-tiny",
        model_version="test",
        on_progress=lambda p: seen.append(asdict(p)),
    )
    first, last = seen[0], seen[-1]
    assert first == {"videos_total": 3, "videos_done": 0, "frames_total": 15, "frames_done": 0}
    assert last == {"videos_total": 3, "videos_done": 3, "frames_total": 15, "frames_done": 15}
    # the 12-frame video runs as 3 segments: the frames move before the video is done
    during = [p["frames_done"] for p in seen if p["videos_done"] == seen[1]["videos_done"]]
    assert len(set(during)) > 1
    assert [p["frames_done"] for p in seen] == sorted(p["frames_done"] for p in seen)


def run_with_progress(tmp_path, runner, frames: int) -> list[tuple[int, int]]:
    """(videos done, frames done) of every progress report of a run of one video."""
    from pipeline.job.archive import ArchiveJob, run_archive

    write_video(tmp_path / "in" / "one.mkv", moving_frames_thwc_u8(frames, 32, 32))
    job = ArchiveJob(source=str(tmp_path / "in"), destination=str(tmp_path / "out"))
    seen: list[tuple[int, int]] = []
    try:
        run_archive(
            job, runner, model_name="j4r-tiny", model_version="test",
            on_progress=lambda p: seen.append((p.videos_done, p.frames_done)),
        )  # fmt: skip
    finally:
        runner.close()
    return seen


def test_progress_moves_chunk_by_chunk_inside_one_video(tmp_path, tiny_checkpoint, monkeypatch):
    """Not only per finished video or segment: a 1,500-frame video would sit at 0 for minutes."""
    from pipeline.job import archive
    from pipeline.runtime.runners import SequentialRunner

    monkeypatch.setattr(archive, "PROGRESS_EVERY_S", 0.0)
    runner = SequentialRunner(StageConfig(str(tiny_checkpoint), device="cpu", chunk_frames=2))
    seen = run_with_progress(tmp_path, runner, frames=10)
    assert [f for v, f in seen if v == 0] == [0, 2, 4, 6, 8, 10]  # planned, then each chunk
    assert seen[-1] == (1, 10)


@pytest.mark.ray
def test_progress_moves_inside_one_video_on_ray(
    tmp_path, tiny_checkpoint, ray_session, monkeypatch
):
    """The driver asks busy actors how far their videos are (``DerainActor.progress``)."""
    from pipeline.job import archive
    from pipeline.runtime import ray_runner

    monkeypatch.setattr(archive, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(ray_runner, "PROGRESS_EVERY_S", 0.05)
    config = StageConfig(str(tiny_checkpoint), device="cpu", chunk_frames=2)
    seen = run_with_progress(tmp_path, ray_runner.RayRunner(config, workers=1), frames=240)
    during = {f for v, f in seen if v == 0 and 0 < f < 240}
    assert during, seen  # reported while the video was still running
    assert all(f % 2 == 0 for f in during)  # whole chunks
    assert seen[-1] == (1, 240)

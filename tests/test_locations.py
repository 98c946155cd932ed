"""SRC == DST, DST inside SRC, SRC inside DST: refused (exit 2) before anything is read or written.
(issue 11, item 1)"""

from __future__ import annotations

import os

import pytest

from pipeline.cli.main import main
from pipeline.errors import UsageError
from pipeline.io.locations import (
    check_outputs_outside_source,
    check_source_and_destination,
    place_of,
)
from tests.helpers import moving_frames_thwc_u8, write_video


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("s3://b/in", "s3://b/in/"),
        ("s3://b/in/", "s3a://b//in"),
        ("s3://b/in", "s3://b/in/out"),
        ("s3://b/in", "s3://b/in/./x/../out/"),
        ("s3://b", "s3://b/out"),
    ],
)
def test_overlapping_s3_prefixes_are_refused(src, dst):
    with pytest.raises(UsageError, match="SRC"):
        check_source_and_destination(src, dst)


@pytest.mark.parametrize(
    ("src", "dst"),
    [("s3://b/in", "s3://b/input"), ("s3://b/in", "s3://c/in"), ("s3://b/in", "/b/in/out")],
)
def test_separate_places_are_allowed(src, dst):
    check_source_and_destination(src, dst)


def test_local_spellings_and_symlinks(tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    monkeypatch.chdir(tmp_path)
    assert place_of("in") == place_of(f"file://{tmp_path}/in/") == place_of(str(tmp_path / "in"))
    os.symlink(tmp_path / "in", tmp_path / "alias")
    (tmp_path / "in" / "out").mkdir()
    os.symlink(tmp_path / "in" / "out", tmp_path / "elsewhere")
    for src, dst in [
        ("in", "./in/"),
        ("in", f"file://{tmp_path}/in"),
        ("in", "alias"),
        (f"{tmp_path}/in", "in/sub/../out"),
        ("in", "elsewhere"),  # a symlink outside SRC that points inside it
        ("alias/", "in/new/folder"),
    ]:
        with pytest.raises(UsageError):
            check_source_and_destination(src, dst)
    check_source_and_destination("in", "out")


def test_single_file_source_never_overwrites_itself(tmp_path):
    clip = tmp_path / "clip.mp4"
    with pytest.raises(UsageError, match="overwrite"):
        check_source_and_destination(clip, tmp_path, extension=".mp4", source_is_file=True)
    with pytest.raises(UsageError, match="overwrite"):
        check_source_and_destination(clip, clip, extension=".mp4", source_is_file=True)
    # clip.mp4 -> DIR/clip.mkv beside it is harmless
    check_source_and_destination(clip, tmp_path, extension=".mkv", source_is_file=True)


def test_source_inside_destination_only_when_outputs_stay_outside_it():
    check_source_and_destination("s3://b/out/in", "s3://b/out")
    check_outputs_outside_source("s3://b/out/in", "s3://b/out", ["a.mp4", "input/b.mp4"])
    with pytest.raises(UsageError, match="inside SRC"):
        check_outputs_outside_source("s3://b/out/in", "s3://b/out", ["a.mp4", "in/b.mp4"])
    with pytest.raises(UsageError, match="_manifests"):
        check_source_and_destination("s3://b/out/_manifests", "s3://b/out")


def _tree(tmp_path):
    root = tmp_path / "videos"
    write_video(root / "a.mkv", moving_frames_thwc_u8(2, 16, 16))
    write_video(root / "in" / "b.mkv", moving_frames_thwc_u8(2, 16, 16))
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def _unchanged(before) -> bool:
    root = next(iter(before)).parent
    while root.name != "videos":
        root = root.parent
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


@pytest.mark.parametrize(
    "dst",
    ["videos", "videos/", "./videos/out", "file://{tmp}/videos", "link", "link/out"],
)
def test_derain_run_refuses_overlap_before_touching_anything(
    tmp_path, monkeypatch, capsys, tiny_checkpoint, dst
):
    before = _tree(tmp_path)
    os.symlink(tmp_path / "videos", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    dst = dst.format(tmp=tmp_path)
    code = main(["run", "videos", dst, "--checkpoint", str(tiny_checkpoint), "--runner",
                 "sequential", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "SRC" in err and "Traceback" not in err
    assert _unchanged(before)  # nothing written: no output, no _manifests, no folder
    assert not (tmp_path / "videos" / "out").exists()


def test_derain_run_refuses_outputs_landing_inside_a_source_within_dst(
    tmp_path, capsys, tiny_checkpoint
):
    _tree(tmp_path)
    # SRC inside DST: the output of SRC's videos/c.mkv is DST/videos/c.mp4, inside SRC.
    src, dst = tmp_path / "videos", tmp_path
    write_video(tmp_path / "videos" / "videos" / "c.mkv", moving_frames_thwc_u8(2, 16, 16))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "videos").rglob("*")}
    code = main(["run", str(src), str(dst), "--checkpoint", str(tiny_checkpoint), "--runner",
                 "sequential", "--no-progress"])  # fmt: skip
    assert code == 2 and "inside SRC" in capsys.readouterr().err
    assert _unchanged(before) and not (tmp_path / "_manifests").exists()


def test_derain_run_refuses_overlapping_s3_prefixes(s3, capsys, tiny_checkpoint):
    fs, bucket, options = s3
    fs.pipe(f"{bucket}/in/a.mp4", b"x")
    for dst in (f"s3://{bucket}/in/", f"s3://{bucket}/in/out"):
        code = main(["run", f"s3://{bucket}/in", dst, "--endpoint-url", options["endpoint_url"],
                     "--checkpoint", str(tiny_checkpoint), "--runner", "sequential"])  # fmt: skip
        assert code == 2 and "SRC" in capsys.readouterr().err
    fs.invalidate_cache()
    assert fs.find(bucket) == [f"{bucket}/in/a.mp4"]

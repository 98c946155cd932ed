"""The manifest Delta tables: the documented DuckDB and Polars examples run on a real run's
tables, the old (version 1) layout is refused, then migrated exactly once, and writers racing
for one table on S3 each commit once."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli.main import main
from pipeline.io.storage import list_videos, open_location
from pipeline.job.manifest import ManifestStore, frames_schema, videos_schema
from pipeline.job.plan import video_id_of
from tests.helpers import moving_frames_thwc_u8, write_video

DOCS = Path(__file__).resolve().parents[1] / "docs" / "manifests.md"


def derain_run(src, dst, checkpoint) -> int:
    args = ["run", str(src), str(dst), "--checkpoint", str(checkpoint), "--no-progress"]
    return main([*args, "--runner", "sequential"])


def documented_examples() -> list[str]:
    """The Python blocks of docs/manifests.md that query ``derained/_manifests``."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    return [b for b in blocks if re.search(r"[\"']derained/_manifests", b)]


def test_documented_duckdb_and_polars_examples_run_on_a_real_runs_tables(
    tmp_path, tiny_checkpoint, monkeypatch
):
    write_video(tmp_path / "in" / "a.mkv", moving_frames_thwc_u8(5, 16, 24, seed=1))
    write_video(tmp_path / "in" / "b" / "c.mkv", moving_frames_thwc_u8(3, 16, 16, seed=2))
    (tmp_path / "in" / "broken.mp4").write_bytes(b"not a video")
    assert derain_run(tmp_path / "in", tmp_path / "derained", tiny_checkpoint) == 1
    assert derain_run(tmp_path / "in", tmp_path / "derained", tiny_checkpoint) == 1  # skips 2
    examples = documented_examples()
    assert len(examples) == 2 and any("duckdb" in e for e in examples)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in examples:
        exec(compile(code, str(DOCS), "exec"), namespace)
    # Joined on (run_id, video_id): the second run's skipped rows have no frames rows.
    assert namespace["per_video_polars"].select("source_key", "frames").rows() == [
        ("a.mkv", 5),
        ("b/c.mkv", 3),
    ]
    duck = namespace["per_video_duckdb"]
    assert [(key, n) for key, n, _ in duck] == [("a.mkv", 5), ("b/c.mkv", 3)]
    polars_alpha = namespace["per_video_polars"]["alpha_mean"].to_list()
    assert [a for *_, a in duck] == pytest.approx(polars_alpha)
    # The tables are Delta tables: a data file the log does not list is not read.
    from deltalake import DeltaTable

    table = DeltaTable("derained/_manifests/frames")
    assert table.to_pandas().shape[0] == 8
    (tmp_path / "derained/_manifests/frames/stray.parquet").write_bytes(
        (tmp_path / table.file_uris()[0]).read_bytes()
    )
    assert DeltaTable("derained/_manifests/frames").to_pandas().shape[0] == 8


V1_RUN = "20250101T000000Z-0000abcd"
V1_UNCOMMITTED = "20250102T000000Z-0000ef01"


def write_v1_shard(root: Path, table: str, run_id: str, rows: list[dict]) -> str:
    """A version-1 shard: hive-partitioned, schema version 1 (no precision or tiles)."""
    schema = videos_schema() if table == "videos" else frames_schema()
    if table == "videos":
        schema = pa.schema([f for f in schema if f.name not in ("precision", "tiles")])
    relative = f"{table}/date=2025-01-01/run={run_id}/{rows[0]['video_id']}-1234abcd.parquet"
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / relative)
    return relative


def write_v1_manifests(root: Path, source: Path, destination: Path) -> str:
    """One committed v1 run that did ``source``'s only video (3 frames), and one shard of an
    interrupted run that no commit lists; returns the video id."""
    (obj,) = list_videos(open_location(source))
    video_id = video_id_of(obj.url, obj.etag)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    video = {
        "schema_version": 1, "run_id": V1_RUN, "video_id": video_id, "source_url": obj.url,
        "source_key": obj.key, "etag": obj.etag, "output_url": str(destination / "a.mkv"),
        "status": "ok", "frames": 3, "fps": 25.0, "width": 24, "height": 16,
        "model_name": "j4r-tiny", "model_version": "test", "started_at": now, "finished_at": now,
    }  # fmt: skip
    frames = [
        {"schema_version": 1, "run_id": V1_RUN, "video_id": video_id, "frame_index": i,
         "timestamp_s": i / 25, "alpha_mean": 0.1}
        for i in range(3)
    ]  # fmt: skip
    files = [write_v1_shard(root, "videos", V1_RUN, [video])]
    files.append(write_v1_shard(root, "frames", V1_RUN, frames))
    stray = {**video, "run_id": V1_UNCOMMITTED}
    write_v1_shard(root, "videos", V1_UNCOMMITTED, [stray])  # never committed: not copied
    plan = {"run_id": V1_RUN, "source": str(source), "destination": str(destination),
            "model_name": "j4r-tiny", "model_version": "test"}  # fmt: skip
    commit = {"run_id": V1_RUN, "schema_version": 1, "committed_at": now.isoformat(),
              "files": files, "ok": 1, "failed": 0, "skipped": 0, "frames": 3,
              "seconds": 1.5, "model_name": "j4r-tiny", "model_version": "test",
              "runner": "sequential on cpu"}  # fmt: skip
    for folder, record in (("_runs", plan), ("_commits", commit)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"{V1_RUN}.json").write_text(json.dumps(record))
    return video_id


def test_v1_manifests_are_refused_then_migrated_once(tmp_path, tiny_checkpoint, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    write_video(src / "a.mkv", moving_frames_thwc_u8(3, 16, 24, seed=1))
    video_id = write_v1_manifests(dst / "_manifests", src, dst)

    assert derain_run(src, dst, tiny_checkpoint) == 2  # would redo what the v1 run did
    assert "derain manifest --migrate" in capsys.readouterr().err
    assert main(["manifest", str(dst)]) == 0
    assert "old (version 1) layout" in capsys.readouterr().out

    assert main(["manifest", str(dst), "--migrate"]) == 0
    assert "migrated 1 run(s)" in capsys.readouterr().out
    assert main(["manifest", str(dst), "--migrate"]) == 0  # nothing copied twice
    assert "migrated 0 run(s)" in capsys.readouterr().out
    store = ManifestStore(open_location(dst / "_manifests"))
    (video,) = store.read("videos").to_pylist()
    assert (video["run_id"], video["video_id"], video["schema_version"]) == (V1_RUN, video_id, 1)
    assert video["precision"] is None and video["tiles"] is None  # not in version 1
    assert store.read("frames").num_rows == 3
    (run,) = store.commits()
    assert (run["run_id"], run["ok"], run["frames"], run["source"]) == (V1_RUN, 1, 3, str(src))
    assert main(["manifest", str(dst), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["run_id"] for c in listed["committed"]] == [V1_RUN]
    assert listed["uncommitted"] == [] and listed["v1_unmigrated"] == []

    assert derain_run(src, dst, tiny_checkpoint) == 0
    runs = store.commits()
    assert runs[0]["run_id"] == V1_RUN and runs[1]["skipped"] == 1
    (skipped,) = store.read("videos", run_id=runs[1]["run_id"]).to_pylist()
    assert (skipped["status"], skipped["model_name"]) == ("skipped", "j4r-tiny")
    assert store.read("frames").num_rows == 3  # the migrated frames, once


def test_a_table_written_before_a_column_existed_takes_rows_that_have_it(tmp_path):
    """Schema 4 added frames' ``rain_probability``: appending to a schema-3 table merges the
    column in; the old rows read it as null, the new ones as written."""
    from pipeline.io.delta import append_once, read_table

    location = open_location(str(tmp_path / "m"))
    full = frames_schema()
    old = pa.schema([f for f in full if f.name != "rain_probability"])

    def rows(schema, run_id, **extra):
        values = {"schema_version": 3, "run_id": run_id, "video_id": "v", "frame_index": 0,
                  "timestamp_s": 0.0, "alpha_mean": 0.1, "alpha_frac": 0.0, "alpha_p95": 0.2,
                  "streak_mean": 0.0, "change_mean": 0.01, **extra}  # fmt: skip
        return pa.Table.from_pylist([values], schema=schema)

    assert append_once(location, "frames", rows(old, "r3"), app_id="derain-run-r3", version=1)
    new = rows(full, "r4", rain_probability=0.25)
    assert append_once(location, "frames", new, app_id="derain-run-r4", version=1)
    table = read_table(location, "frames", full).to_pylist()
    assert {r["run_id"]: r["rain_probability"] for r in table} == {"r3": None, "r4": 0.25}


def test_writers_racing_for_one_table_on_s3_each_commit_once_and_lose_nothing(s3):
    """delta-rs commits with a conditional PUT of the next log file: on the S3 endpoint the
    tests use, writers racing for one version get 412, retry on the next, and every append
    lands exactly once (no DynamoDB lock). A re-run of one append is a no-op (its txn)."""
    import threading

    from deltalake import DeltaTable

    from pipeline.io.delta import append_once, delta_storage_options, table_uri

    _, bucket, options = s3
    location = open_location(f"s3://{bucket}/race", options)
    schema = pa.schema([("writer", pa.int32()), ("row", pa.int32())])
    append_once(location, "t", schema.empty_table(), app_id="create", version=0)
    barrier, errors = threading.Barrier(4), []

    def writer(i: int) -> None:
        rows = pa.table({"writer": [i] * 25, "row": list(range(25))}, schema=schema)
        barrier.wait()  # all four ask for the same next version at once
        try:
            assert append_once(location, "t", rows, app_id=f"writer-{i}", version=1)
        except Exception as exc:  # reported below, outside the thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    def table() -> DeltaTable:
        return DeltaTable(table_uri(location, "t"), storage_options=delta_storage_options(location))

    assert table().version() == 4  # one commit per writer after the creating one
    rows = table().to_pyarrow_table().to_pylist()
    assert len(rows) == 100 and len({(r["writer"], r["row"]) for r in rows}) == 100
    again = pa.table({"writer": [0], "row": [0]}, schema=schema)
    assert not append_once(location, "t", again, app_id="writer-0", version=1)
    assert table().version() == 4 and table().to_pyarrow_table().num_rows == 100

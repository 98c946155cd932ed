"""Storage: keys that cannot escape, listing with ETags, atomic puts, on local disk and S3."""

from __future__ import annotations

import pytest

from pipeline.io.storage import (
    StorageError,
    list_videos,
    local_copy,
    open_location,
    put_file,
    safe_relative_key,
    storage_options_for,
)


@pytest.mark.parametrize(
    ("key", "expected"),
    [("a/b c/ü.mp4", "a/b c/ü.mp4"), ("./a//b.mp4", "a/b.mp4"), ("a\\b.mp4", "a/b.mp4")],
)
def test_safe_keys_are_kept(key, expected):
    assert safe_relative_key(key) == expected


@pytest.mark.parametrize("key", ["../x.mp4", "a/../../x.mp4", "/etc/passwd", "a/\x00b.mp4", ""])
def test_escaping_keys_are_refused(key):
    with pytest.raises(StorageError):
        safe_relative_key(key)


def test_endpoint_from_the_standard_variable(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    options = storage_options_for("s3://b/p")
    assert options["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9"
    assert storage_options_for("s3://b", {"endpoint_url": "http://x"})["client_kwargs"] == {
        "endpoint_url": "http://x"
    }
    assert storage_options_for("/local/path") == {}


def test_listing_and_round_trip_on_s3(s3, tmp_path):
    fs, bucket, options = s3
    fs.pipe(f"{bucket}/in/b c/ü.mp4", b"x" * 10)
    fs.pipe(f"{bucket}/in/a.MKV", b"y" * 20)
    fs.pipe(f"{bucket}/in/notes.txt", b"z")
    fs.pipe(f"{bucket}/in/.hidden.mp4", b"z")
    objects = list_videos(open_location(f"s3://{bucket}/in", options))
    assert [(o.key, o.size) for o in objects] == [("a.MKV", 20), ("b c/ü.mp4", 10)]
    assert objects[1].url == f"s3://{bucket}/in/b c/ü.mp4"
    assert all(len(o.etag) == 32 for o in objects)  # the object's MD5 ETag
    with local_copy(objects[1].url, options, tmp_path) as local:
        assert local.read_bytes() == b"x" * 10
    assert not list(tmp_path.iterdir())  # temp copy cleaned up
    source = tmp_path / "f.bin"
    source.write_bytes(b"payload")
    url = put_file(source, open_location(f"s3://{bucket}/out", options), "d/ü x.mp4")
    assert url == f"s3://{bucket}/out/d/ü x.mp4"
    assert fs.cat(f"{bucket}/out/d/ü x.mp4") == b"payload"


def test_local_listing_and_atomic_put(tmp_path):
    (tmp_path / "in" / "s").mkdir(parents=True)
    (tmp_path / "in" / "s" / "v.mov").write_bytes(b"123")
    objects = list_videos(open_location(tmp_path / "in"))
    assert [o.key for o in objects] == ["s/v.mov"]
    assert objects[0].etag.startswith("3-")  # size+mtime where there is no ETag
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_videos(open_location(tmp_path / "missing"))
    put_file(tmp_path / "in" / "s" / "v.mov", open_location(tmp_path / "out"), "x/y.mp4")
    assert sorted(p.name for p in (tmp_path / "out" / "x").iterdir()) == ["y.mp4"]


def test_s3_retries_are_botocores_own_configured_and_overridable(monkeypatch):
    from pipeline.io.storage import S3_CONFIG_DEFAULTS

    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    fs = open_location("s3://b/x", {"endpoint_url": "http://127.0.0.1:9"}).fs
    fs.connect()  # the botocore client s3fs calls, with its Config
    config = fs.s3.meta.config
    assert config.retries["mode"] == "standard"
    retries = S3_CONFIG_DEFAULTS["retries"]["max_attempts"]
    assert config.retries["total_max_attempts"] == retries + 1  # botocore counts the first try
    assert (config.connect_timeout, config.read_timeout) == (3, 60)
    given = {"config_kwargs": {"retries": {"mode": "adaptive", "max_attempts": 9}}}
    fs = open_location("s3://b/y", given).fs
    fs.connect()
    assert fs.s3.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 10}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "6")  # botocore's own variable wins over the default
    options = open_location("s3://b/z").fs.config_kwargs
    assert options["retries"] == {"mode": "standard"}


def test_no_retry_loop_of_our_own_on_top_of_botocores():
    import inspect

    import pipeline.io.storage as storage

    source = inspect.getsource(storage)
    assert "time.sleep" not in source and "is_transient" not in source
    assert not hasattr(storage, "retry")

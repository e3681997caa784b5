"""tasks.core.store: FileStore and S3Store (against a real moto HTTP server), upload_tree, errors."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tasks.core.errors import StoreError
from tasks.core.settings import Settings
from tasks.core.store import FileStore, ObjectStore, S3Store, open_store, upload_tree

CLOSED_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens there


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(params=["file", "s3-root", "s3-prefixed"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        root = tmp_path / "store"
        root.mkdir()
        opened = open_store(root.as_uri())
        assert isinstance(opened, FileStore)
        return opened
    endpoint: str = request.getfixturevalue("moto_endpoint")
    bucket: str = request.getfixturevalue("s3_bucket")
    base = "" if request.param == "s3-root" else "/team/models/"
    opened = open_store(f"s3://{bucket}{base}", endpoint)
    assert isinstance(opened, S3Store)
    return opened


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"model_type": "bert"}',
        "model.safetensors": bytes(range(256)) * 10,
        "vocab.txt": b"[PAD]\n[UNK]\n",
        "onnx/config.json": b"{}",
        "onnx/model.onnx": b"\x00onnx",
        "a/b/c/deep.txt": b"deep",
    }
    for rel, data in files.items():
        _write(root / rel, data)
    return files


def test_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    one = _write(tmp_path / "src" / "one.bin", b"first object")
    two = _write(tmp_path / "src" / "two.txt", b"")
    store.upload(one, "ckpt/one.bin")
    store.upload(two, "ckpt/sub/two.txt")

    listed = store.list("ckpt")
    assert [(o.key, o.size) for o in listed] == [("ckpt/one.bin", 12), ("ckpt/sub/two.txt", 0)]
    assert all(o.etag for o in listed)
    assert store.list("/ckpt/") == listed
    assert [o.key for o in store.list("")] == ["ckpt/one.bin", "ckpt/sub/two.txt"]

    dest = tmp_path / "dest"
    dest.mkdir()
    store.download("ckpt/one.bin", dest / "one.bin")
    store.download("ckpt/sub/two.txt", dest / "two.txt")
    assert (dest / "one.bin").read_bytes() == b"first object"
    assert (dest / "two.txt").read_bytes() == b""


def test_overwrite_changes_size_and_etag(store: ObjectStore, tmp_path: Path) -> None:
    store.upload(_write(tmp_path / "v1", b"version one"), "k/obj")
    (before,) = store.list("k")
    time.sleep(0.01)  # FileStore's change tag is the mtime in ns
    store.upload(_write(tmp_path / "v2", b"version two!"), "k/obj")
    (after,) = store.list("k")
    assert after.size == 12
    assert after.etag != before.etag


def test_list_prefix_is_a_folder_not_a_string_prefix(store: ObjectStore, tmp_path: Path) -> None:
    src = _write(tmp_path / "x", b"x")
    for key in ("ckpt/x", "ckpt-b/x", "ckptc"):
        store.upload(src, key)
    assert [o.key for o in store.list("ckpt")] == ["ckpt/x"]
    assert store.list("missing") == []


def test_download_of_a_missing_key_is_a_store_error(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        store.download("no/such/key", tmp_path / "out")
    assert store.uri in str(info.value)
    assert not (tmp_path / "out").exists()


def test_upload_tree_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    files = _tree(tmp_path / "src")
    upload_tree(store, tmp_path / "src", "/nightly/ckpt-a/", last="config.json")
    listed = store.list("nightly/ckpt-a")
    assert sorted(o.key for o in listed) == sorted(f"nightly/ckpt-a/{rel}" for rel in files)
    for obj in listed:
        rel = obj.key.removeprefix("nightly/ckpt-a/")
        assert obj.size == len(files[rel])
        store.download(obj.key, tmp_path / "got")
        assert (tmp_path / "got").read_bytes() == files[rel]


def test_upload_tree_puts_the_marker_last(
    store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _tree(tmp_path / "src")
    calls: list[str] = []
    real_upload = store.upload

    def recording_upload(src: Path, key: str) -> None:
        # The marker must only appear once everything else is in the store.
        if key.endswith("ckpt-a/config.json"):
            assert len(store.list("nightly/ckpt-a")) == len(files) - 1
        calls.append(key)
        real_upload(src, key)

    monkeypatch.setattr(store, "upload", recording_upload)
    upload_tree(store, tmp_path / "src", "nightly/ckpt-a", last="config.json")

    assert sorted(calls) == sorted(f"nightly/ckpt-a/{rel}" for rel in files)
    assert len(calls) == len(set(calls))
    # The marker is matched by its path: onnx/config.json is an ordinary file.
    assert calls[-1] == "nightly/ckpt-a/config.json"


def test_upload_tree_without_marker_or_prefix(store: ObjectStore, tmp_path: Path) -> None:
    files = _tree(tmp_path / "src")
    upload_tree(store, tmp_path / "src", "")
    assert sorted(o.key for o in store.list("")) == sorted(files)


def test_create_never_overwrites(store: ObjectStore) -> None:
    assert store.create("log/000001.json", b"first") is True
    assert store.create("log/000001.json", b"second") is False
    fetched = store.get("log/000001.json", 100)
    assert fetched is not None and fetched.data == b"first"
    assert [o.key for o in store.list("log")] == ["log/000001.json"]


def test_racing_creates_of_one_key_have_one_winner(store: ObjectStore) -> None:
    """Eight threads claim each of five keys at once: exactly one wins each, and its bytes stay."""
    from concurrent.futures import ThreadPoolExecutor

    def claim(args: tuple[int, int]) -> tuple[int, int, bool]:
        key, writer = args
        return key, writer, store.create(f"race/{key}", f"writer {writer}".encode())

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(claim, [(k, w) for k in range(5) for w in range(8)]))
    for key in range(5):
        winners = [w for k, w, won in results if k == key and won]
        assert len(winners) == 1, f"key {key}: winners {winners}"
        fetched = store.get(f"race/{key}", 100)
        assert fetched is not None and fetched.data == f"writer {winners[0]}".encode()
    assert len(store.list("race")) == 5


def test_file_store_missing_root_is_unreachable(tmp_path: Path) -> None:
    uri = (tmp_path / "nowhere").as_uri()
    store = open_store(uri)
    with pytest.raises(StoreError, match="unreachable") as info:
        store.list("")
    assert uri in str(info.value)
    with pytest.raises(StoreError, match="does not exist"):
        store.download("k", tmp_path / "out")


def test_file_store_uri_is_percent_decoded(tmp_path: Path) -> None:
    """Settings.store_uri comes from Path.as_uri(), which encodes a space as %20."""
    home = tmp_path / "my home #1"
    home.mkdir()
    settings = Settings(home=home)
    assert "%20" in settings.store_uri
    store = open_store(settings.store_uri)
    store.upload(_write(tmp_path / "x", b"x"), "ckpt/x")
    assert (home / "store" / "ckpt" / "x").read_bytes() == b"x"
    assert [o.key for o in store.list("ckpt")] == ["ckpt/x"]


@pytest.mark.parametrize("operation", ["list", "download", "upload"])
def test_s3_closed_port_fails_fast_with_a_clear_error(operation: str, tmp_path: Path) -> None:
    store = open_store("s3://some-bucket/models", CLOSED_ENDPOINT)
    src = _write(tmp_path / "x", b"x")
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        if operation == "list":
            store.list("nightly")
        elif operation == "download":
            store.download("nightly/x", tmp_path / "out")
        else:
            store.upload(src, "nightly/x")
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert "s3://some-bucket/models is unreachable" in message
    assert "127.0.0.1:9" in message
    assert "\n" not in message
    assert elapsed < 10, f"an unreachable store took {elapsed:.1f}s to fail"


@pytest.mark.parametrize("operation", ["list", "download", "upload"])
def test_s3_missing_bucket_is_a_store_error(operation: str, moto_endpoint: str, tmp_path: Path) -> None:
    store = open_store("s3://no-such-bucket-slimline/models", moto_endpoint)
    with pytest.raises(StoreError) as info:
        if operation == "list":
            store.list("")
        elif operation == "download":
            store.download("x", tmp_path / "out")
        else:
            store.upload(_write(tmp_path / "x", b"x"), "x")
    message = str(info.value)
    assert "s3://no-such-bucket-slimline/models" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "uri", ["http://example.com/store", "gs://bucket/prefix", "/plain/path", "", "ftp://host/x"]
)
def test_unsupported_scheme_names_the_allowed_ones(uri: str) -> None:
    with pytest.raises(StoreError) as info:
        open_store(uri)
    message = str(info.value)
    assert "not supported" in message
    assert "file:///path" in message
    assert "s3://bucket/prefix" in message


def test_s3_uri_without_bucket_is_refused() -> None:
    with pytest.raises(StoreError, match="names no bucket"):
        open_store("s3:///prefix")


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/etc/passwd", "a/b/../../.."])
def test_file_store_refuses_keys_outside_its_root(key: str, tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    _write(tmp_path / "outside", b"secret")
    store = open_store(root.as_uri())
    src = _write(tmp_path / "src", b"payload")
    with pytest.raises(StoreError, match="escapes the store root"):
        store.upload(src, key)
    with pytest.raises(StoreError, match="escapes the store root"):
        store.download(key, tmp_path / "out")
    if ".." in key:  # list() strips leading slashes: "/etc" is the prefix "etc" of the store
        with pytest.raises(StoreError, match="escapes the store root"):
            store.list(key)
    assert (tmp_path / "outside").read_bytes() == b"secret"
    assert not (tmp_path / "out").exists()


def test_file_store_lists_links_and_devices_by_kind_and_skips_temporary_files(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _write(root / "ckpt" / "real.txt", b"real")
    _write(root / "ckpt" / ".real.txt.tmp-abc", b"half written")
    outside = _write(tmp_path / "outside" / "secret.txt", b"secret")
    (root / "ckpt" / "link.txt").symlink_to(outside)
    (root / "ckpt" / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    os.link(outside, root / "ckpt" / "hard.txt")
    _write(root / "ckpt" / "twin-a.txt", b"twin")
    os.link(root / "ckpt" / "twin-a.txt", root / "ckpt" / "twin-b.txt")
    os.mkfifo(root / "ckpt" / "pipe")
    store = open_store(root.as_uri())
    assert {o.key: o.kind for o in store.list("ckpt")} == {
        "ckpt/hard.txt": "hard link to a file outside the listing",
        "ckpt/link.txt": "symbolic link",
        "ckpt/linkdir": "symbolic link",
        "ckpt/pipe": "device or special file",
        "ckpt/real.txt": "file",
        "ckpt/twin-a.txt": "file",
        "ckpt/twin-b.txt": "file",
    }
    with pytest.raises(StoreError, match="escapes the store root"):
        store.download("ckpt/link.txt", tmp_path / "out")

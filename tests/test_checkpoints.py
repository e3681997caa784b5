"""tasks.intake.checkpoints: listing, fetching, digests, the cache, and every refusal.

Each refusal test plants a bad checkpoint in a real store (a file:// root, or a bucket on the
moto S3 server) and checks the error message, that nothing from it reached the cache, and that
nothing in it was executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pickle
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tasks.core.errors import CheckpointRefused
from tasks.core.settings import Settings
from tasks.core.store import FileStore, ObjectStore, S3Store, open_store, upload_tree
from tasks.intake.checkpoints import (
    CheckpointInfo,
    VerifiedCheckpoint,
    content_digest,
    fetch,
    list_checkpoints,
    verify_folder,
)
from tests.factories import make_checkpoint

PREFIX = "nightly"
NAME = "ckpt-a"


@dataclass
class Env:
    settings: Settings
    store: ObjectStore
    kind: str

    def uri(self, name: str = NAME) -> str:
        return f"{self.settings.store_uri}/{PREFIX}/{name}"

    def publish(self, folder: Path, name: str = NAME, last: str | None = "config.json") -> str:
        upload_tree(self.store, folder, f"{PREFIX}/{name}", last=last)
        return self.uri(name)

    def plant(self, key: str, data: bytes, tmp: Path) -> None:
        """Put one object in the store under an arbitrary key (relative to the store root)."""
        src = tmp / "planted.tmp"
        src.write_bytes(data)
        self.store.upload(src, key)
        src.unlink()


def _make_env(kind: str, request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Env:
    if kind == "file":
        root = tmp_path / "store"
        root.mkdir()
        configured = Settings(home=settings.home, checkpoint_store=root.as_uri())
    else:
        endpoint: str = request.getfixturevalue("moto_endpoint")
        bucket: str = request.getfixturevalue("s3_bucket")
        configured = Settings(
            home=settings.home,
            checkpoint_store=f"s3://{bucket}/models",
            s3_endpoint_url=endpoint,
        )
    store = open_store(configured.store_uri, configured.s3_endpoint_url)
    assert isinstance(store, FileStore if kind == "file" else S3Store)
    return Env(settings=configured, store=store, kind=kind)


@pytest.fixture(params=["file", "s3"])
def env(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Env:
    """A store of each kind; `indirect` parametrization may pick one."""
    return _make_env(request.param, request, settings, tmp_path)


@pytest.fixture
def file_env(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Env:
    return _make_env("file", request, settings, tmp_path)


@pytest.fixture
def s3_env(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Env:
    return _make_env("s3", request, settings, tmp_path)


def _variants(names: str, cases: list[tuple[Any, ...]], ids: list[str]) -> Any:
    """Parametrize `env` plus `names`: every case on file://, the first case on S3 too.

    Verification runs on the downloaded copy, so the variants only need one store; the first
    case proves that the refusal holds when the bad input comes from S3.
    """
    params = [pytest.param("file", *case, id=f"file-{i}") for case, i in zip(cases, ids, strict=True)]
    params.insert(1, pytest.param("s3", *cases[0], id=f"s3-{ids[0]}"))
    return pytest.mark.parametrize(f"env,{names}", params, indirect=["env"])


# --- helpers -------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _expected_digest(folder: Path) -> str:
    """The content digest, with each file's sha256 computed here rather than by the module."""
    return content_digest({rel: hashlib.sha256(data).hexdigest() for rel, data in _files(folder).items()})


def _assert_cache_clean(settings: Settings) -> None:
    """A refused checkpoint leaves nothing: at most an empty cache dir and the fingerprint index."""
    if not settings.cache_dir.exists():
        return
    left = sorted(p.name for p in settings.cache_dir.iterdir())
    assert set(left) <= {"fingerprints.json"}, f"cache holds {left}"


def _refused(env: Env, uri: str, phrase: str) -> str:
    with pytest.raises(CheckpointRefused) as info:
        fetch(env.settings, uri)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"checkpoint {uri}: "), message
    assert phrase in message, message
    _assert_cache_clean(env.settings)
    return message


class _TouchOnUnpickle:
    """Unpickling this object creates `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (pathlib.Path.touch, (self.marker,))


def _evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": _TouchOnUnpickle(marker)})


def _rewrite_safetensors(path: Path, header: bytes, header_len: int | None = None) -> None:
    data = path.read_bytes()
    (old_len,) = struct.unpack("<Q", data[:8])
    length = len(header) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", length) + header + data[8 + old_len :])


# --- listing, fetching, digests, cache ----------------------------------------------------------


def test_publish_list_fetch_round_trip(env: Env, tiny_checkpoint: Path) -> None:
    uri = env.publish(tiny_checkpoint)
    originals = _files(tiny_checkpoint)
    assert {"config.json", "model.safetensors", "vocab.txt"} <= set(originals)

    (info,) = list_checkpoints(env.settings, PREFIX)
    assert isinstance(info, CheckpointInfo)
    assert info.uri == uri
    assert info.name == NAME
    assert info.files == len(originals)
    assert info.size_bytes == sum(len(d) for d in originals.values())
    assert list_checkpoints(env.settings, f"/{PREFIX}/") == [info]
    assert list_checkpoints(env.settings, "elsewhere") == []

    fetched = fetch(env.settings, uri)
    assert isinstance(fetched, VerifiedCheckpoint)
    assert fetched.uri == uri
    assert fetched.model_type == "bert"
    assert fetched.digest == _expected_digest(tiny_checkpoint)
    assert fetched.size_bytes == info.size_bytes
    assert fetched.path == env.settings.cache_dir / fetched.digest
    cached = _files(fetched.path)
    assert json.loads(cached.pop(".verified.json"))["digest"] == fetched.digest
    assert cached == originals
    # Nothing half-fetched is left next to it.
    assert [p.name for p in env.settings.cache_dir.iterdir() if p.name.startswith(".")] == []


def test_loadable_after_fetch(file_env: Env, tiny_checkpoint: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    fetched = fetch(file_env.settings, file_env.publish(tiny_checkpoint))
    tokenizer = AutoTokenizer.from_pretrained(fetched.path)
    model = AutoModelForSequenceClassification.from_pretrained(fetched.path)
    logits = model(**tokenizer(["i love the car"], return_tensors="pt")).logits
    assert tuple(logits.shape) == (1, 3)
    assert model.config.id2label[2] == "positive"


def test_second_fetch_is_served_from_the_cache(
    env: Env, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = env.publish(tiny_checkpoint)
    first = fetch(env.settings, uri)

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("an unchanged checkpoint was downloaded again")

    monkeypatch.setattr(FileStore, "download", no_download)
    monkeypatch.setattr(S3Store, "download", no_download)
    second = fetch(env.settings, uri)
    assert second == first


def test_changing_one_byte_changes_the_digest(env: Env, tiny_checkpoint: Path) -> None:
    uri = env.publish(tiny_checkpoint)
    first = fetch(env.settings, uri)

    vocab = tiny_checkpoint / "vocab.txt"
    data = bytearray(vocab.read_bytes())
    data[-2] ^= 0x01  # a letter of the last word
    vocab.write_bytes(bytes(data))
    env.store.upload(vocab, f"{PREFIX}/{NAME}/vocab.txt")

    second = fetch(env.settings, uri)
    assert second.digest != first.digest
    assert second.digest == _expected_digest(tiny_checkpoint)
    assert (second.path / "vocab.txt").read_bytes() == bytes(data)
    # The earlier version stays in the cache, untouched, under its own digest.
    assert first.path.is_dir() and first.path != second.path


def test_same_content_under_two_names_shares_one_cache_entry(env: Env, tiny_checkpoint: Path) -> None:
    a = fetch(env.settings, env.publish(tiny_checkpoint, "ckpt-a"))
    b = fetch(env.settings, env.publish(tiny_checkpoint, "ckpt-b"))
    assert a.digest == b.digest and a.path == b.path and a.uri != b.uri
    assert [c.name for c in list_checkpoints(env.settings, PREFIX)] == ["ckpt-a", "ckpt-b"]
    assert sorted(p.name for p in env.settings.cache_dir.iterdir()) == sorted([a.digest, "fingerprints.json"])


def test_different_weights_have_different_digests(settings: Settings, tmp_path: Path) -> None:
    one = make_checkpoint(tmp_path / "one", seed=1)
    two = make_checkpoint(tmp_path / "two", seed=2)
    assert verify_folder("local", one, settings)[0] != verify_folder("local", two, settings)[0]
    assert verify_folder("local", one, settings)[0] == _expected_digest(one)


def test_folders_without_config_are_not_listed(env: Env, tiny_checkpoint: Path) -> None:
    env.publish(tiny_checkpoint)
    (tiny_checkpoint / "config.json").unlink()
    env.publish(tiny_checkpoint, "half-uploaded", last=None)
    env.plant(f"{PREFIX}/loose-file.json", b"{}", tiny_checkpoint.parent)
    assert [c.name for c in list_checkpoints(env.settings, PREFIX)] == [NAME]


# --- refusals: pickles and code -----------------------------------------------------------------


def test_pickle_payload_is_live(tmp_path: Path) -> None:
    """Guards the tests below: unpickling the planted payload really would run code."""
    marker = tmp_path / "ran"
    pickle.loads(_evil_pickle(marker))
    assert marker.exists()


@_variants(
    "name",
    [("pytorch_model.bin",), ("model.pt",), ("weights.pkl",), ("sub/opt.pth",)],
    ids=["bin", "pt", "pkl", "nested-pth"],
)
def test_pickle_weights_are_refused_unread(
    env: Env, tiny_checkpoint: Path, tmp_path: Path, name: str
) -> None:
    marker = tmp_path / "pickle-was-loaded"
    uri = env.publish(tiny_checkpoint)
    env.plant(f"{PREFIX}/{NAME}/{name}", _evil_pickle(marker), tmp_path)
    message = _refused(env, uri, "is a pickle-based weight file")
    assert name in message and "*.safetensors" in message
    assert not marker.exists()


def test_auto_map_in_config_is_refused(env: Env, tiny_checkpoint: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (tiny_checkpoint / "config.json").write_text(json.dumps(config))
    uri = env.publish(tiny_checkpoint)
    message = _refused(env, uri, "asks for remote code (auto_map)")
    assert "config.json" in message


def test_auto_map_in_tokenizer_config_is_refused(env: Env, tiny_checkpoint: Path) -> None:
    path = tiny_checkpoint / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    path.write_text(json.dumps(config))
    message = _refused(env, env.publish(tiny_checkpoint), "asks for remote code (auto_map)")
    assert "tokenizer_config.json" in message


@pytest.mark.parametrize("with_auto_map", [False, True])
def test_python_files_are_refused_unexecuted(
    env: Env, tiny_checkpoint: Path, tmp_path: Path, with_auto_map: bool
) -> None:
    marker = tmp_path / "code-was-run"
    (tiny_checkpoint / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    )
    if with_auto_map:
        config = json.loads((tiny_checkpoint / "config.json").read_text())
        config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
        (tiny_checkpoint / "config.json").write_text(json.dumps(config))
    message = _refused(env, env.publish(tiny_checkpoint), "is not allowed")
    assert "modeling_evil.py" in message and "*.safetensors" in message
    assert not marker.exists()


# --- refusals: paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("planted", "listed"),
    [
        ("../../evil.json", "../../evil.json"),
        ("sub/../../../evil.json", "sub/../../../evil.json"),
        ("..", ".."),
        ("/abs-evil.json", "/abs-evil.json"),  # the key "nightly/ckpt-a//abs-evil.json"
        ("..\\..\\evil.json", "..\\..\\evil.json"),
    ],
)
def test_s3_keys_escaping_the_checkpoint_are_refused(
    s3_env: Env, tiny_checkpoint: Path, tmp_path: Path, planted: str, listed: str
) -> None:
    """S3 keys are arbitrary strings; file:// cannot hold such names (see the symlink tests)."""
    env = s3_env
    uri = env.publish(tiny_checkpoint)
    env.plant(f"{PREFIX}/{NAME}/{planted}", b'{"evil": true}', tmp_path)

    assert f"{PREFIX}/{NAME}/{listed}" in [o.key for o in env.store.list(PREFIX)]
    checkpoint_store = open_store(uri, env.settings.s3_endpoint_url)
    assert listed in [o.key for o in checkpoint_store.list("")]
    (info,) = list_checkpoints(env.settings, PREFIX)
    assert info.files == len(_files(tiny_checkpoint)) + 1

    message = _refused(env, uri, "escapes the checkpoint folder")
    assert repr(listed) in message
    # Nothing was written where the key points (above the staging folder, or the home).
    assert not any(p.name.endswith("evil.json") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("kind", ["symbolic link", "symbolic link to a folder", "hard link", "pipe"])
def test_file_store_refuses_links_and_special_files_by_name(
    file_env: Env, tiny_checkpoint: Path, tmp_path: Path, kind: str
) -> None:
    env = file_env
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("TOP SECRET outside the store")
    uri = env.publish(tiny_checkpoint)
    folder = Path(env.settings.store_uri.removeprefix("file://")) / PREFIX / NAME
    if kind == "symbolic link":
        (folder / "notes.txt").symlink_to(secret)
        expected = "'notes.txt' is a symbolic link, which slimline never reads; allowed: plain files"
    elif kind == "symbolic link to a folder":
        (folder / "extra").symlink_to(secret.parent, target_is_directory=True)
        expected = "'extra' is a symbolic link"
    elif kind == "hard link":
        os.link(secret, folder / "notes.txt")
        expected = "'notes.txt' is a hard link to a file outside the listing"
    else:
        os.mkfifo(folder / "notes.txt")
        expected = "'notes.txt' is a device or special file"
    _refused(env, uri, expected)
    for path in env.settings.home.rglob("*"):
        if path.is_file():
            assert b"TOP SECRET" not in path.read_bytes(), path


def test_file_store_symlinked_weights_are_refused(
    file_env: Env, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    env = file_env
    outside = tmp_path / "outside.safetensors"
    shutil.move(tiny_checkpoint / "model.safetensors", outside)
    (tiny_checkpoint / "model.safetensors").symlink_to(outside)
    uri = env.publish(tiny_checkpoint)  # upload_tree copies the target's bytes: a real file
    folder = Path(env.settings.store_uri.removeprefix("file://")) / PREFIX / NAME
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(outside)
    _refused(env, uri, "'model.safetensors' is a symbolic link")


def test_verify_folder_refuses_symlinks(settings: Settings, tiny_checkpoint: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    (tiny_checkpoint / "notes.txt").symlink_to(secret)
    with pytest.raises(CheckpointRefused, match=r"'notes\.txt' is a symbolic link") as info:
        verify_folder("file:///local/ckpt", tiny_checkpoint, settings)
    assert str(info.value).startswith("checkpoint file:///local/ckpt: ")


def test_verify_folder_refuses_symlinked_directories(
    settings: Settings, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.safetensors").write_bytes(b"")
    (tiny_checkpoint / "onnx").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(CheckpointRefused, match="'onnx' is a symbolic link"):
        verify_folder("file:///local/ckpt", tiny_checkpoint, settings)


# --- refusals: config ---------------------------------------------------------------------------


def test_missing_config_is_refused(env: Env, tiny_checkpoint: Path) -> None:
    (tiny_checkpoint / "config.json").unlink()
    _refused(env, env.publish(tiny_checkpoint, last=None), "config.json is missing")


@_variants(
    "content,phrase",
    [
        (b"{not json", "config.json is not valid JSON"),
        (b"\xff\xfe\x00garbage", "config.json is not valid JSON"),
        (b"", "config.json is not valid JSON"),
        (b'["model_type", "bert"]', "config.json is not a JSON object"),
        (b'"bert"', "config.json is not a JSON object"),
        (b'{"model_type": "gpt2"}', "model_type='gpt2' is not supported"),
        (b'{"model_type": "bert\\nX"}', "model_type='bert\\nX' is not supported"),
        (b'{"hidden_size": 32}', "model_type=None is not supported"),
    ],
    ids=["syntax", "binary", "empty", "list", "string", "gpt2", "newline", "no-model-type"],
)
def test_malformed_config_is_refused(env: Env, tiny_checkpoint: Path, content: bytes, phrase: str) -> None:
    (tiny_checkpoint / "config.json").write_bytes(content)
    _refused(env, env.publish(tiny_checkpoint), phrase)


def test_malformed_tokenizer_json_is_refused(env: Env, tiny_checkpoint: Path) -> None:
    (tiny_checkpoint / "tokenizer.json").write_text('{"truncated": ')
    _refused(env, env.publish(tiny_checkpoint), "tokenizer.json is not valid JSON")


# --- refusals: safetensors ----------------------------------------------------------------------


def test_truncated_safetensors_is_refused(env: Env, tiny_checkpoint: Path) -> None:
    weights = tiny_checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    message = _refused(env, env.publish(tiny_checkpoint), "is truncated or malformed")
    assert "model.safetensors" in message


def test_safetensors_shorter_than_its_length_field_is_refused(env: Env, tiny_checkpoint: Path) -> None:
    (tiny_checkpoint / "model.safetensors").write_bytes(b"\x10\x00")
    _refused(env, env.publish(tiny_checkpoint), "model.safetensors is truncated (no header)")


@_variants("header_len", [(2**63,), (2**40,), (100 * 1024 * 1024 + 1,)], ids=["2^63", "2^40", "limit+1"])
def test_safetensors_with_a_huge_header_length_is_refused(
    env: Env, tiny_checkpoint: Path, header_len: int
) -> None:
    weights = tiny_checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", header_len) + data[8:])
    _refused(env, env.publish(tiny_checkpoint), f"header of {header_len} bytes")


@_variants(
    "header",
    [
        (b"this is not json",),
        (b"\xff\xfe\xfd\xfc",),
        (b"[1, 2, 3]",),
        (b'{"w": 5}',),
        (b'{"w": {"dtype": "F32"}}',),
    ],
    ids=["text", "binary", "list", "entry-not-object", "no-offsets"],
)
def test_safetensors_with_a_malformed_header_is_refused(
    env: Env, tiny_checkpoint: Path, header: bytes
) -> None:
    _rewrite_safetensors(tiny_checkpoint / "model.safetensors", header)
    message = _refused(env, env.publish(tiny_checkpoint), "model.safetensors")
    assert "malformed" in message


def test_safetensors_tensor_beyond_the_data_is_refused(env: Env, tiny_checkpoint: Path) -> None:
    weights = tiny_checkpoint / "model.safetensors"
    data = weights.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    tensor = next(k for k in header if k != "__metadata__")
    start, end = header[tensor]["data_offsets"]
    header[tensor]["data_offsets"] = [start + 4, end + 4]
    _rewrite_safetensors(weights, json.dumps(header).encode())
    _refused(env, env.publish(tiny_checkpoint), f"tensor {tensor!r} spans bytes")


def test_checkpoint_without_safetensors_is_refused(env: Env, tiny_checkpoint: Path) -> None:
    (tiny_checkpoint / "model.safetensors").unlink()
    _refused(env, env.publish(tiny_checkpoint), "no *.safetensors weights found")


# --- refusals: size and emptiness ---------------------------------------------------------------


def test_checkpoint_over_the_size_limit_is_refused_before_download(
    env: Env, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = env.publish(tiny_checkpoint)
    size = sum(len(d) for d in _files(tiny_checkpoint).values())
    limited = Settings(
        home=env.settings.home,
        checkpoint_store=env.settings.checkpoint_store,
        s3_endpoint_url=env.settings.s3_endpoint_url,
        max_checkpoint_bytes=size - 1,
    )

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("an oversized checkpoint was downloaded")

    monkeypatch.setattr(FileStore, "download", no_download)
    monkeypatch.setattr(S3Store, "download", no_download)
    message = _refused(Env(limited, env.store, env.kind), uri, "exceeds the limit")
    assert f"{size} bytes" in message and str(size - 1) in message

    monkeypatch.undo()
    exact = Settings(
        home=env.settings.home,
        checkpoint_store=env.settings.checkpoint_store,
        s3_endpoint_url=env.settings.s3_endpoint_url,
        max_checkpoint_bytes=size,
    )
    assert fetch(exact, uri).size_bytes == size


def test_empty_checkpoint_is_refused(env: Env, tmp_path: Path) -> None:
    if env.kind == "file":
        (Path(env.settings.store_uri.removeprefix("file://")) / PREFIX / NAME).mkdir(parents=True)
    _refused(env, env.uri(), "no files found")

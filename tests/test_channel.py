"""The fleet channel's ground: whole-object reads and writes with change tags on both stores, signed
desired states refused when forged, replayed, expired or another fleet's, and the partial
verification a device runs when it downloads one target's engine of a signed release."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.core.errors import BundleRefused, StoreError
from tasks.core.store import ObjectStore, open_store
from tasks.fleet.channel import Channel, DesiredState
from tasks.release.keys import KeyPair, generate_key_pair, load_private_key, load_public_key
from tasks.release.metadata import open_document, sign_document
from tasks.release.verify import verify_files, verify_release_json
from tests.test_release_bundle import FLEET, bundle_of, make_engine

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        (tmp_path / "store").mkdir()
        return open_store((tmp_path / "store").as_uri())
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/channel", endpoint)


def test_small_objects_are_read_whole_with_a_change_tag(store: ObjectStore):
    assert store.get("fleets/a/desired.json", 100) is None
    store.put("fleets/a/desired.json", b'{"v": 1}')
    first = store.get("fleets/a/desired.json", 100)
    assert first is not None and first.data == b'{"v": 1}'
    # Unchanged: one cheap answer, no bytes.
    again = store.get("fleets/a/desired.json", 100, if_none_match=first.etag)
    assert again is not None and again.data is None and again.etag == first.etag
    store.put("fleets/a/desired.json", b'{"v": 22}')
    changed = store.get("fleets/a/desired.json", 100, if_none_match=first.etag)
    assert changed is not None and changed.data == b'{"v": 22}' and changed.etag != first.etag
    with pytest.raises(StoreError, match="is larger than 4 bytes; refused"):
        store.get("fleets/a/desired.json", 4)


def test_a_link_planted_in_a_file_store_is_refused_not_followed(tmp_path: Path):
    root = tmp_path / "store"
    (root / "fleets").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (root / "fleets" / "desired.json").symlink_to(secret)
    (root / "fleets" / "old.json").write_text("{}")
    (root / "fleets" / "status.json").symlink_to(root / "fleets" / "old.json")
    store = open_store(root.as_uri())
    with pytest.raises(StoreError, match="escapes the store root"):
        store.get("fleets/desired.json", 100)
    with pytest.raises(StoreError, match=r"status\.json cannot be read"):  # even one that stays inside
        store.get("fleets/status.json", 100)


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return generate_key_pair(tmp_path / "keys" / "release.key")


def desired(version: int = 1, **changes: object) -> DesiredState:
    values: dict[str, object] = {
        "fleet": "edge",
        "version": version,
        "issued_at": NOW,
        "expires_at": NOW + timedelta(days=1),
        "release": 3,
        "devices": {"d1": 4},
        "targets": ["cpu-a"],
    } | changes
    return DesiredState.model_validate(values)


def test_a_signed_desired_state_is_believed_only_from_the_trusted_key(tmp_path: Path, keys: KeyPair):
    store = open_store((tmp_path / "store").as_uri())
    (tmp_path / "store").mkdir()
    channel = Channel(store, "edge")
    trusted = load_public_key(keys.public)
    assert channel.fetch_desired(trusted, seen_version=None, now=NOW) == (None, None)
    channel.publish_desired(desired(), load_private_key(keys.private))
    state, etag = channel.fetch_desired(trusted, seen_version=None, now=NOW)
    assert state is not None and state.release_for("d1") == 4 and state.release_for("d2") == 3
    assert channel.fetch_desired(trusted, seen_version=1, now=NOW, etag=etag) == (None, etag)

    def refused(**kwargs: object) -> str:
        with pytest.raises(BundleRefused) as caught:
            channel.fetch_desired(trusted, **({"seen_version": None, "now": NOW} | kwargs))  # type: ignore[arg-type]
        assert "\n" not in str(caught.value)
        return str(caught.value)

    # Someone who can write to the store but holds no key: an edited document fails the signature.
    envelope = json.loads(store.get(channel.desired_key, 10**6).data)  # type: ignore[union-attr,arg-type]
    envelope["signed"]["release"] = 1
    store.put(channel.desired_key, json.dumps(envelope).encode())
    assert refused() == "desired state of fleet edge: signature does not verify with the trusted key"
    other = generate_key_pair(tmp_path / "other" / "release.key")
    channel.publish_desired(desired(), load_private_key(other.private))
    assert "not signed by the trusted key" in refused()
    store.put(channel.desired_key, b"not json")
    assert refused() == "desired state of fleet edge is not a signed document"
    # A replayed older version, an expired one, another fleet's.
    channel.publish_desired(desired(version=4), load_private_key(keys.private))
    assert (
        refused(seen_version=5)
        == "desired state of fleet edge version 4 is older than version 5 already seen"
    )
    assert "expired at 2026-12-02T12:00:00+00:00" in refused(now=NOW + timedelta(days=2))
    store.put(
        channel.desired_key,
        sign_document(desired(fleet="other").model_dump(mode="json"), load_private_key(keys.private)),
    )
    assert refused() == "desired state of fleet edge: it is fleet other's"
    assert open_document(store.get(channel.desired_key, 10**6).data, trusted, "x")["fleet"] == "other"  # type: ignore[union-attr,arg-type]


def test_a_device_verifies_the_part_of_a_release_it_downloads(tmp_path: Path, keys: KeyPair):
    engines = {t: make_engine(tmp_path / "built" / t, t) for t in ("cpu-a", "cpu-b")}
    canary = tmp_path / "canary.json"
    canary.write_text("{}")
    bundle = bundle_of(tmp_path, keys, engines, canary)
    signature = bundle.parent / "bundle.sig"
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(bundle / "release.json", device)
    release = verify_release_json(
        device, keys.public, signature=signature, current_release=0, fleet=FLEET, now=NOW
    )
    names = [n for n in release.files if n.startswith("engines/cpu-a/")] + [release.canary.file]
    for name in names:
        (device / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bundle / name, device / name)
    verify_files(device, release, names)  # only cpu-a's engine is here, and that is enough

    def refused(call: object) -> str:
        with pytest.raises(BundleRefused) as caught:
            call()  # type: ignore[operator]
        return str(caught.value).removeprefix(f"bundle {device} refused: ")

    (device / names[0]).write_bytes(b"edited")
    assert refused(lambda: verify_files(device, release, names)).endswith(
        "does not match its sha256 in release.json (edited or replaced)"
    )
    shutil.copy(bundle / names[0], device / names[0])
    (device / "engines" / "cpu-a" / "extra.bin").write_bytes(b"x")
    assert (
        refused(lambda: verify_files(device, release, names)) == "engines/cpu-a/extra.bin not expected here"
    )
    (device / "engines" / "cpu-a" / "extra.bin").unlink()
    assert refused(
        lambda: verify_release_json(device, keys.public, signature=signature, current_release=release.number)
    ) == (
        f"release {release.number} is not newer than the device's current release {release.number} "
        "(replay refused)"
    )
    assert "expired at" in refused(
        lambda: verify_release_json(device, keys.public, signature=signature, now=NOW + timedelta(days=400))
    )
    other = generate_key_pair(tmp_path / "other" / "release.key")
    assert refused(lambda: verify_release_json(device, other.public, signature=signature)).startswith(
        "signed by another key"
    )
    text = json.loads((device / "release.json").read_text())
    text["number"] += 10
    (device / "release.json").write_text(json.dumps(text))
    assert refused(lambda: verify_release_json(device, keys.public, signature=signature)) == (
        "file release.json does not match its signature (edited or replaced)"
    )

"""Signed release bundles: keys, bundles signed with real model-signing and verified as a device
would, each kind of tampering refused with one line, release numbers that only grow."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from tasks.cli import main
from tasks.core.errors import BundleRefused, ConfigError, EngineCheckFailed, EngineError
from tasks.core.settings import Settings
from tasks.engines.info import CanaryResult, EngineInfo, write_info
from tasks.engines.target import InputProfile, Range, Requirements, Threads
from tasks.release.bundle import (
    COUNTER,
    Release,
    next_release_number,
    release_numbers,
    signature_path,
    signing_hash_config,
    write_bundle,
)
from tasks.release.keys import KeyPair, generate_key_pair, load_private_key, public_key_path
from tasks.release.verify import verify_bundle

REPO = Path(__file__).resolve().parents[1]
MODEL_VERSION = "minilm-sentiment/7"
FLEET = "edge-eu"
TARGETS = ("cpu-avx2", "cpu-avx512")
LINEAGE = {"checkpoint_digest": "ab" * 32, "recipe": "minilm-sentiment", "git_commit": "0123abc"}


def make_engine(folder: Path, target: str, *, size: int = 4096, passed: bool = True) -> Path:
    """An engine folder as the builders write it: engine files and an engine.json listing them."""
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(random.Random(target).randbytes(size))
    (folder / "tokenizer.json").write_text(json.dumps({"model": "wordpiece", "for": target}))
    files = {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("model.onnx", "tokenizer.json")
    }
    check = CanaryResult(
        examples=64,
        agreement=0.984 if passed else 0.5,
        max_logit_diff=0.031,
        passed=passed,
        reason="ok" if passed else "agreement 0.500 < 0.98",
        device="cpu",
    )
    info = EngineInfo(
        target=target,
        runtime="onnxruntime-cpu",
        runtime_version="1.22.0",
        precision="int8",
        profiles=[InputProfile(batch=Range(min=1, opt=1, max=8), sequence=Range(min=1, opt=64, max=128))],
        threads=Threads(),
        requires=Requirements(cpu_flags=["avx2"]),
        files=files,
        entry="model.onnx",
        inputs=["input_ids", "attention_mask"],
        labels=["negative", "neutral", "positive"],
        source_onnx_digest="cd" * 32,
        model_version=MODEL_VERSION,
        model_key="e" * 24,
        built_on={"cpu": "test"},
        build_seconds=0.1,
        check=check,
    )
    write_info(folder, info)
    return folder


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return generate_key_pair(tmp_path / "keys" / "release.key")


@pytest.fixture
def engines(tmp_path: Path) -> dict[str, Path]:
    return {t: make_engine(tmp_path / "built" / t, t) for t in TARGETS}


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary.jsonl"
    path.write_text("".join(json.dumps({"text": f"tweet {i}", "label": i % 3}) + "\n" for i in range(64)))
    return path


def bundle_of(tmp_path: Path, keys: KeyPair, engines: dict[str, Path], canary: Path, **kwargs) -> Path:
    arguments: dict[str, Any] = {
        "fleet": FLEET,
        "model_version": MODEL_VERSION,
        "lineage": LINEAGE,
        "engines": engines,
        "canary": canary,
        "private_key": keys.private,
        "expires_in": timedelta(days=30),
    } | kwargs
    return write_bundle(tmp_path / "releases", **arguments)


@pytest.fixture
def bundle(tmp_path: Path, keys: KeyPair, engines: dict[str, Path], canary: Path) -> Path:
    return bundle_of(tmp_path, keys, engines, canary)


def refusal(bundle: Path, trusted: Path, **kwargs) -> str:
    """The one-line message of the refusal; fails the test if the bundle verifies."""
    with pytest.raises(BundleRefused) as caught:
        verify_bundle(bundle, trusted, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(f"bundle {bundle} refused: "), message
    assert caught.value.exit_code == 15
    return message.removeprefix(f"bundle {bundle} refused: ")


def resign(bundle: Path, private_key: Path) -> None:
    """Sign the folder again as it now is, with the same key: what a signer that made a mistake would
    ship, so the checks after the signature have something to refuse."""
    from model_signing import signing

    config = signing.Config().use_elliptic_key_signer(private_key=private_key)
    config.set_hashing_config(signing_hash_config()).sign(bundle, signature_path(bundle))


# Keys


def test_keys_are_0600_in_a_0700_folder_and_never_overwritten(tmp_path: Path) -> None:
    private = tmp_path / "home" / "keys" / "release.key"
    pair = generate_key_pair(private)
    assert pair.private == private and pair.public == public_key_path(private) == private.with_name(
        "release.key.pub"
    )
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert pair.public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    assert len(pair.key_id) == 64
    assert not [p for p in private.parent.iterdir() if ".tmp-" in p.name]

    before = private.read_bytes()
    with pytest.raises(ConfigError) as caught:
        generate_key_pair(private)
    assert str(caught.value).startswith(f"signing key {private} exists (key id {pair.key_id[:16]})")
    assert private.read_bytes() == before

    replaced = generate_key_pair(private, force=True)
    assert replaced.key_id != pair.key_id and private.read_bytes() != before
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_key_id_is_the_hint_model_signing_writes(tmp_path: Path, keys: KeyPair) -> None:
    from model_signing import signing

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\1" * 10)
    signing.Config().use_elliptic_key_signer(private_key=keys.private).sign(folder, tmp_path / "model.sig")
    signature = json.loads((tmp_path / "model.sig").read_text())
    assert signature["verificationMaterial"]["publicKey"]["hint"] == keys.key_id


def test_settings_place_the_key_and_the_releases_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.signing_key == tmp_path / "keys" / "release.key"
    assert settings.releases_dir == tmp_path / "releases"
    assert settings.release_expiry_days == 30
    env = settings.environment()
    assert env["SLIMLINE_SIGNING_KEY"] == str(settings.signing_key)
    assert env["SLIMLINE_RELEASE_EXPIRY_DAYS"] == "30"
    with pytest.raises(ValidationError):
        Settings(home=tmp_path, release_expiry_days=0)


# Bundles that verify


def test_a_bundle_is_signed_and_verifies(
    tmp_path: Path, keys: KeyPair, engines: dict[str, Path], bundle: Path
) -> None:
    releases = tmp_path / "releases"
    assert bundle == releases / FLEET / "000001" / "bundle"
    assert signature_path(bundle) == bundle.parent / "bundle.sig"  # beside the folder, not in it
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle", "bundle.sig"]
    assert not [p for p in (releases / FLEET).iterdir() if p.name.startswith(".staging-")]

    release = verify_bundle(bundle, keys.public, current_release=0, fleet=FLEET)
    assert release.number == 1 and release.fleet == FLEET
    assert release.model_version == MODEL_VERSION and release.lineage == LINEAGE
    assert release.targets == {t: f"engines/{t}" for t in TARGETS}
    assert release.signer_key_id == keys.key_id
    assert release.expires_at - release.created_at == timedelta(days=30)
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert set(release.files) == on_disk - {"release.json"}
    for name, digest in release.files.items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest
    assert release.canary.file == "canary/canary.jsonl"
    for target, expected in release.canary.expected.items():
        check = json.loads((engines[target] / "engine.json").read_text())["check"]
        assert (expected.examples, expected.agreement, expected.max_logit_diff) == (
            check["examples"],
            check["agreement"],
            check["max_logit_diff"],
        )


def test_a_bundle_verifies_with_its_signature_elsewhere(tmp_path: Path, keys: KeyPair, bundle: Path) -> None:
    moved = shutil.copytree(bundle, tmp_path / "download" / "b")
    signature = shutil.copy(signature_path(bundle), tmp_path / "download" / "sig.json")
    assert verify_bundle(moved, keys.public, signature=Path(signature)).number == 1
    assert refusal(moved, keys.public).startswith(f"signature {moved}.sig cannot be read")


# Tampering, each refused with one line


def edit_engine_file(bundle: Path) -> None:
    path = bundle / "engines/cpu-avx2/model.onnx"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")


def swap_engines(bundle: Path) -> None:
    engines = bundle / "engines"
    (engines / "cpu-avx2").rename(engines / "swap")
    (engines / "cpu-avx512").rename(engines / "cpu-avx2")
    (engines / "swap").rename(engines / "cpu-avx512")


def add_file(bundle: Path) -> None:
    (bundle / "engines/cpu-avx2/extra.bin").write_bytes(b"\0" * 16)


def add_git_file(bundle: Path) -> None:
    # model-signing skips .git* paths unless told otherwise: bundles are hashed with nothing ignored.
    (bundle / ".gitattributes").write_text("* binary\n")


def remove_file(bundle: Path) -> None:
    (bundle / "canary/canary.jsonl").unlink()


def raise_number(bundle: Path) -> None:
    path = bundle / "release.json"
    path.write_text(path.read_text().replace('"number": 1,', '"number": 99,'))
    assert '"number": 99' in path.read_text()


def add_symlink(bundle: Path) -> None:
    (bundle / "engines/cpu-avx2/model-link.onnx").symlink_to("model.onnx")


TAMPERING = {
    "edited file": (
        edit_engine_file,
        "file engines/cpu-avx2/model.onnx does not match its signature (edited or replaced)",
    ),
    "swapped engines": (
        swap_engines,
        "engines/cpu-avx2/engine.json holds what was signed as engines/cpu-avx512/engine.json, "
        "engines/cpu-avx2/model.onnx holds what was signed as engines/cpu-avx512/model.onnx, "
        "engines/cpu-avx2/tokenizer.json holds what was signed as engines/cpu-avx512/tokenizer.json "
        "and 3 more (engines swapped or files moved)",
    ),
    "extra file": (add_file, "engines/cpu-avx2/extra.bin not covered by the signature (added after signing)"),
    "extra .git file": (add_git_file, ".gitattributes not covered by the signature (added after signing)"),
    "missing file": (remove_file, "signed canary/canary.jsonl missing"),
    "release.json edited": (
        raise_number,
        "file release.json does not match its signature (edited or replaced)",
    ),
    "symlink": (add_symlink, "it holds a symbolic link; bundles carry plain files only"),
}


@pytest.mark.parametrize("case", TAMPERING, ids=list(TAMPERING))
def test_tampering_is_refused_in_one_line(case: str, keys: KeyPair, bundle: Path) -> None:
    tamper, expected = TAMPERING[case]
    tamper(bundle)
    assert refusal(bundle, keys.public) == expected


def test_another_key_is_refused_naming_both_key_ids(tmp_path: Path, keys: KeyPair, bundle: Path) -> None:
    other = generate_key_pair(tmp_path / "other" / "release.key")
    assert refusal(bundle, other.public) == (
        f"signed by another key (key id {keys.key_id[:16]}…, trusted {other.key_id[:16]}…)"
    )


def test_a_forged_key_id_fails_the_signature_itself(tmp_path: Path, keys: KeyPair, bundle: Path) -> None:
    """A signature made with another key that claims the trusted key's id: the ECDSA check refuses it."""
    forger = generate_key_pair(tmp_path / "forger" / "release.key")
    resign(bundle, forger.private)
    path = signature_path(bundle)
    path.write_text(path.read_text().replace(forger.key_id, keys.key_id))
    assert refusal(bundle, keys.public) == (
        f"signature {path} does not verify with the trusted key (forged or corrupted)"
    )


def test_a_missing_or_garbled_signature_or_key_is_refused(
    tmp_path: Path, keys: KeyPair, bundle: Path
) -> None:
    path = signature_path(bundle)
    assert refusal(bundle, tmp_path / "nope.pub") == (
        f"trusted public key {tmp_path / 'nope.pub'}: cannot be read (No such file or directory)"
    )
    assert refusal(bundle, keys.private) == f"trusted public key {keys.private}: not a PEM public key"
    path.write_text("{}")
    assert refusal(bundle, keys.public) == f"signature {path} is not a model-signing key signature"
    path.unlink()
    assert refusal(bundle, keys.public) == f"signature {path} cannot be read (No such file or directory)"
    assert refusal(tmp_path / "absent", keys.public) == "no such folder"


def test_an_expired_bundle_is_refused(keys: KeyPair, bundle: Path) -> None:
    release = verify_bundle(bundle, keys.public)
    late = release.expires_at + timedelta(seconds=1)
    assert refusal(bundle, keys.public, now=late) == (
        f"release 1 expired at {release.expires_at.isoformat()}, now {late.isoformat()}"
    )
    assert verify_bundle(bundle, keys.public, now=release.expires_at - timedelta(seconds=1)) == release


def test_a_replayed_older_release_is_refused(
    tmp_path: Path, keys: KeyPair, engines: dict[str, Path], canary: Path
) -> None:
    old = bundle_of(tmp_path, keys, engines, canary)
    new = bundle_of(tmp_path, keys, engines, canary)
    assert verify_bundle(new, keys.public, current_release=1).number == 2
    assert refusal(old, keys.public, current_release=2) == (
        "release 1 is not newer than the device's current release 2 (replay refused)"
    )
    assert refusal(new, keys.public, current_release=2) == (
        "release 2 is not newer than the device's current release 2 (replay refused)"
    )


def test_a_bundle_for_another_fleet_is_refused(keys: KeyPair, bundle: Path) -> None:
    assert refusal(bundle, keys.public, fleet="edge-us") == f"release 1 is for fleet {FLEET}, not edge-us"


def test_what_a_signer_got_wrong_is_refused_after_the_signature(keys: KeyPair, bundle: Path) -> None:
    """The signature holds, but release.json is invalid or does not describe the folder."""
    add_file(bundle)
    resign(bundle, keys.private)
    assert refusal(bundle, keys.public) == "engines/cpu-avx2/extra.bin not listed in release.json"

    (bundle / "engines/cpu-avx2/extra.bin").unlink()
    path = bundle / "release.json"
    document = json.loads(path.read_text())
    path.write_text(json.dumps(document | {"number": "3"}))
    resign(bundle, keys.private)
    assert (
        refusal(bundle, keys.public)
        == "release.json is not a valid release (number = '3': Input should be a valid integer)"
    )

    path.write_text(json.dumps(document | {"fleet": "../etc"}))
    resign(bundle, keys.private)
    assert refusal(bundle, keys.public).startswith("release.json is not a valid release (fleet = '../etc'")

    info = json.loads((bundle / "engines/cpu-avx2/engine.json").read_text())
    (bundle / "engines/cpu-avx2/engine.json").write_text(json.dumps(info | {"target": "cpu-avx512"}))
    document["files"]["engines/cpu-avx2/engine.json"] = hashlib.sha256(
        (bundle / "engines/cpu-avx2/engine.json").read_bytes()
    ).hexdigest()
    path.write_text(json.dumps(document))
    resign(bundle, keys.private)
    assert (
        refusal(bundle, keys.public) == "engines/cpu-avx2 holds an engine for target cpu-avx512, not cpu-avx2"
    )


def test_release_json_is_parsed_strictly(keys: KeyPair, bundle: Path) -> None:
    document = json.loads((bundle / "release.json").read_text())
    assert Release.model_validate_json(json.dumps(document)).number == 1
    bad = [
        document | {"number": "1"},
        document | {"number": 0},
        document | {"extra": True},
        document | {"expires_at": document["created_at"]},
        document | {"created_at": "2026-01-01T00:00:00"},  # no time zone
        document | {"files": document["files"] | {"../outside": "0" * 64}},
        document | {"files": document["files"] | {"/etc/passwd": "0" * 64}},
        document | {"targets": {"cpu-avx2": "elsewhere"}},
        document | {"signer_key_id": "not-a-digest"},
    ]
    for case in bad:
        with pytest.raises(ValidationError):
            Release.model_validate_json(json.dumps(case))


# Release numbers


def test_numbers_only_grow_even_when_a_release_is_deleted(
    tmp_path: Path, keys: KeyPair, engines: dict[str, Path], canary: Path
) -> None:
    releases = tmp_path / "releases"
    first = bundle_of(tmp_path, keys, engines, canary)
    second = bundle_of(tmp_path, keys, engines, canary)
    shutil.rmtree(second.parent)
    third = bundle_of(tmp_path, keys, engines, canary)
    assert verify_bundle(third, keys.public, current_release=1).number == 3
    assert release_numbers(releases, FLEET) == [1, 3]
    assert first.parent.name == "000001" and third.parent.name == "000003"
    assert next_release_number(releases, "other-fleet") == 1  # per fleet

    (releases / FLEET / COUNTER).unlink()  # lost counter: the releases on disk still bound it
    assert next_release_number(releases, FLEET) == 4
    (releases / FLEET / COUNTER).write_text("garbage\n")
    with pytest.raises(ConfigError, match="is corrupt"):
        next_release_number(releases, FLEET)


NUMBERS = """
import sys, time
from pathlib import Path
from tasks.release.bundle import next_release_number
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
print(*(next_release_number(Path(sys.argv[1]), "edge-eu") for _ in range(40)))
"""

BUNDLES = """
import sys, time
from datetime import timedelta
from pathlib import Path
from tasks.release.bundle import write_bundle
releases, engine, canary, key, start = sys.argv[1:]
import model_signing.signing  # imported before the start, so both processes race on numbers
while time.time() < float(start):
    time.sleep(0.001)
for _ in range(3):
    print(write_bundle(Path(releases), fleet="edge-eu", model_version="minilm-sentiment/7", lineage={},
                       engines={"cpu-avx2": Path(engine)}, canary=Path(canary), private_key=Path(key),
                       expires_in=timedelta(days=1)), flush=True)
"""


def in_two_processes(script: str, *args: str) -> list[str]:
    start = str(time.time() + 3)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args, start], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    return [word for out in outputs for word in out.split()]


def test_concurrent_allocators_never_share_a_number(tmp_path: Path) -> None:
    numbers = [int(n) for n in in_two_processes(NUMBERS, str(tmp_path))]
    assert sorted(numbers) == list(range(1, 81))


def test_concurrent_bundlers_get_distinct_numbers(
    tmp_path: Path, keys: KeyPair, engines: dict[str, Path], canary: Path
) -> None:
    releases = tmp_path / "releases"
    printed = in_two_processes(
        BUNDLES, str(releases), str(engines["cpu-avx2"]), str(canary), str(keys.private)
    )
    bundles = [Path(p) for p in printed]
    assert sorted(verify_bundle(b, keys.public).number for b in bundles) == [1, 2, 3, 4, 5, 6]
    assert release_numbers(releases, FLEET) == [1, 2, 3, 4, 5, 6]


# What write_bundle refuses, and what it never leaves behind


def test_a_failed_engine_is_not_bundled_and_burns_no_number(
    tmp_path: Path, keys: KeyPair, engines: dict[str, Path], canary: Path
) -> None:
    failed = make_engine(tmp_path / "failed" / "cpu-avx2", "cpu-avx2", passed=False)
    with pytest.raises(EngineCheckFailed, match=r"failed its canary check \(agreement 0.500 < 0.98\)"):
        bundle_of(tmp_path, keys, {"cpu-avx2": failed}, canary)
    with pytest.raises(EngineError, match="built for target cpu-avx512, bundled for cpu-avx2"):
        bundle_of(tmp_path, keys, {"cpu-avx2": engines["cpu-avx512"]}, canary)
    with pytest.raises(EngineError, match="built from minilm-sentiment/7, not minilm-sentiment/8"):
        bundle_of(tmp_path, keys, engines, canary, model_version="minilm-sentiment/8")
    assert next_release_number(tmp_path / "releases", FLEET) == 1


def test_a_bundle_that_fails_half_way_leaves_nothing_visible(
    tmp_path: Path, keys: KeyPair, engines: dict[str, Path], canary: Path
) -> None:
    (engines["cpu-avx512"] / "tokenizer.json").unlink()
    with pytest.raises(EngineError, match=r"tokenizer\.json, listed in engine\.json, is missing"):
        bundle_of(tmp_path, keys, engines, canary)
    shutil.copy(keys.private, engines["cpu-avx2"] / "stray.pem")
    make_engine(tmp_path / "ok" / "cpu-avx512", "cpu-avx512")
    with pytest.raises(ConfigError, match=r"stray\.pem is the signing key; it never enters a bundle"):
        bundle_of(tmp_path, keys, {**engines, "cpu-avx512": tmp_path / "ok" / "cpu-avx512"}, canary)
    fleet_dir = tmp_path / "releases" / FLEET
    assert sorted(p.name for p in fleet_dir.iterdir()) == [COUNTER, f"{COUNTER}.lock"]


def test_the_private_key_never_enters_a_bundle_a_signature_or_a_log(
    tmp_path: Path, keys: KeyPair, engines: dict[str, Path], canary: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    bundle = bundle_of(tmp_path, keys, engines, canary)
    verify_bundle(bundle, keys.public)
    key = load_private_key(keys.private)
    pem = keys.private.read_bytes()
    secrets = [
        pem,
        b"".join(pem.splitlines()[1:-1]),  # the base64 body
        key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        key.private_numbers().private_value.to_bytes(32, "big"),
        key.private_numbers().private_value.to_bytes(32, "big").hex().encode(),
    ]
    written = [p.read_bytes() for p in bundle.parent.rglob("*") if p.is_file()]
    signature = json.loads(signature_path(bundle).read_text())
    written.append(base64.b64decode(signature["dsseEnvelope"]["payload"]))
    written.append(caplog.text.encode())
    for data in written:
        for secret in secrets:
            assert secret not in data


def test_release_code_imports_neither_torch_mlflow_nor_airflow(
    tmp_path: Path, keys: KeyPair, bundle: Path
) -> None:
    """What a device runs to verify a bundle (model-signing included) loads none of them."""
    script = (
        "import sys\nfrom pathlib import Path\n"
        "import tasks.release.bundle, tasks.release.keys\n"
        "from tasks.release.verify import verify_bundle\n"
        "verify_bundle(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "print(sorted(m for m in ('torch', 'mlflow', 'airflow', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(bundle), str(keys.public)],
        env=os.environ | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "[]"


# The command line


def test_cli_generates_keys_and_verifies_a_bundle(
    tmp_path: Path, engines: dict[str, Path], canary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(home=tmp_path / "home")
    home = ["--home", str(settings.home)]
    assert main([*home, "keys", "generate"]) == 0
    out = capsys.readouterr().out
    public = public_key_path(settings.signing_key)
    assert f"private key: {settings.signing_key}" in out and f"public key:  {public}" in out
    assert "PRIVATE KEY" not in out and settings.signing_key.read_text().splitlines()[1] not in out

    assert main([*home, "keys", "generate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"slimline: error: signing key {settings.signing_key} exists") and "\n" not in err

    bundle = write_bundle(
        settings.releases_dir,
        fleet=FLEET,
        model_version=MODEL_VERSION,
        lineage=LINEAGE,
        engines=engines,
        canary=canary,
        private_key=settings.signing_key,
        expires_in=timedelta(days=settings.release_expiry_days),
    )
    verify = ["release", "verify", str(bundle), "--trusted-key", str(public)]
    assert main([*verify, "--current-release", "0", "--fleet", FLEET]) == 0
    out = capsys.readouterr().out
    release = Release.model_validate_json((bundle / "release.json").read_text())
    for line in (
        f"release:  {release.release_id}",
        f"fleet:    {FLEET}",
        "number:   1",
        f"model:    {MODEL_VERSION}",
        f"expires:  {release.expires_at.isoformat()}",
    ):
        assert line in out

    assert main([*verify, "--current-release", "1"]) == 15
    assert capsys.readouterr().err == (
        f"slimline: error: bundle {bundle} refused: release 1 is not newer than the device's current "
        "release 1 (replay refused)\n"
    )
    edit_engine_file(bundle)
    assert main(verify) == 15
    assert capsys.readouterr().err == (
        f"slimline: error: bundle {bundle} refused: file engines/cpu-avx2/model.onnx does not match its "
        "signature (edited or replaced)\n"
    )


def test_cli_refuses_an_expired_bundle(
    tmp_path: Path, keys: KeyPair, engines: dict[str, Path], canary: Path
) -> None:
    """Through the installed console script, as a device would run it."""
    created = datetime.now(UTC) - timedelta(days=31)
    bundle = bundle_of(tmp_path, keys, engines, canary, now=created)
    script = Path(sys.executable).with_name("slimline")
    result = subprocess.run(
        [script, "release", "verify", str(bundle), "--trusted-key", str(keys.public)],
        env=os.environ | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 15 and result.stdout == ""
    expires = (created.replace(microsecond=0) + timedelta(days=30)).isoformat()
    assert result.stderr.startswith(
        f"slimline: error: bundle {bundle} refused: release 1 expired at {expires}, now "
    )
    assert result.stderr.count("\n") == 1

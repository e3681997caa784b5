"""`slimline audit fleet` and the device cross-check of `slimline audit verify` on a small fleet: a
file:// channel, real signed bundles, the release side's real steps (begin, advance, conclude with
a fleet-wide rollback) writing their audit records; devices simulated by writing their enrollment
and reports through the channel, the nightly run's records appended through append_event."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tasks.audit.log import append_event, open_log, read_records
from tasks.cli import main
from tasks.core.errors import RolloutAborted
from tasks.core.settings import Settings
from tasks.engines.build import engine_digest
from tasks.fleet.channel import ActiveRelease, Attempt, DeviceStatus, Result, open_channel
from tasks.flow.fleet_release import (
    Published,
    advance_rollout,
    ask_approval,
    begin_rollout,
    conclude_rollout,
)
from tasks.flow.release import record_bundle
from tasks.release.bundle import Release
from tasks.release.keys import KeyPair, generate_key_pair, load_public_key
from tests.test_rollout import FLEET, TARGETS, WAVES, bundle_of, enroll

GOOD, BAD = "minilm-sentiment/7", "minilm-sentiment/8"
CHECKPOINT = "s3://models/nightly/minilm"
# Four devices of the first target (two of them canaries), two of the second.
DEVICES = {"c1": {"ring": "canary"}, "c2": {"ring": "canary"}, "d1": {}, "d2": {}, "d3": {}, "d4": {}}
TARGET_OF = {d: TARGETS[1] if d in ("d3", "d4") else TARGETS[0] for d in DEVICES}
_seq = itertools.count()


def lineage(run: str) -> dict[str, str]:
    return {
        "run_id": run,
        "variant": "onnx-int8-dynamic",
        "checkpoint_uri": CHECKPOINT,
        "checkpoint_digest": "cd" * 32,
        "dataset_digest": "da" * 32,
        "recipe_digest": "re" * 32,
        "code_commit": "0123abc",
    }


def nightly_records(settings: Settings) -> None:
    """What the nightly run wrote about the two versions (see tasks.flow.audit_events)."""
    facts = lineage("run-good") | {"artifact_key": "ak" * 32}
    append_event(
        settings, "checkpoint.verified", f"checkpoint:{CHECKPOINT}", {"digest": "cd" * 32}, "nightly"
    )
    append_event(
        settings,
        "data.validated",
        f"dataset:{'da' * 32}",
        {"dataset_digest": "da" * 32, "success": True, "result": "passed"},
        "nightly",
    )
    for run, passed in (("run-good", True), ("run-bad", True)):
        data: dict[str, Any] = facts | {"run_id": run, "stage": "gates", "passed": passed}
        data["reasons"] = ["acc drop 0.4 pts"]
        append_event(settings, "variant.gated", f"variant_run:{run}", data, "nightly")
    for version, run in ((GOOD, "run-good"), (BAD, "run-bad")):
        data = {"run_id": run, "artifact_key": "ak" * 32}
        append_event(settings, "version.registered", f"model_version:{version}", data, "nightly")


def signed_release(
    settings: Settings, keys: KeyPair, tmp_path: Path, model_version: str, run: str, size: int
) -> Path:
    """A signed bundle of `model_version` for both targets, recorded as bundle_release does."""
    bundle = bundle_of(tmp_path, settings.releases_dir, keys, model_version, size, lineage(run))
    record_bundle(settings, bundle)
    return bundle


def report(settings: Settings, device: str, release: int, result: Result, digest: str | None = None) -> None:
    """The agent's report after trying `release`: `active` switches to it (its engine for the device's
    target, or `digest`), anything else keeps what it served."""
    channel = open_channel(settings, FLEET)
    before = channel.statuses([device]).get(device)
    active = before.active if before else None
    now = datetime.now(UTC)
    target = TARGET_OF[device]
    if result == "active":
        bundle = settings.releases_dir / FLEET / f"{release:06d}" / "bundle"
        released = Release.model_validate_json((bundle / "release.json").read_text())
        active = ActiveRelease(
            release=release,
            target=target,
            model_version=released.model_version,
            engine_digest=digest or engine_digest(bundle / released.targets[target]),
            activated_at=now,
        )
    attempt = Attempt(release=release, result=result, phase="serve", target=target, at=now)
    status = DeviceStatus(
        device=device, fleet=FLEET, seq=next(_seq), reported_at=now, active=active, attempt=attempt
    )
    channel.put_status(status)


def devices_act(settings: Settings, keys: KeyPair, bad: frozenset[str] = frozenset()) -> None:
    """Every device told to run a release above the last it tried reports on it; `bad` roll it back."""
    channel = open_channel(settings, FLEET)
    state, _ = channel.fetch_desired(load_public_key(keys.public), seen_version=None, now=datetime.now(UTC))
    assert state is not None
    statuses = channel.statuses()
    for device in DEVICES:
        wanted = state.release_for(device)
        status = statuses.get(device)
        tried = status.attempt.release if status and status.attempt else 0
        if wanted is not None and wanted > tried:
            report(settings, device, wanted, "rolled_back" if device in bad else "active")


def published(bundle: Path) -> Published:
    release = Release.model_validate_json((bundle / "release.json").read_text())
    return Published(
        fleet=FLEET,
        release=release.number,
        model_version=release.model_version,
        bundle=bundle,
        engines=[],
        approval_required=True,
        approval_timeout_minutes=60,
        summary="",
    )


def answer(by: str, comment: str) -> dict[str, Any]:
    return {
        "chosen_options": ["Approve"],
        "params_input": {"comment": comment},
        "responded_at": "2026-05-01T09:30:00+00:00",
        "responded_by_user": {"name": by},
    }


def roll_out(
    settings: Settings, keys: KeyPair, release: Published, bad: frozenset[str] = frozenset()
) -> None:
    for _ in range(20):
        if advance_rollout(settings, release):
            return
        devices_act(settings, keys, bad)
    raise AssertionError("rollout did not finish")


@pytest.fixture
def fleet_settings(tmp_path: Path) -> tuple[Settings, KeyPair]:
    fleets = tmp_path / "fleets"
    fleets.mkdir()
    spec = {"name": FLEET, "targets": TARGETS, "waves": WAVES, "approval": {"required": True}}
    (fleets / f"{FLEET}.yaml").write_text(json.dumps(spec))
    (tmp_path / "home").mkdir()
    settings = Settings(home=tmp_path / "home", fleets_dir=fleets)
    keys = generate_key_pair(settings.signing_key)
    enroll(open_channel(settings, FLEET), DEVICES)
    return settings, keys


def test_a_release_and_its_rollback_leave_their_records_and_audit_fleet_shows_every_chain(
    fleet_settings: tuple[Settings, KeyPair], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    settings, keys = fleet_settings
    nightly_records(settings)
    good = published(signed_release(settings, keys, tmp_path, GOOD, "run-good", 4096))
    ask_approval(settings, good)  # as the DAG's approval task does when it starts waiting
    begin_rollout(settings, good, answer("alice", "canary numbers fine"))
    roll_out(settings, keys, good)
    bad = published(signed_release(settings, keys, tmp_path, BAD, "run-bad", 2048))
    ask_approval(settings, bad)
    begin_rollout(settings, bad, answer("bob", "ship it"))
    roll_out(settings, keys, bad, bad=frozenset({"c1"}))
    with pytest.raises(RolloutAborted, match="rolled back to release 3"):
        conclude_rollout(settings, bad, None)
    devices_act(settings, keys)  # every device installs release 3, which carries release 1

    kinds = [r.kind for r in read_records(open_log(settings))][6:]
    assert kinds == [
        "bundle.signed",
        "approval.asked",
        "approval.given",
        "wave.started",  # canary: c1
        *["device.activated", "wave.promoted", "wave.started"],  # early: c2, d1, d2
        *["device.activated"] * 3 + ["wave.promoted", "wave.started"],  # the last wave: d3, d4
        *["device.activated"] * 2 + ["wave.promoted"],
        "bundle.signed",
        "approval.asked",
        "approval.given",
        "wave.started",
        "device.rolled_back",
        "wave.aborted",
        "bundle.signed",  # release 3, carrying release 1
        "fleet.rolled_back",
    ]

    assert main(["--home", str(settings.home), "audit", "fleet", FLEET, "--json"]) == 0
    trace = json.loads(capsys.readouterr().out)
    assert trace["devices"] == 6
    assert [g["devices"] for g in trace["groups"]] == [["c1", "c2", "d1", "d2"], ["d3", "d4"]]
    for group, target in zip(trace["groups"], TARGETS, strict=True):
        chain = group["lineage"]
        assert chain["release"] == 3 and chain["target"] == target and chain["released"] is True
        assert chain["model_version"] == GOOD and chain["variant_run"] == "run-good"
        assert chain["checkpoint_uri"] == CHECKPOINT and chain["checkpoint_verified"] is True
        assert chain["dataset_digest"] == "da" * 32 and chain["validation"] == "passed"
        assert chain["recipe_digest"] == "re" * 32 and chain["code_commit"] == "0123abc"
        assert chain["gate_passed"] is True and chain["gate_reasons"] == ["acc drop 0.4 pts"]
        # Release 3 needed no approval: it carries release 1, which alice approved.
        assert chain["approval"] == "given" and chain["approved_by"] == "alice"
        assert chain["approved_at"] == "2026-05-01T09:30:00+00:00"

    assert main(["--home", str(settings.home), "audit", "fleet", FLEET]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"fleet {FLEET}: 6 devices, 2 distinct lineages\n  c1, c2, d1, d2 (4)\n")
    assert "approval given by alice at 2026-05-01T09:30:00+00:00: canary numbers fine" in text

    assert main(["--home", str(settings.home), "audit", "verify"]) == 0
    assert "6 devices run only engines released to their fleet" in capsys.readouterr().out

    # One device: the same chain, and its history (c1 took release 1, rolled release 2 back, and
    # its fleet was rolled back to release 3).
    assert main(["--home", str(settings.home), "audit", "device", "c1", "--json"]) == 0
    device = json.loads(capsys.readouterr().out)
    assert device["fleet"] == FLEET and device["running"]["release"] == 3
    assert device["lineage"] == trace["groups"][0]["lineage"]
    history = [(e["kind"], e["summary"]) for e in device["history"]]
    assert [kind for kind, _ in history] == ["device.activated", "device.rolled_back", "fleet.rolled_back"]
    assert history[0][1].startswith(f"release 1 ({GOOD}), engine ")
    assert history[1][1].startswith(f"release 2 ({BAD}) at ")
    assert history[2][1].startswith("release 2 aborted; release 3 restores 1: wave canary: abort criterion")
    assert main(["--home", str(settings.home), "audit", "device", "c1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"device {FLEET}/c1: serves release 3 since ")
    assert "history (3 records):" in text and "approval given by alice" in text
    assert main(["--home", str(settings.home), "audit", "device", "nope"]) == 2
    assert capsys.readouterr().err == (
        f"slimline: error: no device 'nope' is enrolled in any fleet of {settings.channel_uri}; "
        "`slimline fleet status F` lists them\n"
    )

    # One version: where it runs, and every decision about it (in log order).
    assert main(["--home", str(settings.home), "audit", "version", GOOD, "--json"]) == 0
    good_trace = json.loads(capsys.readouterr().out)
    assert good_trace["deployed"] == [
        {"fleet": FLEET, "release": 3, "target": TARGETS[0], "devices": ["c1", "c2", "d1", "d2"]},
        {"fleet": FLEET, "release": 3, "target": TARGETS[1], "devices": ["d3", "d4"]},
    ]
    decisions = [(e["kind"], e["subject"]) for e in good_trace["decisions"]]
    assert decisions[:5] == [
        ("checkpoint.verified", f"checkpoint:{CHECKPOINT}"),
        ("data.validated", f"dataset:{'da' * 32}"),
        ("variant.gated", "variant_run:run-good"),
        ("version.registered", f"model_version:{GOOD}"),
        ("bundle.signed", f"fleet:{FLEET}"),
    ]
    assert ("approval.given", f"fleet:{FLEET}") in decisions and (
        "wave.aborted",
        f"fleet:{FLEET}",
    ) not in decisions
    assert decisions.count(("device.activated", f"device:{FLEET}/c1")) == 1
    assert decisions[-2:] == [("bundle.signed", f"fleet:{FLEET}"), ("fleet.rolled_back", f"fleet:{FLEET}")]

    assert main(["--home", str(settings.home), "audit", "version", BAD]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"model version {BAD}\n  deployed nowhere\ndecisions (")
    for line in (
        "variant.gated variant_run:run-bad (nightly): onnx-int8-dynamic gates passed: yes; acc drop 0.4 pts",
        f"approval.asked fleet:{FLEET} (fleet_release): release 2 of {BAD} to fleet {FLEET}, within 60.0 min",
        f"device.rolled_back device:{FLEET}/c1 (fleet_release): release 2 ({BAD}) at ",
        f"fleet.rolled_back fleet:{FLEET} (fleet_release): release 2 aborted; release 3 restores 1",
    ):
        assert line in text, line
    assert "checkpoint.verified" in text and "wave.aborted" in text and "device.activated" not in text


def test_verify_names_a_device_running_an_engine_never_released_to_its_fleet(
    fleet_settings: tuple[Settings, KeyPair], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    settings, keys = fleet_settings
    good = published(signed_release(settings, keys, tmp_path, GOOD, "run-good", 4096))
    begin_rollout(settings, good, answer("alice", ""))
    roll_out(settings, keys, good)
    assert main(["--home", str(settings.home), "audit", "verify"]) == 0
    capsys.readouterr()

    report(settings, "d2", 1, "active", digest="ee" * 32)  # swapped in by hand on the device
    assert main(["--home", str(settings.home), "audit", "verify"]) == 17
    assert capsys.readouterr().err == (
        f"slimline: error: device {FLEET}/d2 runs engine {'ee' * 32} (release 1, target {TARGETS[0]}), "
        f"which no bundle.signed record of fleet {FLEET} names: it was never released to this fleet\n"
    )

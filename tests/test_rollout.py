"""The release side of a rollout: waves planned from enrollments, each wave judged from its devices'
reports, signed desired states published within the disruption budget, and the fleet-wide
rollback to a new signed release. Real channels (file:// and moto's S3 server), real signed
bundles; devices are simulated by writing their enrollment and reports through the channel."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tasks.cli import main
from tasks.core.errors import ConfigError
from tasks.core.store import open_store
from tasks.engines.capabilities import Capabilities
from tasks.engines.info import read_info, write_info
from tasks.fleet.channel import (
    ActiveRelease,
    Attempt,
    Channel,
    DesiredState,
    DeviceStatus,
    Enrollment,
    HealthReport,
    Result,
)
from tasks.fleet.judge import Outcome, judge_wave
from tasks.fleet.rollout import (
    ApprovalRecord,
    RolloutRecord,
    advance,
    fleet_rollback,
    load_rollout,
    start_rollout,
)
from tasks.fleet.spec import LAST_WAVE, AbortCriterion, Fleet
from tasks.fleet.waves import plan_waves
from tasks.release.bundle import RELEASE_JSON, Release, release_numbers, write_bundle
from tasks.release.keys import KeyPair, generate_key_pair, load_public_key
from tasks.release.verify import verify_bundle
from tests.test_release_bundle import LINEAGE, make_engine

FLEET = "edge-eu"
TARGETS = ["cpu-avx2", "cpu-avx512"]
GOOD, BAD = "minilm-sentiment/7", "minilm-sentiment/8"
T0 = datetime.now(UTC).replace(microsecond=0)
CAPS = Capabilities(machine="x86_64", cpu_model="test", cpu_flags=["avx2"], cpu_count=2, runtimes={}, gpus=[])
WAVES = [
    {"name": "canary", "selector": {"ring": "canary"}, "limit": 1},
    {"name": "early", "limit": "50%"},
]
_seq = itertools.count()


def fleet_of(**overrides: Any) -> Fleet:
    data = {"name": FLEET, "targets": TARGETS, "waves": WAVES, "release_expiry_days": 30} | overrides
    return Fleet.model_validate(data)


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return generate_key_pair(tmp_path / "keys" / "release.key")


@pytest.fixture
def public(keys: KeyPair) -> ec.EllipticCurvePublicKey:
    return load_public_key(keys.public)


@pytest.fixture
def channel(tmp_path: Path) -> Channel:
    return Channel(open_store((tmp_path / "channel").as_uri()), FLEET)


def bundle_of(
    tmp_path: Path,
    releases: Path,
    keys: KeyPair,
    model_version: str,
    size: int,
    lineage: dict[str, str] = LINEAGE,
) -> Path:
    """A signed release of `model_version` for both targets; `size` makes its engines differ."""
    built = tmp_path / "built" / model_version.replace("/", "-")
    engines = {}
    for target in TARGETS:
        folder = make_engine(built / target, target, size=size)
        write_info(folder, read_info(folder).model_copy(update={"model_version": model_version}))
        engines[target] = folder
    canary = built / "canary.jsonl"
    canary.write_text("".join(json.dumps({"text": f"tweet {i}", "label": i % 3}) + "\n" for i in range(8)))
    return write_bundle(
        releases,
        fleet=FLEET,
        model_version=model_version,
        lineage=lineage,
        engines=engines,
        canary=canary,
        private_key=keys.private,
        expires_in=timedelta(days=30),
        now=T0,
    )


def enroll(channel: Channel, devices: dict[str, dict[str, str]]) -> None:
    for device, labels in devices.items():
        channel.put_enrollment(
            Enrollment(
                device=device,
                fleet=channel.fleet,
                labels=labels,
                capabilities=CAPS,
                agent_version="test",
                enrolled_at=T0,
            )
        )


def report(channel: Channel, device: str, release: int, result: Result, now: datetime) -> None:
    """What the agent writes after trying `release`: `active` switches to it, anything else keeps
    the release it served."""
    before = channel.statuses([device]).get(device)
    active = before.active if before else None
    if result == "active":
        active = ActiveRelease(
            release=release,
            target=TARGETS[0],
            model_version=f"m/{release}",
            engine_digest="0" * 64,
            activated_at=now,
        )
    passed = result == "active"
    health = HealthReport(
        examples=8,
        agreement=1.0 if passed else 0.4,
        accuracy=0.8 if passed else 0.3,
        expected_accuracy=0.8,
        accuracy_drop=0.0 if passed else 0.5,
        p50_ms=1.2,
        p95_ms=2.5,
        errors=0,
        passed=passed,
        reason="ok" if passed else "agreement 0.400 < 0.95",
    )
    attempt = Attempt(
        release=release,
        result=result,
        phase="serve" if passed else "check",
        reason="" if passed else health.reason,
        target=TARGETS[0],
        health=health,
        at=now,
    )
    channel.put_status(
        DeviceStatus(
            device=device,
            fleet=channel.fleet,
            seq=next(_seq),
            reported_at=now,
            active=active,
            attempt=attempt,
            previous_release=before.active.release if before and before.active else None,
        )
    )


Behaviour = Callable[[str, int], Result | None]  # (device, release) → its report; None: offline


def devices_act(channel: Channel, state: DesiredState, now: datetime, behaviour: Behaviour) -> None:
    """Every enrolled device told to run a release above the last it tried reports on it."""
    statuses = channel.statuses()
    for device in channel.device_ids():
        wanted = state.release_for(device)
        status = statuses.get(device)
        tried = status.attempt.release if status and status.attempt else 0
        result = behaviour(device, wanted) if wanted is not None and wanted > tried else None
        if wanted is not None and result is not None:
            report(channel, device, wanted, result, now)


def drive(
    channel: Channel,
    fleet: Fleet,
    record: RolloutRecord,
    keys: KeyPair,
    public: ec.EllipticCurvePublicKey,
    behaviour: Behaviour,
    start: datetime = T0,
    step: timedelta = timedelta(minutes=1),
) -> tuple[RolloutRecord, list[DesiredState], datetime]:
    """Advance the rollout as the DAG's sensor would, devices answering between pokes; returns the
    final record, every distinct desired state seen (verified with the public key) and the time."""
    seen: list[DesiredState] = []
    now = start
    for _ in range(40):
        record = advance(channel, fleet, record, keys.private, now)
        state, _ = channel.fetch_desired(public, seen_version=seen[-1].version if seen else None, now=now)
        assert state is not None
        if not seen or state.version != seen[-1].version:
            seen.append(state)
        if record.state not in ("pending", "rolling"):
            return record, seen, now
        now += step
        devices_act(channel, state, now, behaviour)
    raise AssertionError(f"rollout did not finish: {record.state}")


def all_active(device: str, release: int) -> Result:
    return "active"


FLEET_DEVICES = {
    "c1": {"ring": "canary"},
    "c2": {"ring": "canary"},
    "d1": {},
    "d2": {},
    "d3": {},
    "d4": {},
}


# Waves


def test_waves_take_matching_devices_in_sorted_order_up_to_their_limit(channel: Channel) -> None:
    devices = {
        f"dev-{i:02d}": {"ring": "canary" if i % 4 == 0 else "main", "site": f"s{i % 2}"} for i in range(12)
    }
    enroll(channel, devices)
    fleet = fleet_of(
        waves=[
            {"name": "canary", "selector": {"ring": "canary"}, "limit": "50%", "success_threshold": 50},
            {"name": "site0", "selector": {"ring": "main", "site": "s0"}, "limit": 2, "timeout_minutes": 5},
            {"name": "gpu", "selector": {"accelerator": "gpu"}},
            {"name": "quarter", "limit": "25%"},
        ]
    )
    enrollments = channel.enrollments()
    waves = plan_waves(fleet, enrollments)
    assert [(w.name, w.devices) for w in waves] == [
        ("canary", ["dev-00", "dev-04"]),  # 50% of the 3 canaries, rounded up
        ("site0", ["dev-02", "dev-06"]),
        ("gpu", []),  # kept: it passes trivially, and the record says so
        ("quarter", ["dev-01", "dev-03"]),  # 25% of the 8 left
        (LAST_WAVE, ["dev-05", "dev-07", "dev-08", "dev-09", "dev-10", "dev-11"]),
    ]
    assert (waves[0].success_threshold, waves[0].timeout_minutes) == (50, fleet.wave_timeout_minutes)
    assert (waves[1].success_threshold, waves[1].timeout_minutes) == (fleet.success_threshold, 5)
    assert plan_waves(fleet, dict(reversed(list(enrollments.items())))) == waves  # deterministic
    everyone = fleet_of(waves=[{"name": "all"}])
    assert [w.name for w in plan_waves(everyone, enrollments)] == ["all"]  # no empty `rest`


# The judge

FAILED_HALF = AbortCriterion(failure_type="failed", min_devices_reported=2, threshold_percentage=50)


@pytest.mark.parametrize(
    ("outcomes", "criteria", "threshold", "late", "decision", "reason"),
    [
        (
            ["failed", "succeeded", "pending", "pending"],
            [FAILED_HALF],
            50,
            False,
            "aborted",
            "1 of 2 reported",
        ),
        (["failed", "pending", "pending"], [FAILED_HALF], 50, False, "in_progress", "0 of 3 succeeded"),
        (
            ["rejected", "rejected", "succeeded", "pending"],
            [AbortCriterion(failure_type="rejected", min_devices_reported=3, threshold_percentage=60)],
            50,
            False,
            "aborted",
            "2 of 3 reported devices rejected the release (66.7% ≥ 60%",
        ),
        (
            ["succeeded", "pending", "pending"],
            [AbortCriterion(failure_type="timed_out", min_devices_reported=1, threshold_percentage=50)],
            10,
            True,
            "aborted",
            "2 of 3 reported devices timed out",
        ),
        (
            ["succeeded", "pending", "pending"],
            [AbortCriterion(failure_type="timed_out", min_devices_reported=1, threshold_percentage=50)],
            10,
            False,
            "in_progress",
            "2 pending",
        ),
        (
            ["failed", "rejected", "succeeded", "succeeded"],
            [AbortCriterion(failure_type="all", min_devices_reported=4, threshold_percentage=50)],
            50,
            False,
            "aborted",
            "abort criterion all: 2 of 4",
        ),
        (
            ["failed", "rejected", "succeeded", "succeeded"],
            [AbortCriterion(failure_type="all", min_devices_reported=4, threshold_percentage=60)],
            50,
            False,
            "succeeded",
            "2 of 4 succeeded (50% ≥ 50% needed)",
        ),
        (["succeeded"] * 9 + ["failed"], [], 90, False, "succeeded", "9 of 10 succeeded (90% ≥ 90% needed)"),
        (["succeeded"] * 9 + ["failed"], [], 95, False, "aborted", "9 of 10 succeeded (90% < 95% needed)"),
        (["failed", "pending"], [], 100, False, "aborted", "at most 50% can, 100% needed"),
        (["succeeded"] * 3 + ["pending"], [], 75, True, "succeeded", "(75% ≥ 75% needed), 1 timed out"),
        (["succeeded"] * 3 + ["pending"], [], 80, True, "aborted", "(75% < 80% needed), 1 timed out"),
        ([], [FAILED_HALF], 100, False, "succeeded", "no device in this wave"),
    ],
)
def test_judge_wave(
    outcomes: list[Outcome],
    criteria: list[AbortCriterion],
    threshold: float,
    late: bool,
    decision: str,
    reason: str,
) -> None:
    judgement = judge_wave(outcomes, success_threshold=threshold, abort=criteria, deadline_passed=late)
    assert judgement.decision == decision and reason in judgement.reason, judgement.reason
    assert "\n" not in judgement.reason
    counts = judgement.counts
    assert counts.size == len(outcomes) == counts.reported + counts.pending
    assert counts.timed_out == (outcomes.count("pending") if late else 0)


# Advancing a rollout


def test_a_rollout_succeeds_wave_by_wave(
    tmp_path: Path, channel: Channel, keys: KeyPair, public: ec.EllipticCurvePublicKey
) -> None:
    enroll(channel, FLEET_DEVICES)
    fleet = fleet_of()
    bundle = bundle_of(tmp_path, tmp_path / "releases", keys, GOOD, 4096)
    record = start_rollout(channel, fleet, bundle, keys.private, T0)
    assert record.state == "pending" and record.previous_release is None
    assert [(w.name, w.devices) for w in record.waves] == [
        ("canary", ["c1"]),
        ("early", ["c2", "d1", "d2"]),
        (LAST_WAVE, ["d3", "d4"]),
    ]
    assert channel.published_releases() == [1]

    record, seen, _ = drive(channel, fleet, record, keys, public, all_active)
    assert record.state == "succeeded" and record.reason == "every wave succeeded"
    assert [w.decision for w in record.waves] == ["succeeded"] * 3
    assert [w.counts.succeeded for w in record.waves] == [1, 3, 2]
    versions = [s.version for s in seen]
    assert versions == sorted(set(versions)) and versions[0] == 1  # strictly growing
    assert [s.devices for s in seen] == [
        {"c1": 1},
        {"c1": 1, "c2": 1, "d1": 1, "d2": 1},
        {"c1": 1, "c2": 1, "d1": 1, "d2": 1, "d3": 1, "d4": 1},
        {},
    ]
    assert all(s.release is None for s in seen[:-1]) and seen[-1].release == 1
    assert seen[-1].targets == TARGETS and seen[-1].health == fleet.health
    assert seen[-1].expires_at - seen[-1].issued_at == timedelta(days=30)
    assert load_rollout(channel, 1) == record


def test_the_disruption_budget_limits_assignments_and_advance_is_idempotent(
    tmp_path: Path, channel: Channel, keys: KeyPair, public: ec.EllipticCurvePublicKey
) -> None:
    enroll(channel, {f"d{i}": {} for i in range(5)})
    fleet = fleet_of(waves=[], disruption_budget={"max_unavailable": "40%"})  # 2 of the wave of 5
    record = start_rollout(
        channel, fleet, bundle_of(tmp_path, tmp_path / "releases", keys, GOOD, 4096), keys.private, T0
    )
    stale = record
    record = advance(channel, fleet, record, keys.private, T0)
    assert record.waves[0].assigned == ["d0", "d1"]
    state, _ = channel.fetch_desired(public, seen_version=None, now=T0)
    assert state is not None and state.version == 1 and state.devices == {"d0": 1, "d1": 1}

    # Called again (the same step after a crash, or a stale copy of the record): nothing changes.
    assert advance(channel, fleet, record, keys.private, T0) == record
    assert advance(channel, fleet, stale, keys.private, T0) == record
    assert channel.fetch_desired(public, seen_version=None, now=T0)[0] == state

    report(channel, "d0", 1, "in_progress", T0)  # not final: still counts against the budget
    assert advance(channel, fleet, record, keys.private, T0).waves[0].assigned == ["d0", "d1"]
    report(channel, "d0", 1, "active", T0)
    record = advance(channel, fleet, record, keys.private, T0)
    assert record.waves[0].assigned == ["d0", "d1", "d2"]
    assert record.waves[0].counts.model_dump() == {
        "size": 5,
        "succeeded": 1,
        "failed": 0,
        "rejected": 0,
        "timed_out": 0,
        "pending": 4,
    }
    state, _ = channel.fetch_desired(public, seen_version=1, now=T0)
    assert state is not None and state.version == 2 and set(state.devices) == {"d0", "d1", "d2"}


def test_an_offline_device_does_not_hold_its_wave_past_the_timeout(
    tmp_path: Path, channel: Channel, keys: KeyPair, public: ec.EllipticCurvePublicKey
) -> None:
    enroll(channel, {"a1": {}, "a2": {}, "a3": {}, "b1": {}})
    fleet = fleet_of(
        waves=[{"name": "first", "limit": 3, "timeout_minutes": 10, "success_threshold": 60}],
        abort=[{"failure_type": "failed", "min_devices_reported": 1, "threshold_percentage": 50}],
    )
    record = start_rollout(
        channel, fleet, bundle_of(tmp_path, tmp_path / "releases", keys, GOOD, 4096), keys.private, T0
    )

    def a3_offline(device: str, release: int) -> Result | None:
        return None if device == "a3" else "active"

    record, seen, _ = drive(channel, fleet, record, keys, public, a3_offline, step=timedelta(minutes=4))
    first = record.waves[0]
    assert first.decision == "succeeded" and first.counts.timed_out == 1 and first.counts.succeeded == 2
    assert first.decided_at is not None and first.deadline is not None
    assert first.decided_at - first.deadline < timedelta(minutes=4)  # decided at the first poke past it
    assert "1 timed out" in first.reason
    assert record.state == "succeeded" and seen[-1].release == 1


# Aborting and rolling back


def test_an_abort_in_the_first_wave_rolls_every_device_back_on_s3(
    tmp_path: Path, keys: KeyPair, public: ec.EllipticCurvePublicKey, moto_endpoint: str, s3_bucket: str
) -> None:
    channel = Channel(open_store(f"s3://{s3_bucket}/slimline", moto_endpoint), FLEET)
    releases = tmp_path / "releases"
    enroll(channel, FLEET_DEVICES)
    fleet = fleet_of(
        waves=[{"name": "canary", "selector": {"ring": "canary"}}, {"name": "early", "limit": 2}]
    )
    good = bundle_of(tmp_path, releases, keys, GOOD, 4096)
    record, _, now = drive(
        channel, fleet, start_rollout(channel, fleet, good, keys.private, T0), keys, public, all_active
    )
    assert record.state == "succeeded"

    bad = bundle_of(tmp_path, releases, keys, BAD, 2048)

    def canary_c2_fails(device: str, release: int) -> Result:
        return "failed" if (device, release) == ("c2", 2) else "active"

    record = start_rollout(channel, fleet, bad, keys.private, now)
    assert record.previous_release == 1 and record.model_version == BAD
    record, seen, now = drive(channel, fleet, record, keys, public, canary_c2_fails, start=now)
    assert record.state == "aborted" and record.reason.startswith("wave canary: abort criterion all: 1 of 2")
    assert [w.decision for w in record.waves] == ["aborted", "waiting", "waiting"]
    assert all(s.release == 1 and set(s.devices) <= {"c1", "c2"} for s in seen)  # later waves never got 2
    assert channel.statuses()["c1"].active.release == 2  # type: ignore[union-attr]  # c1 switched

    record = fleet_rollback(channel, fleet, releases, keys.private, "canary accuracy collapsed", now)
    assert record.state == "rolled_back" and record.rollback is not None
    assert (record.rollback.release, record.rollback.restores) == (3, 1)
    assert record.reason == "release 2 rolled back to release 1 as release 3: canary accuracy collapsed"
    state, _ = channel.fetch_desired(public, seen_version=seen[-1].version, now=now)
    assert state is not None and state.release == 3 and state.devices == {}
    assert {d: state.release_for(d) for d in FLEET_DEVICES} == dict.fromkeys(FLEET_DEVICES, 3)
    assert channel.published_releases() == [1, 2, 3]

    restored = verify_bundle(
        releases / FLEET / "000003" / "bundle", keys.public, fleet=FLEET, current_release=2
    )
    original = Release.model_validate_json((good / RELEASE_JSON).read_text())
    assert restored.model_version == GOOD and restored.lineage == original.lineage
    engine_files = {k: v for k, v in original.files.items() if k.startswith("engines/")}
    assert engine_files.items() <= restored.files.items()  # the previous good engines, byte for byte

    devices_act(channel, state, now, all_active)
    assert {d: s.active.release for d, s in channel.statuses().items() if s.active} == dict.fromkeys(
        FLEET_DEVICES, 3
    )


def test_rollback_converges_when_run_again(
    tmp_path: Path, channel: Channel, keys: KeyPair, public: ec.EllipticCurvePublicKey
) -> None:
    releases = tmp_path / "releases"
    enroll(channel, {"c1": {"ring": "canary"}, "d1": {}})
    fleet = fleet_of()
    good = bundle_of(tmp_path, releases, keys, GOOD, 4096)
    record, _, now = drive(
        channel, fleet, start_rollout(channel, fleet, good, keys.private, T0), keys, public, all_active
    )
    bad = start_rollout(channel, fleet, bundle_of(tmp_path, releases, keys, BAD, 2048), keys.private, now)
    record, _, now = drive(channel, fleet, bad, keys, public, lambda d, r: "rejected", start=now)
    assert record.state == "aborted" and "rejected the release" in record.reason

    rolled = fleet_rollback(channel, fleet, releases, keys.private, "rejected", now)
    version = channel.fetch_desired(public, seen_version=None, now=now)[0].version  # type: ignore[union-attr]
    # A crash before the last write: the record still says aborted, the rollback release recorded.
    channel.store.put(
        channel.rollout_key(2), rolled.model_copy(update={"state": "aborted"}).model_dump_json().encode()
    )
    again = fleet_rollback(channel, fleet, releases, keys.private, "rejected", now + timedelta(minutes=1))
    assert again.state == "rolled_back" and again.rollback == rolled.rollback
    assert fleet_rollback(channel, fleet, releases, keys.private, "twice", now) == again  # done: unchanged
    assert release_numbers(releases, FLEET) == [1, 2, 3]  # no second bundle
    assert channel.fetch_desired(public, seen_version=None, now=now)[0].version == version  # type: ignore[union-attr]


def test_rollback_without_a_previous_release_stops_further_installs(
    tmp_path: Path, channel: Channel, keys: KeyPair, public: ec.EllipticCurvePublicKey
) -> None:
    enroll(channel, FLEET_DEVICES)
    fleet = fleet_of()
    with pytest.raises(ConfigError, match=f"fleet {FLEET} has no rollout to roll back"):
        fleet_rollback(channel, fleet, tmp_path / "releases", keys.private, "why", T0)
    record = start_rollout(
        channel, fleet, bundle_of(tmp_path, tmp_path / "releases", keys, BAD, 2048), keys.private, T0
    )
    record, _, now = drive(channel, fleet, record, keys, public, lambda d, r: "failed")
    assert record.state == "aborted"
    with pytest.raises(ConfigError, match="release 1 was aborted and not rolled back; roll it back first"):
        start_rollout(
            channel, fleet, bundle_of(tmp_path, tmp_path / "releases", keys, GOOD, 4096), keys.private, now
        )
    with pytest.raises(ConfigError, match=r"holds no release\.json: not a release bundle"):
        start_rollout(channel, fleet, tmp_path, keys.private, now)
    record = fleet_rollback(channel, fleet, tmp_path / "releases", keys.private, "canary failed", now)
    assert record.rollback is not None and record.rollback.release is None
    assert record.reason == "release 1 stopped: no release to roll back to: canary failed"
    state, _ = channel.fetch_desired(public, seen_version=None, now=now)
    assert state is not None and state.release is None and state.devices == {}
    assert advance(channel, fleet, record, keys.private, now) == record  # finished: nothing more


def test_start_refuses_what_devices_would_refuse_and_records_a_rejected_approval(
    tmp_path: Path, channel: Channel, keys: KeyPair
) -> None:
    enroll(channel, FLEET_DEVICES)
    releases = tmp_path / "releases"
    first, second, third = (bundle_of(tmp_path / str(n), releases, keys, BAD, n * 1024) for n in (1, 2, 3))
    gated = fleet_of(approval={"required": True})
    with pytest.raises(
        ConfigError, match=f"fleet {FLEET} requires approval before a rollout; none was given"
    ):
        start_rollout(channel, gated, first, keys.private, T0)
    rejected = ApprovalRecord(required=True, by="alice", at=T0, comment="not tonight")
    record = start_rollout(channel, gated, first, keys.private, T0, rejected)
    assert (record.state, record.reason) == ("aborted", "rejected by alice: not tonight")
    assert channel.published_releases() == []  # nothing reached the channel

    approved = ApprovalRecord(required=True, approved=True, by="bob", at=T0)
    record = start_rollout(channel, gated, third, keys.private, T0, approved)
    assert record.state == "pending" and record.approval.by == "bob"
    assert start_rollout(channel, gated, third, keys.private, T0, approved) == record  # started already
    with pytest.raises(
        ConfigError, match="the rollout of release 3 is pending; let it finish or roll it back"
    ):
        start_rollout(channel, gated, second, keys.private, T0, approved)
    advance(channel, gated, record, keys.private, T0)  # release 3 reaches the canary
    fleet_rollback(channel, gated, releases, keys.private, "stop", T0)  # nothing before it: stopped
    with pytest.raises(ConfigError, match="release 2 is not above release 3, which devices of fleet"):
        start_rollout(channel, gated, second, keys.private, T0, approved)


# The command line


@pytest.mark.parametrize("command", [["fleet"], ["fleet", "status"], ["fleet", "rollback"]])
def test_fleet_commands_have_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*command, "--help"])
    assert caught.value.code == 0 and capsys.readouterr().out.startswith("usage: slimline")


def test_cli_status_and_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    fleets = tmp_path / "fleets"
    fleets.mkdir()
    (fleets / f"{FLEET}.yaml").write_text(json.dumps(fleet_of().model_dump(mode="json", exclude_unset=True)))
    monkeypatch.setenv("SLIMLINE_FLEETS_DIR", str(fleets))
    keys = generate_key_pair(home / "keys" / "release.key")
    public = load_public_key(keys.public)
    channel = Channel(open_store((home / "channel").as_uri()), FLEET)
    enroll(channel, FLEET_DEVICES)
    fleet = fleet_of()
    releases = home / "releases"
    good = bundle_of(tmp_path, releases, keys, GOOD, 4096)
    _, _, now = drive(
        channel, fleet, start_rollout(channel, fleet, good, keys.private, T0), keys, public, all_active
    )
    bad = start_rollout(channel, fleet, bundle_of(tmp_path, releases, keys, BAD, 2048), keys.private, now)
    drive(channel, fleet, bad, keys, public, lambda d, r: "failed" if r == 2 else "active", start=now)

    args = ["--home", str(home), "fleet"]
    assert main([*args, "status", FLEET, "--html"]) == 0
    out = capsys.readouterr().out
    assert "fleet edge-eu: 6 devices" in out and "rollout of release 2 (minilm-sentiment/8)" in out
    assert "aborted" in out and "failed" in out
    page = (home / "reports" / f"fleet-{FLEET}.html").read_text()
    assert "<td>2: failed (agreement 0.400 &lt; 0.95)</td>" in page
    assert "<h1>Fleet edge-eu</h1>" in page and '<td class="fail">aborted</td>' in page
    assert '<td class="pass">succeeded</td>' not in page and "<td>c1</td>" in page

    assert main([*args, "rollback", FLEET, "--reason", "canary <failed>"]) == 0
    assert "rolled back to release 1 as release 3: canary <failed>" in capsys.readouterr().out
    out_html = tmp_path / "status.html"
    assert main([*args, "status", FLEET, "--json", "--html", str(out_html)]) == 0
    captured = capsys.readouterr()
    status = json.loads(captured.out)
    assert status["rollout"]["state"] == "rolled_back" and status["desired"]["release"] == 3
    assert {d["device"]: d["desired_release"] for d in status["devices"]} == dict.fromkeys(FLEET_DEVICES, 3)
    assert captured.err.strip() == f"page: {out_html}"
    assert "canary &lt;failed&gt;" in out_html.read_text()

    assert main([*args, "status", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimline: error: no fleet 'nosuch'") and err.count("\n") == 1

"""A release to a fleet end to end: eight `slimline agent` processes of two device kinds on a channel
in moto's S3 server, the real `fleet_release` DAG run by `airflow dags test`, its approval answered
through Airflow's own REST API (an api-server started for the test) as a named user; then a bad
release stopped in its first wave and rolled back fleet-wide."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from tasks.audit.log import open_log, read_records
from tasks.audit.verify import verify
from tasks.cli import main
from tasks.core.errors import OrchestrationError, RolloutAborted
from tasks.core.settings import Settings
from tasks.fleet.channel import Channel, DeviceStatus, open_channel
from tasks.fleet.device import DeviceState
from tasks.fleet.rollout import RolloutRecord, latest_rollout, load_rollout
from tasks.flow.approval import approval_answer
from tasks.flow.audit import audit_fleet, audit_version, check_devices
from tasks.flow.fleet_release import (
    Published,
    advance_rollout,
    begin_rollout,
    conclude_rollout,
    fleet_alias,
)
from tasks.flow.orchestration import api_server, dags_test
from tasks.registry.engines import engines_of
from tasks.registry.versions import get_version
from tasks.release.bundle import write_bundle
from tasks.release.keys import load_public_key
from tests.fleet_fixtures import (
    FLAG_TARGET,
    PLAIN_TARGETS,
    SIMULATED_CPUINFO,
    AgentProcess,
    FleetRelease,
    agent_argv,
    agent_env,
    scrambled_engine,
    wait_for,
)
from tests.tiny import lineage_edges

FLEET = "wave"
VNNI_CPUINFO = SIMULATED_CPUINFO.replace(" fma", " fma avx512f avx512_vnni")
KIND_TARGET = {"vnni": FLAG_TARGET, "plain": PLAIN_TARGETS[0]}
# Two device kinds, two canaries (one of each), an offline device in the last wave.
DEVICES = {f"d{i}": ("vnni" if i % 2 == 0 else "plain") for i in range(8)}
CANARIES = ("d0", "d1")
OFFLINE = "d7"
POLL_SECONDS = 0.5
JITTER = 0.2
FLEET_FILE = {
    "name": FLEET,
    "targets": [FLAG_TARGET, PLAIN_TARGETS[0]],
    "waves": [
        {"name": "canary", "selector": {"ring": "canary"}, "limit": 2},
        {"name": "early", "limit": "50%"},
    ],
    "success_threshold": 60,
    "abort": [{"failure_type": "failed", "min_devices_reported": 1, "threshold_percentage": 50}],
    "wave_timeout_minutes": 0.4,
    "approval": {"required": True, "timeout_minutes": 30},
    "health": {"min_agreement": 0.9, "max_accuracy_drop": 0.05, "max_p95_ms": 1000},
}
APPROVER, PASSWORD = "approver", "a-long-test-password"
# Rollback must reach every live device within one poll interval plus this margin: the download,
# verification and canary check of one tiny engine, on a busy 2-core machine.
ROLLBACK_MARGIN_SECONDS = 20.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def fleet_settings(
    fleet_release: FleetRelease, moto_endpoint: str, s3_bucket: str, tmp_path: Path
) -> Settings:
    """The shared release's registry and key, a fleet file of its own and a channel on moto."""
    fleets = tmp_path / "fleets"
    fleets.mkdir()
    (fleets / f"{FLEET}.yaml").write_text(yaml.safe_dump(FLEET_FILE))
    base = fleet_release.settings
    return Settings(
        home=base.home,
        targets_dir=base.targets_dir,
        fleets_dir=fleets,
        fleet_channel=f"s3://{s3_bucket}/channel",
        s3_endpoint_url=moto_endpoint,
        airflow_api_url=f"http://127.0.0.1:{_free_port()}",
        rollout_poke_seconds=1,
    )


def start_agent(fleet_release: FleetRelease, settings: Settings, tmp_path: Path, device: str) -> AgentProcess:
    root = tmp_path / "devices" / device / "root"
    argv = agent_argv(
        fleet_release,
        root,
        settings.channel_uri,
        device=device,
        fleet=FLEET,
        poll_seconds=POLL_SECONDS,
        cpuinfo=VNNI_CPUINFO if DEVICES[device] == "vnni" else SIMULATED_CPUINFO,
        labels=("ring=canary",) if device in CANARIES else ("ring=main",),
    )
    return AgentProcess(argv, root, agent_env(settings.s3_endpoint_url))


def statuses(channel: Channel) -> dict[str, DeviceStatus]:
    return channel.statuses(sorted(DEVICES))


def on_release(channel: Channel, devices: list[str], release: int) -> bool:
    active = {d: s.active.release for d, s in statuses(channel).items() if s.active is not None}
    return all(active.get(d) == release for d in devices)


def device_state(tmp_path: Path, device: str) -> DeviceState:
    return DeviceState.model_validate_json(
        (tmp_path / "devices" / device / "root" / "state.json").read_text()
    )


def approve_when_asked(url: str, stop: threading.Event, answered: list[int]) -> None:
    """`slimline release approve` as soon as the DAG asks: exit 2 (nothing waits) until then."""
    command = ["release", "approve", "--fleet", FLEET, "--user", APPROVER, "--api-url", url]
    while not stop.is_set():
        if main([*command, "--comment", "canary ring checked"]) == 0:
            answered.append(1)
            return
        time.sleep(1)


def wave_timeline(record: RolloutRecord) -> list[dict[str, Any]]:
    return [
        {
            "wave": w.name,
            "devices": w.devices,
            "decision": w.decision,
            "seconds": round((w.decided_at - w.started_at).total_seconds(), 1)
            if w.started_at and w.decided_at
            else None,
            "counts": w.counts.model_dump(),
        }
        for w in record.waves
    ]


def test_a_release_rolls_out_wave_by_wave_and_a_bad_one_is_rolled_back_fleet_wide(
    fleet_release: FleetRelease, fleet_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    settings = fleet_settings
    channel = open_channel(settings, FLEET)
    agents = {d: start_agent(fleet_release, settings, tmp_path, d) for d in DEVICES}
    try:
        wait_for(lambda: set(channel.enrollments()) == set(DEVICES), 60, "every device to enroll")
        agents[OFFLINE].stop()  # enrolled, then offline: it must not hold its wave past the timeout

        # 1. A good release, through the real DAG, approved through Airflow's REST API.
        stop, answered = threading.Event(), list[int]()
        users = {
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{APPROVER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
        }
        (tmp_path / "passwords.json").write_text(json.dumps({APPROVER: PASSWORD}))
        monkeypatch.setenv("SLIMLINE_AIRFLOW_PASSWORD", PASSWORD)
        with api_server(settings, users) as url:
            approver = threading.Thread(target=approve_when_asked, args=(url, stop, answered), daemon=True)
            approver.start()
            started = time.monotonic()
            try:
                run = dags_test(
                    settings, "fleet_release", {"fleet": FLEET, "model_version": fleet_release.model_version}
                )
            finally:
                stop.set()
        dag_seconds = time.monotonic() - started
        assert run.state == "success"
        assert answered == [1]

        record = latest_rollout(channel)
        assert record is not None and record.state == "succeeded", record
        good = record.release
        assert record.approval.approved and record.approval.by == APPROVER
        assert record.approval.comment == "canary ring checked"
        timeline = wave_timeline(record)
        print(json.dumps({"dag_run_seconds": round(dag_seconds, 1), "waves": timeline}))
        assert [w.name for w in record.waves] == ["canary", "early", "rest"]
        assert record.waves[0].devices == list(CANARIES)
        assert record.waves[1].devices == ["d2", "d3", "d4"]
        assert record.waves[2].devices == ["d5", "d6", OFFLINE]
        assert all(w.decision == "succeeded" for w in record.waves)
        for earlier, later in zip(record.waves, record.waves[1:], strict=False):
            assert earlier.decided_at is not None and later.started_at is not None
            assert later.started_at >= earlier.decided_at  # waves in order
        assert record.waves[2].counts.timed_out == 1  # the offline device, after the wave's timeout

        live = [d for d in DEVICES if d != OFFLINE]
        found = statuses(channel)
        for device in live:
            status = found[device]
            assert status.active is not None and status.active.release == good, status
            assert status.active.target == KIND_TARGET[DEVICES[device]]
            assert status.attempt is not None and status.attempt.health is not None
            assert status.attempt.health.passed
        name, version = fleet_release.model_version.split("/")
        client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        assert str(client.get_model_version_by_alias(name, fleet_alias(FLEET)).version) == version

        # Its OpenLineage events, read back from the file: the version and the engines of both
        # device kinds → the release in the channel → the fleet.
        bucket, channel_key = settings.channel_uri.removeprefix("s3://").split("/", 1)
        released = (f"s3://{bucket}", f"{channel_key}/fleets/{FLEET}/releases/{good:06d}")
        registered = engines_of(settings, get_version(settings, name, version))
        edges = lineage_edges(settings)
        assert {
            *(
                (
                    "fleet_release.publish_release",
                    ("slimline://engines", f"{t}/{registered[t].digest}"),
                    released,
                )
                for t in KIND_TARGET.values()
            ),
            (
                "fleet_release.publish_release",
                (f"mlflow://{settings.home}/mlflow.db", f"{name}/{version}"),
                released,
            ),
            ("fleet_release.conclude", released, (f"s3://{bucket}", f"{channel_key}/fleets/{FLEET}")),
        } <= edges, sorted(edges)

        # The offline device comes back and gets the fleet's current release, not a stale one.
        agents[OFFLINE] = start_agent(fleet_release, settings, tmp_path, OFFLINE)
        wait_for(lambda: on_release(channel, [OFFLINE], good), 60, "the returning device to install")
        code, answer = agents["d3"].predict(["what a great day", "this is awful"])
        assert code == 200 and answer["release"] == good and len(answer["labels"]) == 2

        # 2. A release whose engines sign and pass their build check but whose canary accuracy
        # collapses on the device: stopped in the first wave, then the whole fleet rolled back.
        bad_engines = {
            FLAG_TARGET: scrambled_engine(
                fleet_release.settings,
                fleet_release.model_version,
                fleet_release.engines[FLAG_TARGET],
                tmp_path / "bad" / FLAG_TARGET,
            ),
            PLAIN_TARGETS[0]: scrambled_engine(
                fleet_release.settings,
                fleet_release.model_version,
                fleet_release.engines[PLAIN_TARGETS[0]],
                tmp_path / "bad" / PLAIN_TARGETS[0],
            ),
        }
        bundle = write_bundle(
            settings.releases_dir,
            fleet=FLEET,
            model_version=fleet_release.model_version,
            lineage={"test": "bad"},
            engines=bad_engines,
            canary=fleet_release.engines[FLAG_TARGET] / "canary.json",
            private_key=settings.signing_key,
            expires_in=timedelta(days=1),
        )
        bad = int(bundle.parent.name)
        published = Published(
            fleet=FLEET,
            release=bad,
            model_version=fleet_release.model_version,
            bundle=bundle,
            engines=[],
            approval_required=True,
            approval_timeout_minutes=30,
            summary="bad",
        )
        approval = {
            "chosen_options": ["Approve"],
            "responded_by_user": {"id": APPROVER, "name": APPROVER},
            "responded_at": datetime.now(UTC).isoformat(),
            "params_input": {"comment": "looks fine"},
        }
        begin_rollout(settings, published, approval)
        wait_for(lambda: advance_rollout(settings, published), 90, "the bad release's rollout to end")
        with pytest.raises(RolloutAborted) as aborted:
            conclude_rollout(settings, published, approval)
        rollback_published = time.monotonic()
        record = load_rollout(channel, bad)
        assert record is not None and record.state == "rolled_back" and record.rollback is not None
        assert record.waves[0].decision == "aborted" and "failed" in record.waves[0].reason
        restored = record.rollback.release
        assert restored is not None and restored > bad and record.rollback.restores == good
        assert f"rolled back to release {restored} (restoring release {good})" in str(aborted.value)

        # Every live device, including the canaries that tried the bad release, returns to the good
        # engines as the new release within one poll interval plus the margin.
        wait_for(
            lambda: on_release(channel, list(DEVICES), restored),
            POLL_SECONDS * (1 + JITTER) + ROLLBACK_MARGIN_SECONDS,
            "every device to run the rollback release",
        )
        rollback_seconds = time.monotonic() - rollback_published
        print(json.dumps({"rollback_seconds": round(rollback_seconds, 2)}))
        for device in DEVICES:
            state = device_state(tmp_path, device)
            if device in CANARIES:
                assert state.concluded.get(bad) in ("failed", "rolled_back"), state
            else:  # devices of later waves never tried (nor downloaded) the bad release
                assert bad not in state.concluded, state
                assert not (tmp_path / "devices" / device / "root" / "releases" / f"{bad:06d}").exists()
            assert state.active is not None and state.active.release == restored
            assert state.active.engine_digest == statuses(channel)[device].active.engine_digest  # type: ignore[union-attr]

        # The audit log traces every device back to the nightly run and the approver, and every
        # engine a real agent reports active is one a bundle.signed record released to the fleet.
        trace = audit_fleet(settings, FLEET)
        assert sorted(d for g in trace.groups for d in g.devices) == sorted(DEVICES)
        for group in trace.groups:
            chain = group.lineage
            assert chain.release == restored and chain.released, chain
            assert chain.model_version == fleet_release.model_version and chain.variant_run
            assert chain.checkpoint_verified and chain.validation == "passed" and chain.gate_passed
            assert chain.approval == "given" and chain.approved_by == APPROVER
        assert verify(open_log(settings), load_public_key(fleet_release.keys.public)).records > 0
        records = list(read_records(open_log(settings)))
        assert check_devices(settings, records) == len(DEVICES)
        # The approval task recorded its asking before the approver answered.
        asked = [r for r in records if r.kind == "approval.asked"]
        given = [r for r in records if r.kind == "approval.given"]
        assert asked and given and asked[0].seq < given[0].seq
        traced = audit_version(settings, fleet_release.model_version)
        assert sorted(d for where in traced.deployed for d in where.devices) == sorted(DEVICES)
        assert {"variant.gated", "version.registered", "approval.asked", "device.activated"} <= {
            e.kind for e in traced.decisions
        }
    finally:
        for agent in agents.values():
            agent.stop()


def test_a_failed_step_fails_the_run_even_though_its_conclusion_always_runs(
    fleet_release: FleetRelease, fleet_settings: Settings
):
    with pytest.raises(OrchestrationError, match="ended failed") as failed:
        dags_test(fleet_settings, "fleet_release", {"fleet": FLEET, "model_version": "tiny-sentiment/999"})
    assert "no model version tiny-sentiment/999" in str(failed.value)


def test_an_approval_answer_records_who_when_and_why_and_a_timeout_as_no_one():
    given = approval_answer(
        {
            "chosen_options": ["Approve"],
            "responded_by_user": {"id": "7", "name": "approver"},
            "responded_at": "2026-12-01T10:00:00+00:00",
            "params_input": {"comment": "canary ring checked"},
        }
    )
    assert given.approved and given.by == "approver" and given.comment == "canary ring checked"
    assert given.at == datetime(2026, 12, 1, 10, tzinfo=UTC) and not given.timed_out
    # On timeout Airflow chooses the defaults (Reject) and names no user.
    timed_out = approval_answer({"chosen_options": ["Reject"], "responded_by_user": None, "params_input": {}})
    assert not timed_out.approved and timed_out.timed_out and timed_out.by is None

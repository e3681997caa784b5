"""The edge agent as real processes (and its state machine in-process) against a real channel: moto's
S3 server or a file:// store, real signed releases of real engines (tests/fleet_fixtures.py)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tasks.cli import main
from tasks.core.store import open_store
from tasks.engines.canary import read_canary
from tasks.fleet.agent import Agent, agent_config
from tasks.fleet.channel import Channel, DeviceStatus
from tasks.release.keys import generate_key_pair
from tests.fleet_fixtures import (
    FLEET,
    AgentProcess,
    FleetRelease,
    agent_argv,
    agent_env,
    cpuinfo_file,
    desire,
    http,
    publish,
    run_once,
    wait_for,
)


def status_of(channel: Channel, device: str = "dev-1") -> DeviceStatus | None:
    return channel.statuses([device]).get(device)


def attempt_of(channel: Channel, release: int) -> DeviceStatus | None:
    """The device's status once its attempt at `release` has ended."""
    status = status_of(channel)
    if status and status.attempt and status.attempt.release == release:
        return status if status.attempt.result != "in_progress" else None
    return None


def installed_releases(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "releases").iterdir())


def test_an_agent_on_s3_installs_serves_switches_without_a_gap_and_refuses_to_switch_to_a_bad_release(
    fleet_release: FleetRelease, moto_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{s3_bucket}/channel"
    channel = Channel(open_store(uri, moto_endpoint), FLEET)
    key = fleet_release.keys.private
    publish(channel, fleet_release, "good1")
    desire(channel, key, 1, 1)
    root = tmp_path / "dev-1"
    agent = AgentProcess(agent_argv(fleet_release, root, uri), root, agent_env(moto_endpoint))
    try:
        # Enrolled with the simulated CPU's flags; installed release 1 for the first target it can
        # run (the fleet prefers cpu-vnni, which it cannot), downloading only that engine.
        wait_for(lambda: agent.get("/healthz")[0] == 200, 60, "release 1 to serve")
        version = agent.version()
        assert version["release"] == 1 and version["target"] == "cpu-a" and version["previous"] is None
        assert version["model_version"] == fleet_release.model_version and len(version["engine_digest"]) == 64
        enrollment = channel.enrollments()["dev-1"]
        assert (
            "avx512_vnni" not in enrollment.capabilities.cpu_flags
            and "avx2" in enrollment.capabilities.cpu_flags
        )
        assert enrollment.labels == {"site": "lab"}
        assert installed_releases(root) == ["000001"]
        assert sorted(p.name for p in (root / "releases/000001/bundle/engines").iterdir()) == ["cpu-a"]
        status = wait_for(lambda: attempt_of(channel, 1), 10, "the report of release 1")
        assert status.active is not None and status.active.release == 1
        assert status.attempt is not None and status.attempt.result == "active"
        assert status.attempt.health is not None and status.attempt.health.passed
        assert status.attempt.health.agreement >= 0.95 and status.attempt.health.errors == 0

        # Predictions: the engine's tokenizer, the release's labels, the canary's own answers.
        canary = read_canary(fleet_release.engines["cpu-a"] / "canary.json")
        code, answer = agent.predict(canary.texts[:20])
        assert code == 200 and answer["release"] == 1 and len(answer["logits"]) == 20
        expected = [canary.label_names[row.index(max(row))] for row in canary.reference_logits[:20]]
        assert sum(a == b for a, b in zip(answer["labels"], expected, strict=True)) >= 18
        for body, message in [
            (b"not json", "body is not JSON"),
            (b'{"texts": []}', "with 1 to 256 strings"),
            (b'{"texts": [1]}', "every text must be a string"),
        ]:
            code, error = http("POST", agent.url("/predict"), body=body)
            assert code == 400 and message in error["error"] and "\n" not in error["error"]
        assert agent.get("/nowhere")[0] == 404

        # Release 2 while a client keeps asking: every request answered, by release 1 then 2.
        failures: list[Any] = []
        served: set[int] = set()
        done = threading.Event()

        def client() -> None:
            while not done.is_set():
                try:
                    code, answer = agent.predict(["i love this phone", "the worst flight"])
                except OSError as exc:
                    failures.append(exc)
                    continue
                if code != 200:
                    failures.append((code, answer))
                else:
                    served.add(answer["release"])

        thread = threading.Thread(target=client)
        thread.start()
        try:
            publish(channel, fleet_release, "good2")
            desire(channel, key, 2, 2)
            wait_for(lambda: agent.version()["release"] == 2, 60, "the switch to release 2")
            wait_for(lambda: 2 in served, 10, "a prediction from release 2")
        finally:
            done.set()
            thread.join()
        assert failures == [] and served == {1, 2}
        assert agent.version()["previous"] == 1
        assert installed_releases(root) == ["000001", "000002"]

        # The bad release signs, but its canary agreement collapses on the device: never switched to.
        bad = publish(channel, fleet_release, "bad")
        desire(channel, key, 3, bad)
        status = wait_for(lambda: attempt_of(channel, bad), 60, "the report of the bad release")
        assert status.attempt is not None and status.attempt.result == "failed"
        assert status.attempt.phase == "check" and status.attempt.target == "cpu-a"
        health = status.attempt.health
        assert health is not None and not health.passed and health.agreement < 0.5
        assert "agreement" in status.attempt.reason and "< 0.9500" in status.attempt.reason
        assert status.active is not None and status.active.release == 2
        assert agent.version()["release"] == 2 and agent.predict(["ok"])[1]["release"] == 2
        assert installed_releases(root) == ["000001", "000002"]
        state = json.loads((root / "state.json").read_text())
        assert state["active"]["release"] == 2 and state["high_water"] == 3
    finally:
        assert agent.stop() == 0  # SIGTERM ends it cleanly


def test_refusals_are_reported_with_one_line_and_nothing_unverified_is_loaded(
    fleet_release: FleetRelease, moto_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    """The agent's own state machine in-process (as the benchmark runs it) against moto's S3."""
    uri = f"s3://{s3_bucket}/channel"
    store = open_store(uri, moto_endpoint)
    channel = Channel(store, FLEET)
    key = fleet_release.keys.private
    config = agent_config(
        fleet=FLEET,
        device_id="dev-1",
        root=tmp_path / "dev-1",
        channel_uri=uri,
        s3_endpoint_url=moto_endpoint,
        trusted_key=fleet_release.keys.public,
        cpuinfo=cpuinfo_file(tmp_path),
    )
    agent = Agent(config, channel=channel)
    agent.start(datetime.now(UTC))
    assert agent.poll_once(datetime.now(UTC)).outcome == "no_desired"
    publish(channel, fleet_release, "good1")
    desire(channel, key, 1, 1)
    assert agent.poll_once(datetime.now(UTC)).outcome == "active"
    assert agent.poll_once(datetime.now(UTC)).outcome == "unchanged"

    def reported() -> DeviceStatus:
        status = status_of(channel)
        assert status is not None
        return status

    def refused(version: int, number: int) -> str:
        desire(channel, key, version, number)
        poll = agent.poll_once(datetime.now(UTC))
        assert poll.outcome == "rejected" and poll.release == number, poll
        status = status_of(channel)
        assert status is not None and status.attempt is not None and status.attempt.result == "rejected"
        assert status.attempt.reason == poll.reason and "\n" not in poll.reason
        serving, _ = agent.slot.current()
        assert serving is not None and serving.active.release == 1
        assert installed_releases(config.root) == ["000001"] and not (config.root / "staging").exists()
        # Refused once, never fetched again.
        assert agent.poll_once(datetime.now(UTC)).outcome == "unchanged"
        return poll.reason

    expired = publish(channel, fleet_release, "expired")
    assert f"release {expired} expired at" in refused(2, expired)

    only_vnni = publish(channel, fleet_release, "vnni_only")
    assert refused(3, only_vnni) == (
        f"release {only_vnni} of fleet {FLEET} refused: no engine this device can run: "
        "cpu-vnni (CPU lacks avx512_vnni)"
    )
    attempt = reported().attempt
    assert attempt is not None and attempt.phase == "compatibility"

    tampered = publish(channel, fleet_release, "good3")
    engine = "engines/cpu-a/model.ort"
    original = fleet_release.releases["good3"] / "bundle" / engine
    edited = tmp_path / "edited.ort"
    edited.write_bytes(original.read_bytes()[:-16] + bytes(16))
    store.upload(edited, channel.release_file_key(tampered, engine))
    assert f"file {engine} does not match its sha256 in release.json" in refused(4, tampered)

    # An older signed release put where the desired state points: a replay.
    replay = publish(channel, fleet_release, "good2", number=7)
    assert "release 2 is not newer than the device's current release 6 (replay refused)" in refused(5, replay)

    # Desired states that are forged, older than one seen, or expired: refused, reported, ignored.
    other = generate_key_pair(tmp_path / "other" / "release.key")
    for why, publish_it in [
        ("not signed by the trusted key", lambda: desire(channel, other.private, 9, 1)),
        ("version 4 is older than version 5 already seen", lambda: desire(channel, key, 4, 1)),
        (
            "expired at",
            lambda: desire(channel, key, 6, 1, issued_at=datetime.now(UTC) - timedelta(days=2)),
        ),
    ]:
        publish_it()
        poll = agent.poll_once(datetime.now(UTC))
        assert poll.outcome == "desired_refused" and why in poll.reason and "\n" not in poll.reason
        status = status_of(channel)
        assert status is not None and why in status.channel_problem
        assert status.active is not None and status.active.release == 1
    # A good desired state again: the problem clears.
    desire(channel, key, 7, 1)
    assert agent.poll_once(datetime.now(UTC)).outcome == "unchanged"
    assert reported().channel_problem == ""


def test_an_engine_failing_requests_after_the_switch_is_rolled_back(
    fleet_release: FleetRelease, tmp_path: Path
) -> None:
    (tmp_path / "channel").mkdir()
    channel = Channel(open_store((tmp_path / "channel").as_uri()), FLEET)
    key = fleet_release.keys.private
    config = agent_config(
        fleet=FLEET,
        device_id="dev-1",
        root=tmp_path / "dev-1",
        channel_uri=(tmp_path / "channel").as_uri(),
        trusted_key=fleet_release.keys.public,
        cpuinfo=cpuinfo_file(tmp_path),
        max_serving_errors=3,
    )
    agent = Agent(config, channel=channel)
    agent.start(datetime.now(UTC))
    for version, name in enumerate(["good1", "good2"], start=1):
        desire(channel, key, version, publish(channel, fleet_release, name))
        assert agent.poll_once(datetime.now(UTC)).outcome == "active"
    for _ in range(3):  # as the server counts a failed prediction
        agent.slot.record_error()
    assert agent.poll_once(datetime.now(UTC)).outcome == "unchanged"  # at the limit, not above it
    agent.slot.record_error()
    poll = agent.poll_once(datetime.now(UTC))
    assert poll.outcome == "rolled_back" and poll.release == 2
    assert poll.reason == "4 failed predictions since the switch (limit 3)"
    serving, previous = agent.slot.current()
    assert serving is not None and serving.active.release == 1 and previous is None
    status = status_of(channel)
    assert status is not None and status.attempt is not None and status.attempt.result == "rolled_back"
    assert status.active is not None and status.active.release == 1 and status.previous_release is None
    assert installed_releases(config.root) == ["000001"]
    # Release 2 stays refused here; the fleet's way back to it is a new, higher release.
    assert agent.poll_once(datetime.now(UTC)).outcome == "unchanged"


def test_killed_mid_download_and_mid_switch_the_agent_comes_back_consistent(
    fleet_release: FleetRelease, tmp_path: Path
) -> None:
    uri = (tmp_path / "channel").as_uri()
    channel = Channel(open_store(uri), FLEET)
    key = fleet_release.keys.private
    (tmp_path / "channel").mkdir()
    publish(channel, fleet_release, "good1")
    desire(channel, key, 1, 1)
    root = tmp_path / "dev-1"
    argv, env = agent_argv(fleet_release, root, uri), agent_env()
    done = run_once(argv, env)
    assert done.returncode == 0 and done.stdout.startswith("active 1"), done.stderr

    def state() -> dict[str, Any]:
        return json.loads((root / "state.json").read_text())

    publish(channel, fleet_release, "good2")
    desire(channel, key, 2, 2)
    # Killed with release 2's engine downloaded into staging, before its files were verified (the
    # first two checks are of the candidates' engine.json).
    killed = run_once(argv, env, killpoint="tasks.fleet.install:verify_files@3")
    assert killed.returncode == -9, killed.stderr
    assert state()["active"]["release"] == 1 and state()["high_water"] == 1
    assert (root / "staging").exists() and installed_releases(root) == ["000001"]
    # Killed mid-switch: state.json names release 2 (the switch's rename), nothing after it ran.
    killed = run_once(argv, env, killpoint="tasks.fleet.device:DeviceDir.prune@2")
    assert killed.returncode == -9, killed.stderr
    assert state()["active"]["release"] == 2 and state()["previous"]["release"] == 1
    assert not list((root / "staging").iterdir())  # release 2 was renamed out of it before the switch

    agent = AgentProcess(argv, root, env)
    try:
        wait_for(lambda: agent.get("/healthz")[0] == 200, 60, "the restarted agent to serve")
        assert agent.version()["release"] == 2 and agent.version()["previous"] == 1
        assert agent.predict(["great coffee"])[0] == 200
        assert installed_releases(root) == ["000001", "000002"] and not (root / "staging").exists()
    finally:
        assert agent.stop() == 0
    # A release edited on disk is not loaded again: back to the previous one, verified.
    (root / "releases/000002/bundle/engines/cpu-a/model.ort").write_bytes(b"not an engine")
    agent = AgentProcess(argv, root, env)
    try:
        wait_for(lambda: agent.get("/healthz")[0] == 200, 60, "the agent to serve the previous release")
        assert agent.version()["release"] == 1 and agent.version()["previous"] is None
        status = wait_for(lambda: attempt_of(channel, 2), 10, "the report of the rollback")
        assert status.attempt.result == "rolled_back" and "model.ort does not match" in status.attempt.reason
    finally:
        assert agent.stop() == 0
    assert installed_releases(root) == ["000001"]


def test_offline_the_agent_keeps_serving_and_reports_when_back(
    fleet_release: FleetRelease, tmp_path: Path
) -> None:
    store_root = tmp_path / "channel"
    store_root.mkdir()
    uri = store_root.as_uri()
    channel = Channel(open_store(uri), FLEET)
    key = fleet_release.keys.private
    publish(channel, fleet_release, "good1")
    desire(channel, key, 1, 1)
    root = tmp_path / "dev-1"
    agent = AgentProcess(agent_argv(fleet_release, root, uri), root, agent_env())
    try:
        wait_for(lambda: agent.get("/healthz")[0] == 200, 60, "release 1 to serve")
        wait_for(lambda: attempt_of(channel, 1), 10, "the report of release 1")
        away = tmp_path / "away"
        store_root.rename(away)  # the channel is unreachable
        try:
            log = root.parent / "dev-1.log"
            wait_for(lambda: "channel unreachable" in log.read_text(), 10, "a failed poll")
            assert agent.get("/healthz")[0] == 200 and agent.predict(["my day was fine"])[1]["release"] == 1
        finally:
            away.rename(store_root)
        # Back: the first report says how many polls found the channel unreachable.
        status = wait_for(
            lambda: (s := status_of(channel)) and s.offline_polls > 0 and s, 10, "the report once back"
        )
        assert status.active is not None and status.active.release == 1
        # And it follows the fleet again.
        publish(channel, fleet_release, "good2")
        desire(channel, key, 2, 2)
        wait_for(lambda: agent.version()["release"] == 2, 60, "release 2")
    finally:
        assert agent.stop() == 0


def test_agent_command_errors_are_one_line(
    fleet_release: FleetRelease, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = agent_argv(fleet_release, tmp_path / "dev", (tmp_path / "channel").as_uri(), extra=["--once"])
    missing = tmp_path / "missing.pub"
    code = main([*argv, "--trusted-key", str(missing)])
    error = capsys.readouterr().err.strip()
    assert (
        code == 2
        and error == f"slimline: error: public key {missing}: cannot be read (No such file or directory)"
    )
    code = main([*argv[:-1], "--jitter", "1.5", "--once"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "jitter = 1.5" in error and "\n" not in error
    with pytest.raises(SystemExit):
        main([*argv, "--label", "nolabel"])
    assert "'nolabel' is not a label; expected KEY=VALUE" in capsys.readouterr().err

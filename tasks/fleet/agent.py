"""The edge agent: one per device. It enrolls with its capabilities, polls the fleet channel with
jitter, and when its desired release changes it installs it (tasks.fleet.install: verified, only
its own target's engine), checks it on the canary set (tasks.fleet.health), and switches: state.json
renamed into place, the served engine swapped, the previous release kept for rollback. It reports
every change (and a heartbeat) as its DeviceStatus, and rolls itself back when the new engine
fails while serving.

`Agent` keeps all of one device's state in the object, so a benchmark can run thousands of them in
one process (`poll_once(now)`); `run_agent` is the long-running process behind `slimline agent`.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import random
import shutil
import signal
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from tasks.core.config import SLUG, Strict, format_errors
from tasks.core.errors import BundleRefused, ConfigError, EngineError, ReleaseIncompatible, StoreError
from tasks.core.files import write_atomic
from tasks.core.locks import run_lock
from tasks.core.store import open_store
from tasks.engines.canary import read_canary
from tasks.engines.capabilities import Capabilities, read_capabilities
from tasks.fleet.channel import (
    ActiveRelease,
    Attempt,
    Channel,
    DesiredState,
    DeviceStatus,
    Enrollment,
)
from tasks.fleet.device import DeviceDir, DeviceState
from tasks.fleet.health import check_health
from tasks.fleet.install import install_release
from tasks.fleet.serve import PredictServer, Serving, Slot, load_serving
from tasks.release.keys import load_public_key
from tasks.release.metadata import check_fresh

log = logging.getLogger(__name__)

AGENT_JSON = "agent.json"

Outcome = Literal[
    "offline",  # the channel is unreachable; serving goes on
    "no_desired",  # nothing published for the fleet yet
    "desired_refused",  # the desired state is forged, older or expired: ignored
    "unchanged",  # nothing to do: the desired release is active, or ended here already
    "active",  # installed, healthy, switched to
    "failed",  # installed but its health check failed: never switched to
    "rejected",  # refused: verification failed, or no engine this device can run
    "rolled_back",  # the active release failed while serving: back to the previous one
    "retry",  # the channel failed mid-download: tried again at the next poll
]


class AgentConfig(Strict):
    fleet: str = Field(pattern=SLUG, description="The fleet this device belongs to.")
    device_id: str = Field(pattern=SLUG, description="This device's name in the fleet.")
    root: Path = Field(description="Folder for the device's state and verified releases.")
    channel_uri: str = Field(description="The fleet channel's store (file:///... or s3://bucket/prefix).")
    s3_endpoint_url: str | None = Field(None, description="Endpoint of an S3-compatible channel store.")
    trusted_key: Path = Field(description="Release public key (PEM) every release and desired state needs.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels wave selectors match.")
    poll_seconds: float = Field(30.0, gt=0, description="Mean seconds between polls.")
    jitter: float = Field(0.2, ge=0, lt=1, description="Each wait is poll_seconds × uniform(1-j, 1+j).")
    cpuinfo: Path = Field(Path("/proc/cpuinfo"), description="Where CPU flags are read from.")
    heartbeat_polls: int = Field(10, ge=1, description="Report at least once every this many polls.")
    max_serving_errors: int = Field(
        3, ge=1, description="Failed predictions after a switch beyond which the device rolls back."
    )


def agent_config(**fields: Any) -> AgentConfig:
    """An AgentConfig; ConfigError naming each bad field."""
    try:
        return AgentConfig(**fields)
    except ValidationError as exc:
        raise ConfigError(f"agent: {format_errors(exc)}") from None


@dataclass(frozen=True)
class Poll:
    """What one poll did."""

    outcome: Outcome
    release: int | None = None
    reason: str = ""


def _agent_version() -> str:
    try:
        return importlib.metadata.version("slimline")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Agent:
    """One device's state machine. `start(now)` once, then `poll_once(now)` per poll."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        channel: Channel | None = None,
        capabilities: Capabilities | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.channel = channel or Channel(
            open_store(config.channel_uri, config.s3_endpoint_url), config.fleet
        )
        self.device = DeviceDir(config.root)
        self.trusted = load_public_key(config.trusted_key)
        self.capabilities = capabilities or read_capabilities(config.cpuinfo)
        self.rng = rng or random.Random()
        self.slot = Slot()
        self.state = DeviceState()
        self.desired: DesiredState | None = None
        self.etag: str | None = None
        self.enrolled = False
        self.polls = 0
        self.offline_polls = 0
        self.channel_problem = ""
        self._reported: dict[str, Any] | None = None
        self._reported_at_poll = 0

    # start-up
    def start(self, now: datetime) -> None:
        """Load the state, serve the active release again once it verifies (else the previous one,
        else nothing), drop what a crash left half-done, enroll and report."""
        self.state = self.device.load()
        self._restore(now)
        try:
            self._enroll(now)
            self._report(now)
        except StoreError as exc:  # offline at start: serve anyway, enroll at the first good poll
            log.warning("channel unreachable at start: %s", exc)
            self.offline_polls += 1

    def _restore(self, now: datetime) -> None:
        for which in ("active", "previous"):
            installed: ActiveRelease | None = getattr(self.state, which)
            if installed is None:
                continue
            try:
                found = self.device.reverify(installed, self.config.trusted_key, self.config.fleet)
                serving = load_serving(found, installed.activated_at)
            except (BundleRefused, EngineError) as exc:
                log.error("installed release %s no longer verifies: %s", installed.release, exc)
                self.state.conclude(installed.release, "rolled_back")
                self.state.attempt = Attempt(
                    release=installed.release,
                    result="rolled_back",
                    phase="serve",
                    reason=f"installed release failed its check at start: {exc}",
                    target=installed.target,
                    at=now,
                )
                setattr(self.state, which, None)
                continue
            if which == "previous":
                self.state.active, self.state.previous = self.state.previous, None
            self.slot.swap(serving, self.state.previous.release if self.state.previous else None)
            break
        else:
            self.slot.swap(None, None)
        self.device.save(self.state)
        self.device.prune(self.state)

    def _enroll(self, now: datetime) -> None:
        self.channel.put_enrollment(
            Enrollment(
                device=self.config.device_id,
                fleet=self.config.fleet,
                labels=self.config.labels,
                capabilities=self.capabilities,
                agent_version=_agent_version(),
                enrolled_at=now,
            )
        )
        self.enrolled = True

    # polling
    def next_wait(self) -> float:
        """Seconds until the next poll: jittered, so a fleet does not poll in step."""
        j = self.config.jitter
        return self.config.poll_seconds * self.rng.uniform(1 - j, 1 + j)

    def poll_once(self, now: datetime) -> Poll:
        self.polls += 1
        try:
            if not self.enrolled:
                self._enroll(now)
            return self._poll(now)
        except StoreError as exc:
            self.offline_polls += 1
            log.warning("channel unreachable: %s", exc)
            return Poll("offline", reason=str(exc))

    def _poll(self, now: datetime) -> Poll:
        rolled = self._roll_back_if_failing(now)
        if rolled is not None:
            return rolled
        try:
            self._refresh_desired(now)
        except BundleRefused as exc:
            self.channel_problem = str(exc)
            self._report(now)
            return Poll("desired_refused", reason=str(exc))
        self.channel_problem = ""
        if self.desired is None:
            self._report(now)
            return Poll("no_desired")
        number = self.desired.release_for(self.config.device_id)
        active = self.state.active.release if self.state.active else None
        if number is None or number == active or number in self.state.concluded:
            self._report(now)
            return Poll("unchanged", number)
        return self._update(number, self.desired, now)

    def _refresh_desired(self, now: datetime) -> None:
        """The desired state, fetched only when its tag changed; a cached one is still judged by
        its expiry (a frozen channel answering "unchanged" forever is noticed)."""
        state, etag = self.channel.fetch_desired(
            self.trusted, seen_version=self.state.seen_version, now=now, etag=self.etag
        )
        if state is not None:
            self.desired, self.etag = state, etag
            self.state.seen_version = state.version
        elif etag is None:
            self.desired, self.etag = None, None
        elif self.desired is not None:
            check_fresh(
                f"desired state of fleet {self.config.fleet}",
                version=self.desired.version,
                seen_version=self.state.seen_version,
                expires_at=self.desired.expires_at,
                now=now,
            )

    def _update(self, number: int, desired: DesiredState, now: datetime) -> Poll:
        attempt = Attempt(release=number, result="in_progress", phase="download", at=now)
        self.state.attempt = attempt
        self._report(now)
        try:
            installed = install_release(
                self.channel,
                number,
                self.device,
                self.config.trusted_key,
                preference=desired.targets,
                caps=self.capabilities,
                high_water=self.state.high_water,
                now=now,
            )
        except ReleaseIncompatible as exc:
            return self._conclude(number, "rejected", "compatibility", str(exc), now)
        except BundleRefused as exc:
            return self._conclude(number, "rejected", "verify", str(exc), now)
        except StoreError as exc:
            # Not concluded: the same release is fetched again at the next poll.
            self.state.attempt = attempt.model_copy(update={"reason": f"download interrupted: {exc}"})
            return Poll("retry", number, str(exc))
        try:
            serving = load_serving(installed, now)
            canary = read_canary(installed.folder / installed.release.canary.file)
        except EngineError as exc:
            shutil.rmtree(installed.folder.parent, ignore_errors=True)
            return self._conclude(number, "failed", "check", str(exc), now, installed.target)
        report = check_health(serving.predictor, serving.info, canary, desired.health)
        if not report.passed:
            shutil.rmtree(installed.folder.parent, ignore_errors=True)
            return self._conclude(number, "failed", "check", report.reason, now, installed.target, report)
        self.state.attempt = Attempt(
            release=number,
            result="active",
            phase="serve",
            reason=report.reason,
            target=installed.target,
            health=report,
            at=now,
        )
        self._switch(serving, now)
        return Poll("active", number, report.reason)

    def _switch(self, serving: Serving, now: datetime) -> None:
        """Make `serving` the active release: the state's rename is the switch; then the served
        engine, then the release before the previous one is deleted."""
        self.state.previous, self.state.active = self.state.active, serving.active
        self.state.conclude(serving.active.release, "active")
        self.device.save(self.state)
        self.slot.swap(serving, self.state.previous.release if self.state.previous else None)
        self.device.prune(self.state)
        log.info("switched to release %s (%s)", serving.active.release, serving.active.target)
        self._report(now)

    def _conclude(
        self,
        number: int,
        result: Literal["failed", "rejected"],
        phase: str,
        reason: str,
        now: datetime,
        target: str | None = None,
        health: Any = None,
    ) -> Poll:
        log.warning("release %s %s at %s: %s", number, result, phase, reason)
        self.state.conclude(number, result)
        self.state.attempt = Attempt(
            release=number, result=result, phase=phase, reason=reason, target=target, health=health, at=now
        )
        self.device.save(self.state)
        self.device.prune(self.state)
        self._report(now)
        return Poll(result, number, reason)

    def _roll_back_if_failing(self, now: datetime) -> Poll | None:
        """Back to the previous release when the active one keeps failing requests."""
        errors = self.slot.errors
        bad, previous = self.state.active, self.state.previous
        if errors <= self.config.max_serving_errors or bad is None or previous is None:
            return None
        try:
            found = self.device.reverify(previous, self.config.trusted_key, self.config.fleet)
            serving = load_serving(found, now)
        except (BundleRefused, EngineError) as exc:
            log.error("cannot roll back to release %s: %s", previous.release, exc)
            return None
        reason = f"{errors} failed predictions since the switch (limit {self.config.max_serving_errors})"
        self.state.conclude(bad.release, "rolled_back")
        self.state.attempt = Attempt(
            release=bad.release, result="rolled_back", phase="serve", reason=reason, target=bad.target, at=now
        )
        self.state.active, self.state.previous = serving.active, None
        self.device.save(self.state)
        self.slot.swap(serving, None)
        self.device.prune(self.state)
        self._report(now)
        return Poll("rolled_back", bad.release, reason)

    # reports
    def _report(self, now: datetime) -> None:
        """Write status.json when anything reported changed, or as a heartbeat."""
        fields: dict[str, Any] = {
            "active": self.state.active,
            "previous_release": self.state.previous.release if self.state.previous else None,
            "attempt": self.state.attempt,
            "desired_version": self.desired.version if self.desired else None,
            "serving_errors": self.slot.errors,
            "channel_problem": self.channel_problem,
            "offline_polls": self.offline_polls,
        }
        heartbeat = self.polls - self._reported_at_poll >= self.config.heartbeat_polls
        if fields == self._reported and not heartbeat:
            return
        self.state.seq += 1
        self.device.save(self.state)  # the sequence survives a restart, so reports keep growing
        self.channel.put_status(
            DeviceStatus(
                device=self.config.device_id,
                fleet=self.config.fleet,
                seq=self.state.seq,
                reported_at=now,
                **fields,
            )
        )
        self._reported, self._reported_at_poll, self.offline_polls = fields, self.polls, 0

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set."""
        while not stop.is_set():
            try:
                poll = self.poll_once(datetime.now(UTC))
                log.info("poll: %s %s %s", poll.outcome, poll.release or "", poll.reason)
            except (ConfigError, EngineError, BundleRefused) as exc:  # one bad poll does not end the agent
                log.error("poll failed: %s", exc)
            stop.wait(self.next_wait())


def run_agent(config: AgentConfig, *, host: str = "127.0.0.1", port: int = 0, once: bool = False) -> int:
    """The agent as a process: lock the root, start, then poll once (`once`) or serve on
    `host`:`port` and poll until SIGTERM. `<root>/agent.json` ({pid, port}) says where it listens."""
    config.root.mkdir(parents=True, exist_ok=True)
    with run_lock(config.root / "agent.lock", f"the agent of device {config.device_id}"):
        agent = Agent(config)
        agent.start(datetime.now(UTC))
        if once:
            poll = agent.poll_once(datetime.now(UTC))
            print(f"{poll.outcome} {poll.release or ''} {poll.reason}".strip())
            return 0
        server = PredictServer(agent.slot, port, host)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        server.start()
        write_atomic(config.root / AGENT_JSON, json.dumps({"pid": os.getpid(), "port": server.port}))
        try:
            agent.run(stop)
        finally:
            server.stop()
            (config.root / AGENT_JSON).unlink(missing_ok=True)
    return 0

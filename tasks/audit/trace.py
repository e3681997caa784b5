"""The lineage of what devices run, joined from the audit log: for each device, its active release
→ engine digest → model version → variant run → checkpoint → dataset and its validation → recipe
→ code commit → gate verdict → approver; a device's history of activations and rollbacks; a model
version's deployments and every decision about it. The caller reads only what the devices report;
everything else comes from the hash-chained records (a bundle.signed record carries its release's
lineage tags), so a fact shown here is one `audit verify` vouches for."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel, JsonValue

from tasks.audit.records import CHECKPOINT_PREFIX, Record, device_subject, version_subject


class DeviceRunning(BaseModel):
    """What a device reports it serves (`release` None: it serves nothing yet)."""

    device: str
    release: int | None = None
    target: str | None = None
    engine_digest: str | None = None
    activated_at: datetime | None = None
    reported_at: datetime | None = None


class Lineage(BaseModel):
    """One chain from an engine back to its inputs and the people who let it through; None where
    neither the release nor the log knows."""

    release: int | None
    target: str | None
    engine_digest: str | None
    released: bool  # the engine digest is one a bundle.signed record of this fleet and release names
    model_version: str | None = None
    variant: str | None = None
    variant_run: str | None = None
    checkpoint_uri: str | None = None
    checkpoint_digest: str | None = None
    checkpoint_verified: bool = False
    dataset_digest: str | None = None
    validation: str | None = None
    recipe_digest: str | None = None
    code_commit: str | None = None
    gate_passed: bool | None = None
    gate_reasons: list[str] = []
    approval: str | None = None  # given, refused, or not required
    approved_by: str | None = None
    approved_at: str | None = None
    approval_comment: str = ""

    def lines(self) -> list[str]:
        """The chain for a reader, one link a line; digests shortened to 12 characters."""
        if self.release is None:
            return ["serves nothing yet"]
        engine = f"engine {_short(self.engine_digest)} ({'released' if self.released else 'NEVER RELEASED'})"
        gate = "unknown" if self.gate_passed is None else ("passed" if self.gate_passed else "failed")
        approval = self.approval or "unknown"
        if self.approved_by or self.approved_at:
            approval += f" by {self.approved_by or 'no one'} at {self.approved_at or 'unknown'}"
        return [
            f"release {self.release} · target {self.target} · {engine}",
            f"model version {self.model_version or '?'} · variant {self.variant or '?'} · "
            f"run {self.variant_run or '?'}",
            f"checkpoint {self.checkpoint_uri or '?'} · digest {_short(self.checkpoint_digest)} "
            f"({'verified' if self.checkpoint_verified else 'no verification record'})",
            f"dataset {_short(self.dataset_digest)} · validation {self.validation or 'no record'}",
            f"recipe {_short(self.recipe_digest)} · code commit {self.code_commit or '?'}",
            f"gate {gate}: {'; '.join(self.gate_reasons) or 'no record'}",
            f"approval {approval}" + (f": {self.approval_comment}" if self.approval_comment else ""),
        ]


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "?"


class DeviceGroup(BaseModel):
    devices: list[str]
    lineage: Lineage


class FleetTrace(BaseModel):
    fleet: str
    devices: int
    groups: list[DeviceGroup]

    def text(self) -> str:
        lines = [f"fleet {self.fleet}: {self.devices} devices, {len(self.groups)} distinct lineages"]
        for group in self.groups:
            lines.append(f"  {', '.join(group.devices)} ({len(group.devices)})")
            lines += [f"    {line}" for line in group.lineage.lines()]
        return "\n".join(lines)


class Event(BaseModel):
    """One record about a device, a version or its inputs, summed up in a line."""

    seq: int
    at: datetime
    kind: str
    subject: str
    actor: str
    summary: str

    def line(self) -> str:
        when = f"{self.at:%Y-%m-%d %H:%M:%S}"
        return f"#{self.seq} {when} {self.kind} {self.subject} ({self.actor}): {self.summary}"


class DeviceTrace(BaseModel):
    fleet: str
    device: str
    running: DeviceRunning
    lineage: Lineage
    history: list[Event]  # the device's activations and rollbacks, and its fleet's rollbacks

    def text(self) -> str:
        now = self.running
        since = f" since {now.activated_at:%Y-%m-%d %H:%M:%S %Z}" if now.activated_at else ""
        reported = f"; last report {now.reported_at:%Y-%m-%d %H:%M:%S %Z}" if now.reported_at else ""
        lines = [f"device {self.fleet}/{self.device}: serves release {now.release}{since}{reported}"]
        lines += [f"  {line}" for line in self.lineage.lines()]
        lines.append(f"history ({len(self.history)} records):")
        lines += [f"  {event.line()}" for event in self.history] or ["  none"]
        return "\n".join(lines)


class Deployment(BaseModel):
    """Devices of one fleet serving one release (and target) of the version."""

    fleet: str
    release: int
    target: str | None
    devices: list[str]


class VersionTrace(BaseModel):
    model_version: str
    deployed: list[Deployment]
    decisions: list[Event]  # about the version, its variant run, its inputs and its releases

    def text(self) -> str:
        lines = [f"model version {self.model_version}"]
        lines += [
            f"  deployed: fleet {d.fleet} release {d.release} target {d.target}: {len(d.devices)} "
            f"devices ({', '.join(d.devices)})"
            for d in self.deployed
        ] or ["  deployed nowhere"]
        lines.append(f"decisions ({len(self.decisions)} records):")
        lines += [f"  {event.line()}" for event in self.decisions] or ["  none"]
        return "\n".join(lines)


class _Index:
    """The records a trace joins on, the latest of each key winning."""

    def __init__(self, fleet: str, records: Iterable[Record]) -> None:
        self.bundles: dict[int, Record] = {}
        self.approvals: dict[int, Record] = {}
        self.restores: dict[int, int] = {}  # a rollback release → the release it carries
        self.gates: dict[str, Record] = {}
        self.checkpoints: set[tuple[str, str]] = set()
        self.validations: dict[str, Record] = {}
        for record in records:
            data = record.data
            if record.kind in ("bundle.signed", "approval.given", "approval.refused", "fleet.rolled_back"):
                release = data.get("release")
                if data.get("fleet") != fleet or not isinstance(release, int):
                    continue
                if record.kind == "bundle.signed":
                    self.bundles[release] = record
                elif record.kind == "fleet.rolled_back":
                    restores = data.get("restores")
                    if isinstance(restores, int):
                        self.restores[release] = restores
                else:
                    self.approvals[release] = record
            elif record.kind == "variant.gated":
                self.gates[str(data.get("run_id"))] = record
            elif record.kind == "checkpoint.verified":
                self.checkpoints.add(
                    (record.subject.removeprefix(CHECKPOINT_PREFIX), str(data.get("digest")))
                )
            elif record.kind == "data.validated":
                self.validations[str(data.get("dataset_digest"))] = record

    def tags(self, release: int) -> dict[str, str]:
        """The lineage tags release `release` was signed with (its bundle.signed record)."""
        bundle = self.bundles.get(release)
        tags = bundle.data.get("lineage") if bundle else None
        return {k: str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


def _text(value: JsonValue | None) -> str | None:
    return None if value is None else str(value)


def _approval(index: _Index, release: int) -> dict[str, object]:
    # A rollback release carries an earlier release and its approval; it needs none of its own.
    while release not in index.approvals and release in index.restores:
        release = index.restores[release]
    record = index.approvals.get(release)
    if record is None:
        return {"approval": "not required"}
    return {
        "approval": "given" if record.kind == "approval.given" else "refused",
        "approved_by": _text(record.data.get("by")),
        "approved_at": _text(record.data.get("at")),
        "approval_comment": str(record.data.get("comment") or ""),
    }


def _lineage(index: _Index, running: DeviceRunning) -> Lineage:
    release = running.release
    if release is None:
        return Lineage(release=None, target=None, engine_digest=None, released=False)
    bundle = index.bundles.get(release)
    engines = bundle.data.get("engines") if bundle else None
    signed = engines.get(running.target or "") if isinstance(engines, dict) else None
    tags = index.tags(release)
    run_id = tags.get("run_id")
    gate = index.gates.get(run_id) if run_id else None
    validation = index.validations.get(tags.get("dataset_digest", ""))
    uri, digest = tags.get("checkpoint_uri"), tags.get("checkpoint_digest")
    facts: dict[str, object] = {
        "release": release,
        "target": running.target,
        "engine_digest": running.engine_digest,
        "released": signed is not None and signed == running.engine_digest,
        "model_version": _text(bundle.data.get("model_version")) if bundle else None,
        "variant": tags.get("variant"),
        "variant_run": run_id,
        "checkpoint_uri": uri,
        "checkpoint_digest": digest,
        "checkpoint_verified": (uri, digest) in index.checkpoints,
        "dataset_digest": tags.get("dataset_digest"),
        "recipe_digest": tags.get("recipe_digest"),
        "code_commit": tags.get("code_commit"),
    }
    if validation is not None:
        facts["validation"] = _text(validation.data.get("result"))
    if gate is not None:
        reasons = gate.data.get("reasons")
        facts |= {
            "gate_passed": gate.data.get("passed") is True,
            "gate_reasons": [str(r) for r in reasons] if isinstance(reasons, list) else [],
            "recipe_digest": _text(gate.data.get("recipe_digest")) or tags.get("recipe_digest"),
            "code_commit": _text(gate.data.get("code_commit")) or tags.get("code_commit"),
        }
    return Lineage.model_validate(facts | _approval(index, release))


def trace_fleet(fleet: str, running: list[DeviceRunning], records: Iterable[Record]) -> FleetTrace:
    """Every device's lineage, devices sharing one lineage grouped (in device order)."""
    index = _Index(fleet, records)
    groups: dict[str, DeviceGroup] = {}
    for device in sorted(running, key=lambda r: r.device):
        lineage = _lineage(index, device)
        key = lineage.model_dump_json()
        groups.setdefault(key, DeviceGroup(devices=[], lineage=lineage)).devices.append(device.device)
    return FleetTrace(fleet=fleet, devices=len(running), groups=list(groups.values()))


# What each kind's one-line summary shows, from its data; digests are cut to 12 characters.
_SUMMARIES: dict[str, str] = {
    "checkpoint.verified": "digest {digest}",
    "checkpoint.refused": "{reason} (exit {exit_code})",
    "data.validated": "dataset {dataset_digest}: {result}",
    "variant.gated": "{variant} {stage} passed: {passed}; {reasons}",
    "version.registered": "from run {run_id}, artifact {artifact_key}",
    "alias.moved": "alias {alias} → version {version}",
    "engine.built": "{model_version} for {target}: engine {digest}, {status}",
    "bundle.signed": "release {release} of {model_version} for fleet {fleet}: engines {engines}",
    "approval.asked": "release {release} of {model_version} to fleet {fleet}, within {timeout_minutes} min",
    "approval.given": "release {release} to fleet {fleet} by {by} at {at}: {comment}",
    "approval.refused": "release {release} to fleet {fleet} by {by} at {at}, timeout: {timed_out}; {comment}",
    "wave.started": "release {release} wave {wave}",
    "wave.promoted": "release {release} wave {wave}: {reason}",
    "wave.aborted": "release {release} wave {wave}: {reason}",
    "device.activated": "release {release} ({model_version}), engine {engine_digest} for {target} at {at}",
    "device.rolled_back": "release {release} ({model_version}) at {at}: {reason}; serves {active_release}",
    "fleet.rolled_back": "release {aborted_release} aborted; release {release} restores {restores}: {reason}",
}


class _Shown(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


def _shown(value: JsonValue) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    if isinstance(value, list):
        return "; ".join(_shown(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_shown(v)}" for k, v in value.items())
    return str(value)


def event(record: Record) -> Event:
    """The record summed up in one line."""
    data = _Shown({k: _shown(v) for k, v in record.data.items()})
    return Event(
        seq=record.seq,
        at=record.at,
        kind=record.kind,
        subject=record.subject,
        actor=record.actor,
        summary=_SUMMARIES[record.kind].format_map(data),
    )


def trace_device(fleet: str, running: DeviceRunning, records: list[Record]) -> DeviceTrace:
    """A device's lineage and its history: its own activations and rollbacks, and the rollbacks of
    its whole fleet (which move it to the restored release without a rollout of their own)."""
    subject = device_subject(fleet, running.device)
    history = [
        event(r)
        for r in records
        if r.subject == subject or (r.kind == "fleet.rolled_back" and r.data.get("fleet") == fleet)
    ]
    return DeviceTrace(
        fleet=fleet,
        device=running.device,
        running=running,
        lineage=_lineage(_Index(fleet, records), running),
        history=history,
    )


def _about_version(model_version: str, records: list[Record]) -> list[Record]:
    """Every record about the version: its registration and aliases, its engines, bundles,
    approvals, waves and devices (by its releases), its variant run's gates and the verification of
    the checkpoint and the validation of the data that run used."""
    releases: set[tuple[object, object]] = set()
    runs: set[object] = set()
    for r in records:
        if r.kind == "bundle.signed" and r.data.get("model_version") == model_version:
            releases.add((r.data.get("fleet"), r.data.get("release")))
        if r.kind == "version.registered" and r.subject == version_subject(model_version):
            runs.add(r.data.get("run_id"))
    gates = [r for r in records if r.kind == "variant.gated" and r.data.get("run_id") in runs]
    checkpoints = {g.data.get("checkpoint_digest") for g in gates}
    datasets = {g.data.get("dataset_digest") for g in gates}

    def about(r: Record) -> bool:
        data = r.data
        fleet = data.get("fleet")
        return (
            r.subject == version_subject(model_version)
            or data.get("model_version") == model_version
            or (r.kind.startswith(("wave.", "approval.")) and (fleet, data.get("release")) in releases)
            or (
                r.kind == "fleet.rolled_back"
                and any((fleet, data.get(k)) in releases for k in ("aborted_release", "release", "restores"))
            )
            or (r.kind == "variant.gated" and data.get("run_id") in runs)
            or (r.kind == "checkpoint.verified" and data.get("digest") in checkpoints)
            or (r.kind == "data.validated" and data.get("dataset_digest") in datasets)
        )

    return [r for r in records if about(r)]


def trace_version(
    model_version: str, fleets: dict[str, list[DeviceRunning]], records: list[Record]
) -> VersionTrace:
    """Where the version is deployed (devices whose active release was signed with it, by fleet,
    release and target) and every decision about it, in log order."""
    # Which version each fleet's release was signed with, from one pass over the log.
    signed = {
        (r.data.get("fleet"), r.data.get("release")): r.data.get("model_version")
        for r in records
        if r.kind == "bundle.signed"
    }
    deployed = []
    for fleet, running in sorted(fleets.items()):
        groups: dict[tuple[int, str | None], list[str]] = {}
        for device in sorted(running, key=lambda r: r.device):
            if device.release is not None and signed.get((fleet, device.release)) == model_version:
                groups.setdefault((device.release, device.target), []).append(device.device)
        deployed += [
            Deployment(fleet=fleet, release=release, target=target, devices=devices)
            for (release, target), devices in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1] or ""))
        ]
    decisions = [event(r) for r in _about_version(model_version, records)]
    return VersionTrace(model_version=model_version, deployed=deployed, decisions=decisions)


def unreleased(fleet: str, running: list[DeviceRunning], records: Iterable[Record]) -> list[DeviceRunning]:
    """Devices whose active engine digest no bundle.signed record of `fleet` names, in any release
    (a rollback release carries an earlier release's engines, signed again)."""
    released = {
        digest
        for record in records
        if record.kind == "bundle.signed"
        and record.data.get("fleet") == fleet
        and isinstance(engines := record.data.get("engines"), dict)
        for digest in engines.values()
    }
    return [r for r in running if r.engine_digest is not None and r.engine_digest not in released]

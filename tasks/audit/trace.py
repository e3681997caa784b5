"""The lineage of what devices run, joined from the audit log: for each device, its active release
→ engine digest → model version → variant run → checkpoint → dataset and its validation → recipe
→ code commit → gate verdict → approver. The caller reads the devices' reports and each release's
signed lineage tags (release.json); everything else comes from the hash-chained records, so a fact
shown here is one `audit verify` vouches for."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, JsonValue

from tasks.audit.records import Record


class DeviceRunning(BaseModel):
    """What a device reports it serves (`release` None: it serves nothing yet)."""

    device: str
    release: int | None = None
    target: str | None = None
    engine_digest: str | None = None


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
                if data.get("fleet") != fleet:
                    continue
                release = data.get("release")
                if not isinstance(release, int):
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
                self.checkpoints.add((record.subject.removeprefix("checkpoint:"), str(data.get("digest"))))
            elif record.kind == "data.validated":
                self.validations[str(data.get("dataset_digest"))] = record


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


def _lineage(index: _Index, running: DeviceRunning, tags: dict[str, str]) -> Lineage:
    release = running.release
    if release is None:
        return Lineage(release=None, target=None, engine_digest=None, released=False)
    bundle = index.bundles.get(release)
    engines = bundle.data.get("engines") if bundle else None
    signed = engines.get(running.target or "") if isinstance(engines, dict) else None
    run_id = tags.get("run_id")
    gate = index.gates.get(run_id) if run_id else None
    validation = index.validations.get(tags.get("dataset_digest", ""))
    uri, digest = tags.get("checkpoint_uri"), tags.get("checkpoint_digest")
    facts: dict[str, object] = {
        "release": release,
        "target": running.target,
        "engine_digest": running.engine_digest,
        "released": signed is not None and signed == running.engine_digest,
        "model_version": _text(bundle.data.get("model_version")) if bundle else tags.get("model_version"),
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


def trace_fleet(
    fleet: str,
    running: list[DeviceRunning],
    release_tags: dict[int, dict[str, str]],
    records: Iterable[Record],
) -> FleetTrace:
    """Every device's lineage, devices sharing one lineage grouped (in device order).
    `release_tags`: each release's lineage tags from its signed release.json."""
    index = _Index(fleet, records)
    groups: dict[str, DeviceGroup] = {}
    for device in sorted(running, key=lambda r: r.device):
        tags = release_tags.get(device.release, {}) if device.release is not None else {}
        lineage = _lineage(index, device, tags)
        key = lineage.model_dump_json()
        groups.setdefault(key, DeviceGroup(devices=[], lineage=lineage)).devices.append(device.device)
    return FleetTrace(fleet=fleet, devices=len(running), groups=list(groups.values()))


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

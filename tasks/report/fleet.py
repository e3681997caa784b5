"""A fleet's status as text: the rows and lines shared by the terminal tables (here) and the HTML
page (fleet_html), so both say the same."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tasks.fleet.rollout import RolloutRecord
from tasks.fleet.status import FleetStatus
from tasks.report.terminal import console

DEVICE_HEADERS = [
    "device",
    "labels",
    "wave",
    "desired",
    "target",
    "active",
    "model version",
    "last attempt",
    "agreement",
    "accuracy",
    "p95 ms",
    "errors",
    "last report",
]
WAVE_HEADERS = [
    "wave",
    "devices",
    "assigned",
    "succeeded",
    "failed",
    "rejected",
    "timed out",
    "pending",
    "threshold",
    "started",
    "deadline",
    "decision",
    "reason",
]
NUMERIC = {"devices", "assigned", "succeeded", "failed", "rejected", "timed out", "pending", "threshold"}
NUMERIC |= {"agreement", "accuracy", "p95 ms", "errors"}
DECISION_STYLES = {"succeeded": "green", "aborted": "red"}


def _release(number: int | None) -> str:
    return "—" if number is None else str(number)


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _clock(moment: datetime | None) -> str:
    """A wave's times, short: the date is in the rollout's line."""
    return "—" if moment is None else f"{moment:%m-%d %H:%M}"


def age_text(seconds: float | None) -> str:
    """A report's age, coarsely: 42s, 5m, 3h, 2d."""
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


def device_rows(status: FleetStatus) -> list[list[str]]:
    rows = []
    for d in status.devices:
        attempt = "—"
        if d.attempt_release is not None:
            # A success's reason repeats the health columns; why a release failed or was refused does not.
            shown = d.attempt_reason and d.attempt_result != "active"
            attempt = f"{d.attempt_release}: {d.attempt_result}" + (f" ({d.attempt_reason})" if shown else "")
        h = d.health
        rows.append(
            [
                d.device,
                " ".join(f"{k}={v}" for k, v in sorted(d.labels.items())),
                d.wave or "—",
                _release(d.desired_release),
                d.target or "—",
                _release(d.active_release),
                d.model_version or "—",
                attempt,
                "—" if h is None else f"{h.agreement:.3f}",
                "—" if h is None else f"{h.accuracy:.3f}",
                "—" if h is None else f"{h.p95_ms:.1f}",
                "—" if h is None else str(h.errors),
                age_text(d.report_age_s),
            ]
        )
    return rows


def wave_rows(record: RolloutRecord) -> list[list[str]]:
    rows = []
    for w in record.waves:
        c = w.counts
        counts = [c.succeeded, c.failed, c.rejected, c.timed_out, c.pending]
        rows.append(
            [
                w.name,
                str(len(w.devices)),
                str(len(w.assigned)),
                *(str(n) if w.started_at else "—" for n in counts),
                f"{w.success_threshold:g}%",
                _clock(w.started_at),
                _clock(w.deadline),
                w.decision,
                w.reason,
            ]
        )
    return rows


def desired_text(status: FleetStatus) -> str:
    d = status.desired
    if d is None:
        return (
            f"desired state: none believed ({status.desired_problem})"
            if status.desired_problem
            else ("desired state: none published")
        )
    counted = Counter(d.devices.values())
    wave = "".join(f"; release {r} for {n} named devices" for r, n in sorted(counted.items()))
    line = (
        f"desired state v{d.version}: release {_release(d.release)} for the fleet{wave}; "
        f"issued {_when(d.issued_at)}, expires {_when(d.expires_at)}"
    )
    problem = f" — {status.desired_problem}" if status.desired_problem else ""
    return line + (f" ({d.note})" if d.note else "") + problem


def approval_text(record: RolloutRecord) -> str:
    a = record.approval
    if not a.required:
        return "approval: not required"
    if a.timed_out:
        return "approval: timed out (rejected)"
    answer = "approved" if a.approved else "rejected"
    comment = f": {a.comment}" if a.comment else ""
    return f"approval: {answer} by {a.by or 'unknown'} at {_when(a.at)}{comment}"


def rollout_text(record: RolloutRecord | None) -> str:
    if record is None:
        return "rollout: none yet"
    line = (
        f"rollout of release {record.release} ({record.model_version}) after release "
        f"{_release(record.previous_release)}: {record.state}"
    )
    return line + (f" — {record.reason}" if record.reason else "")


def fleet_tables(status: FleetStatus) -> list[Table]:
    devices = Table(title=f"fleet {status.fleet}: {len(status.devices)} devices", title_justify="left")
    for column in DEVICE_HEADERS:
        devices.add_column(column, justify="right" if column in NUMERIC else "left")
    # Text cells: what devices report is shown as written, never read as rich markup.
    for cells in device_rows(status):
        devices.add_row(*(Text(c) for c in cells))
    tables = [devices]
    if status.rollout is not None:
        waves = Table(
            title=Text(rollout_text(status.rollout)),
            title_justify="left",
            caption=Text(approval_text(status.rollout)),
        )
        for column in WAVE_HEADERS:
            waves.add_column(column, justify="right" if column in NUMERIC else "left")
        decision = WAVE_HEADERS.index("decision")
        for cells in wave_rows(status.rollout):
            waves.add_row(
                *(
                    Text(c, style=DECISION_STYLES.get(c, "") if i == decision else "")
                    for i, c in enumerate(cells)
                )
            )
        tables.append(waves)
    return tables


def print_fleet_status(status: FleetStatus, out: Console | None = None) -> None:
    out = out or console()
    out.print(desired_text(status), markup=False, highlight=False)
    for table in fleet_tables(status):
        out.print(table)
    if status.rollout is None:
        out.print(rollout_text(None))

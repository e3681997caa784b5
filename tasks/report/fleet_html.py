"""The fleet status page: one self-contained HTML file, in the release report's style, with the
desired state, the latest rollout wave by wave (its decision and why), and every device with the
release it is told to run, the one it runs, its last attempt and its health."""

from __future__ import annotations

from pathlib import Path

from tasks.core.files import write_atomic
from tasks.fleet.rollout import RolloutRecord
from tasks.fleet.status import FleetStatus
from tasks.report.fleet import (
    DEVICE_HEADERS,
    NUMERIC,
    WAVE_HEADERS,
    approval_text,
    desired_text,
    device_rows,
    rollout_text,
    wave_rows,
)
from tasks.report.page import document, escape, table, td

# A decision's and a rollout's look, as the release report colours pass and FAIL.
_DECISION_CSS = {"succeeded": "pass", "aborted": "fail"}
_STATE_CSS = _DECISION_CSS | {"rolled_back": "fail"}


def _cells(headers: list[str], rows: list[list[str]]) -> list[list[str]]:
    return [
        [
            td(
                text,
                "num" if header in NUMERIC else _DECISION_CSS.get(text, "") if header == "decision" else "",
            )
            for header, text in zip(headers, row, strict=True)
        ]
        for row in rows
    ]


def _rollout(record: RolloutRecord | None) -> str:
    heading = "<h2>Latest rollout</h2>\n"
    if record is None:
        return heading + "<p>No release has been rolled out to this fleet.</p>"
    parts = [
        heading + f'<p class="{_STATE_CSS.get(record.state, "")}">{escape(rollout_text(record))}</p>',
        f"<p>{escape(approval_text(record))}</p>",
        table(WAVE_HEADERS, _cells(WAVE_HEADERS, wave_rows(record))),
    ]
    if record.rollback is not None:
        r = record.rollback
        restored = (
            "no release to roll back to"
            if r.release is None
            else f"release {r.release} restores release {r.restores}"
        )
        parts.append(
            f"<p>Rollback at {escape(r.at.isoformat())}: {escape(restored)}; reason: {escape(r.reason)}</p>"
        )
    return "\n".join(parts)


def render_fleet_html(status: FleetStatus) -> str:
    body = "\n".join(
        [
            f"<h1>Fleet {escape(status.fleet)}</h1>",
            f'<p class="meta">as of {status.at:%Y-%m-%d %H:%M:%S} UTC; '
            f"{len(status.devices)} devices enrolled</p>",
            f'<p class="meta">{escape(desired_text(status))}</p>',
            _rollout(status.rollout),
            "<h2>Devices</h2>\n" + table(DEVICE_HEADERS, _cells(DEVICE_HEADERS, device_rows(status))),
        ]
    )
    return document(f"slimline fleet {status.fleet}", body)


def fleet_report_path(home: Path, fleet: str) -> Path:
    return Path(home) / "reports" / f"fleet-{fleet}.html"


def write_fleet_report(status: FleetStatus, path: Path) -> Path:
    """Write the page to `path` whole (a reader sees the old page or the new one) and return it."""
    write_atomic(Path(path), render_fleet_html(status))
    return Path(path)

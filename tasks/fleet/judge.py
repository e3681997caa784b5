"""Judging a wave from what its devices reported: pure functions, no channel.

A device's outcome for release N follows the agent's contract: succeeded when its last attempt is
N, `active`, and N is what it serves; failed when the attempt for N ended `failed` or
`rolled_back`; rejected when it refused N (incompatible, or the release failed verification);
otherwise it has no final result yet (pending), which past the wave's deadline counts as timed out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from tasks.fleet.channel import DeviceStatus
from tasks.fleet.spec import AbortCriterion

Outcome = Literal["succeeded", "failed", "rejected", "pending"]
Decision = Literal["in_progress", "succeeded", "aborted"]

# What each abort criterion's failure_type counts, and how a reason names it.
_FAILURES: dict[str, tuple[tuple[str, ...], str]] = {
    "failed": (("failed",), "failed"),
    "rejected": (("rejected",), "rejected the release"),
    "timed_out": (("timed_out",), "timed out"),
    "all": (("failed", "rejected", "timed_out"), "failed, rejected the release or timed out"),
}


def outcome_of(status: DeviceStatus | None, release: int) -> Outcome:
    """What became of release `release` on a device, from its latest report (None: never reported)."""
    attempt = status.attempt if status is not None else None
    if status is None or attempt is None or attempt.release != release:
        return "pending"
    if attempt.result == "active":
        # The report must also say it serves N: an `active` attempt beside another active release
        # is a device mid-report, not a success.
        return "succeeded" if status.active is not None and status.active.release == release else "pending"
    if attempt.result in ("failed", "rolled_back"):
        return "failed"
    if attempt.result == "rejected":
        return "rejected"
    return "pending"


class WaveCounts(BaseModel):
    """A wave's devices by outcome; `pending` ones have no final result (not yet assigned, not yet
    reported, or still installing), `timed_out` ones had none by the deadline."""

    size: int = 0
    succeeded: int = 0
    failed: int = 0
    rejected: int = 0
    timed_out: int = 0
    pending: int = 0

    @property
    def reported(self) -> int:
        """Devices with a final outcome, timed-out ones included (as Greengrass counts executed things)."""
        return self.succeeded + self.failed + self.rejected + self.timed_out


class Judgement(BaseModel):
    decision: Decision
    reason: str
    counts: WaveCounts


def _pct(value: float) -> str:
    return f"{round(value, 1):g}%"


def _tripped(criterion: AbortCriterion, counts: WaveCounts) -> str | None:
    """The reason `criterion` aborts the wave, or None while it does not."""
    kinds, words = _FAILURES[criterion.failure_type]
    reported = counts.reported
    bad = sum(getattr(counts, kind) for kind in kinds)
    if reported < criterion.min_devices_reported or 100 * bad < criterion.threshold_percentage * reported:
        return None
    return (
        f"abort criterion {criterion.failure_type}: {bad} of {reported} reported devices {words} "
        f"({_pct(100 * bad / reported)} ≥ {_pct(criterion.threshold_percentage)}, "
        f"at least {criterion.min_devices_reported} reported)"
    )


def judge_wave(
    outcomes: Sequence[Outcome],
    *,
    success_threshold: float,
    abort: Sequence[AbortCriterion],
    deadline_passed: bool,
) -> Judgement:
    """Decide a wave from its devices' outcomes (one per device of the wave, assigned or not).

    Aborted as soon as an abort criterion is met among the devices that reported, or once the
    success threshold can no longer be reached (waiting would only install the release on more
    devices); succeeded once no device is pending (past the deadline pending ones count as timed
    out) and successes reach `success_threshold` percent of the wave; otherwise in progress. A
    wave with no devices passes.
    """
    pending = sum(o == "pending" for o in outcomes)
    counts = WaveCounts(
        size=len(outcomes),
        succeeded=sum(o == "succeeded" for o in outcomes),
        failed=sum(o == "failed" for o in outcomes),
        rejected=sum(o == "rejected" for o in outcomes),
        timed_out=pending if deadline_passed else 0,
        pending=0 if deadline_passed else pending,
    )
    if not outcomes:
        return Judgement(decision="succeeded", reason="no device in this wave; passes", counts=counts)
    for criterion in abort:
        reason = _tripped(criterion, counts)
        if reason is not None:
            return Judgement(decision="aborted", reason=reason, counts=counts)
    size, succeeded = counts.size, counts.succeeded
    share = f"{succeeded} of {size} succeeded ({_pct(100 * succeeded / size)}"
    wanted = f"{_pct(success_threshold)} needed"
    if counts.pending == 0:
        late = f", {counts.timed_out} timed out" if counts.timed_out else ""
        if 100 * succeeded >= success_threshold * size:
            return Judgement(decision="succeeded", reason=f"{share} ≥ {wanted}){late}", counts=counts)
        return Judgement(decision="aborted", reason=f"{share} < {wanted}){late}", counts=counts)
    if 100 * (succeeded + counts.pending) < success_threshold * size:
        best = _pct(100 * (succeeded + counts.pending) / size)
        return Judgement(
            decision="aborted",
            reason=f"{share}); at most {best} can, {wanted}",
            counts=counts,
        )
    return Judgement(decision="in_progress", reason=f"{share}), {counts.pending} pending", counts=counts)

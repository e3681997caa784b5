"""Which passing variant becomes the `candidate`: a pure rule over the side-by-side timing."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from tasks.gate.timing import ModelTiming

RULE = (
    "The candidate is the passing variant with the lowest median p50 over the side-by-side rounds, "
    "except that any passing variant as fast as that one in at least one round (same round, same "
    "conditions) ties with it, and ties go to the higher accuracy, then the smaller size, then the "
    "lower median p50."
)


class Contender(BaseModel):
    """A passing variant: its accuracy, size and side-by-side timing."""

    name: str
    accuracy: float
    size_bytes: int
    timing: ModelTiming


class Choice(BaseModel):
    name: str
    reason: str
    tied: list[str]  # the variants that tied with the fastest, the choice among them


def rounds_as_fast(fastest: ModelTiming, other: ModelTiming) -> list[int]:
    """The rounds (from 1) in which `other`'s p50 was at or below `fastest`'s."""
    pairs = zip(fastest.p50_ms_per_round, other.p50_ms_per_round, strict=True)
    return [i for i, (best, p50) in enumerate(pairs, start=1) if p50 <= best]


def _preference(c: Contender) -> tuple[float, int, float, str]:
    return (-c.accuracy, c.size_bytes, c.timing.p50_ms, c.name)


def _decided_by(chosen: Contender, runner_up: Contender) -> str:
    if chosen.accuracy != runner_up.accuracy:
        return f"higher accuracy ({chosen.accuracy:.4f} vs {runner_up.accuracy:.4f} for {runner_up.name})"
    if chosen.size_bytes != runner_up.size_bytes:
        return (
            f"equal accuracy and smaller size ({chosen.size_bytes / 1e6:.1f} vs "
            f"{runner_up.size_bytes / 1e6:.1f} MB for {runner_up.name})"
        )
    return f"equal accuracy and size, lower median p50 than {runner_up.name}"


def choose_candidate(contenders: Sequence[Contender]) -> Choice | None:
    """Apply RULE; None when nothing passed."""
    if not contenders:
        return None
    fastest = min(contenders, key=lambda c: (c.timing.p50_ms, c.name))
    tied = [c for c in contenders if c is fastest or rounds_as_fast(fastest.timing, c.timing)]
    ranked = sorted(tied, key=_preference)
    chosen = ranked[0]
    rounds = len(fastest.timing.p50_ms_per_round)
    lead = f"{fastest.name} fastest by median p50 over {rounds} rounds ({fastest.timing.p50_ms:.2f} ms)"
    if len(ranked) == 1:
        reason = f"{lead}; no other passing variant was as fast in any round"
    else:
        others = ", ".join(
            f"{c.name} (as fast in round {', '.join(map(str, rounds_as_fast(fastest.timing, c.timing)))})"
            for c in tied
            if c is not fastest
        )
        reason = f"{lead}; tied with {others}; {chosen.name} chosen for {_decided_by(chosen, ranked[1])}"
    return Choice(name=chosen.name, reason=reason, tied=[c.name for c in ranked])


def registration_order(contenders: Sequence[Contender], choice: Choice | None) -> list[str]:
    """Slowest first by median p50 and the candidate last, so the newest version is the candidate."""
    others = sorted(
        (c for c in contenders if choice is None or c.name != choice.name),
        key=lambda c: (-c.timing.p50_ms, c.name),
    )
    return [c.name for c in others] + ([choice.name] if choice else [])

"""The search loop: Optuna proposes points, the caller measures each, Optuna keeps the Pareto front.

Optuna's TPE sampler (multi-objective, with constraints) does the proposing: accuracy is always
maximised, then the recipe's objectives (the p50 speed-up over the reference, the size). The
gates are constraints: a point that fails one is infeasible, never on the front, and TPE learns
to avoid its neighbourhood. A point proposed twice is answered from the first measurement and
does not count against the budget of distinct points; a point whose steps fail is recorded with
the reason and the search goes on. `measure` is the only way the loop touches models, so it runs
the same wherever the caller measures (a nightly DAG task, `slimline run`, a test on a tiny model).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel

from tasks.core.errors import SlimlineError
from tasks.search.space import Point, SearchConfig

log = logging.getLogger(__name__)

CONSTRAINTS = "constraints"  # the trial's user attribute Optuna's constraints_func reads


class Measured(BaseModel):
    """What the caller measured of one point."""

    accuracy: float
    drop_high: float  # upper end of the accuracy-drop interval, points
    speedup: float  # reference p50 / point p50, side by side
    size_mb: float
    passed: bool  # every gate of the recipe
    reason: str  # the verdict's summary


class TrialRecord(BaseModel):
    number: int
    name: str
    point: Point
    state: Literal["passed", "failed", "error"]  # failed: a gate or the search's size limit
    measured: Measured | None
    reason: str
    seconds: float
    duplicate_of: int | None = None
    on_front: bool = False


class SearchRecord(BaseModel):
    """The whole search of one checkpoint: what the report draws and the summary carries."""

    reference: str
    objectives: list[str]
    sampler: str
    trials: list[TrialRecord]
    front: list[str]  # names of the feasible Pareto-optimal points, fastest first
    seconds: float
    stopped: str

    def trial(self, name: str) -> TrialRecord:
        return next(t for t in self.trials if t.name == name)


def _violations(config: SearchConfig, measured: Measured) -> list[float]:
    """Optuna's constraint values (≤ 0 feasible): the gates, then the search's size limit."""
    gates = 0.0 if measured.passed else 1.0 + max(0.0, measured.drop_high)
    size = measured.size_mb - config.max_size_mb if config.max_size_mb is not None else 0.0
    return [gates, size]


def _values(config: SearchConfig, measured: Measured) -> list[float]:
    figures = {"latency": measured.speedup, "size": measured.size_mb}
    return [measured.accuracy, *(figures[o] for o in config.objectives)]


def _directions(config: SearchConfig) -> list[str]:
    sense = {"latency": "maximize", "size": "minimize"}
    return ["maximize", *(sense[o] for o in config.objectives)]


def _state(config: SearchConfig, measured: Measured) -> tuple[Literal["passed", "failed"], str]:
    if not measured.passed:
        return "failed", measured.reason
    if config.max_size_mb is not None and measured.size_mb > config.max_size_mb:
        return "failed", f"FAIL size {measured.size_mb:.1f} MB > search limit {config.max_size_mb:g} MB"
    return "passed", measured.reason


def run_study(config: SearchConfig, measure: Callable[[Point], Measured]) -> SearchRecord:
    """Measure up to `config.trials` distinct points, return every trial and the front.

    A point proposed again is answered from its first measurement and told to Optuna like any
    trial (TPE learns from it) but does not use up the budget; the search also stops at the time
    limit, once every point of the space is measured, or after `max_repeats` repeats in a row."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # both arguments are marked experimental since Optuna 3
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=config.seed,
            n_startup_trials=config.startup_trials,
            multivariate=True,
            constraints_func=lambda trial: trial.user_attrs[CONSTRAINTS],
        )
    study = optuna.create_study(directions=_directions(config), sampler=sampler)
    for start in config.start:
        study.enqueue_trial(start)
    space = config.space.model_dump()
    started = time.monotonic()
    records: list[TrialRecord] = []
    distinct = repeats_in_row = 0
    space_size = config.space.size
    stopped = f"budget of {config.trials} points"
    while distinct < config.trials:
        elapsed = time.monotonic() - started
        if config.timeout_minutes is not None and elapsed >= config.timeout_minutes * 60:
            stopped = f"time limit of {config.timeout_minutes:g} min after {distinct} points"
            break
        if distinct == space_size:
            stopped = f"every point of the space measured ({distinct})"
            break
        if repeats_in_row > config.max_repeats:
            stopped = f"{repeats_in_row} proposals in a row of points already measured"
            break
        trial = study.ask()
        point = Point(**{name: trial.suggest_categorical(name, choices) for name, choices in space.items()})
        record = _measure(config, measure, len(records), point, records)
        records.append(record)
        if record.duplicate_of is None:
            distinct, repeats_in_row = distinct + 1, 0
        else:
            repeats_in_row += 1
        if record.measured is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            trial.set_user_attr(CONSTRAINTS, _violations(config, record.measured))
            study.tell(trial, _values(config, record.measured))
        log.info(
            "search %d/%d %s: %s (%.0f s)%s",
            distinct,
            config.trials,
            point.name,
            record.reason,
            record.seconds,
            "" if record.duplicate_of is None else f", proposed again: answered from #{record.duplicate_of}",
        )
    front = {t.number for t in study.best_trials}  # feasible trials only, when constrained
    on_front = [r for r in records if r.number in front and r.duplicate_of is None and r.state == "passed"]
    on_front.sort(key=lambda r: -r.measured.speedup if r.measured else 0.0)
    names = {r.name for r in on_front}
    return SearchRecord(
        reference=config.reference,
        objectives=["accuracy", *config.objectives],
        sampler=f"optuna {optuna.__version__} TPESampler (multivariate, constrained, seed {config.seed})",
        trials=[
            r.model_copy(update={"on_front": r.name in names and r.duplicate_of is None}) for r in records
        ],
        front=[r.name for r in on_front],
        seconds=round(time.monotonic() - started, 1),
        stopped=stopped,
    )


def _measure(
    config: SearchConfig,
    measure: Callable[[Point], Measured],
    number: int,
    point: Point,
    earlier: list[TrialRecord],
) -> TrialRecord:
    """One trial's record: measured now, or copied from the first trial of the same point."""
    first = next((r for r in earlier if r.point == point and r.duplicate_of is None), None)
    if first is not None:
        return first.model_copy(update={"number": number, "duplicate_of": first.number, "seconds": 0.0})
    started = time.monotonic()
    try:
        measured = measure(point)
    except SlimlineError as exc:  # a point whose steps cannot run: recorded, the search goes on
        return TrialRecord(
            number=number,
            name=point.name,
            point=point,
            state="error",
            measured=None,
            reason=f"ERROR {exc}",
            seconds=round(time.monotonic() - started, 1),
        )
    state, reason = _state(config, measured)
    return TrialRecord(
        number=number,
        name=point.name,
        point=point,
        state=state,
        measured=measured,
        reason=reason,
        seconds=round(time.monotonic() - started, 1),
    )

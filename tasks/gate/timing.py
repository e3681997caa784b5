"""Side-by-side timing: every model loaded in one process and timed interleaved, round by round,
so each sees the same machine conditions and their figures can be compared (an evaluation's own
latency, measured minutes apart on a shared machine, cannot).

In each round every model serves the same `requests` batch-1 eval texts; the model order rotates
by one place each round, so no model always runs first (cold caches) or last (a hot machine)."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from tqdm import tqdm

from tasks.core.artifacts import StepResult, run_step
from tasks.core.config import Strict
from tasks.core.inference import Encoder, Predictor, load_predictor
from tasks.core.models import ModelRef
from tasks.core.settings import Settings
from tasks.gate.evaluate import percentile_ms, time_requests
from tasks.intake.data import load_split


class TimingConfig(Strict):
    rounds: int = Field(5, ge=1, le=100, description="Interleaved rounds; the median over them ranks models.")
    requests: int = Field(40, ge=5, le=10_000, description="Batch-1 requests per model per round.")
    warmup: int = Field(10, ge=0, le=1_000, description="Untimed requests per model before the first round.")
    threads: int = Field(
        1, ge=1, le=256, description="Intra-op threads of every model, so they compete on equal terms."
    )


class TimedModel(BaseModel):
    """A model to time: its name in the table, where it lies, and its artifact key."""

    name: str
    model: ModelRef
    key: str


class ModelTiming(BaseModel):
    """One model's side-by-side figures, in ms."""

    name: str
    runtime: str
    p50_ms_per_round: list[float]
    p95_ms_per_round: list[float]
    p50_ms: float  # median over rounds of the round p50s
    p50_min_ms: float  # the spread of the round p50s
    p50_max_ms: float
    p95_ms: float  # median over rounds of the round p95s


class TimingTable(BaseModel):
    rounds: int
    requests: int
    threads: int
    order: list[list[str]]  # the model order of each round
    models: list[ModelTiming]

    def of(self, name: str) -> ModelTiming:
        return next(m for m in self.models if m.name == name)


def summarise(name: str, runtime: str, rounds: list[list[int]]) -> ModelTiming:
    """A model's row from its per-round request times (ns)."""
    p50s = [percentile_ms(r, 50) for r in rounds]
    p95s = [percentile_ms(r, 95) for r in rounds]
    return ModelTiming(
        name=name,
        runtime=runtime,
        p50_ms_per_round=p50s,
        p95_ms_per_round=p95s,
        p50_ms=round(statistics.median(p50s), 4),
        p50_min_ms=min(p50s),
        p50_max_ms=max(p50s),
        p95_ms=round(statistics.median(p95s), 4),
    )


def time_interleaved(
    models: list[TimedModel], texts: list[str], max_length: int, config: TimingConfig
) -> TimingTable:
    """Load every model here and time them interleaved (see the module docstring)."""
    import torch

    if len(texts) < config.requests:
        raise ValueError(f"{config.requests} requests per round need as many texts; got {len(texts)}")
    # Torch's thread count is process-wide: set it for the timing, give the caller back its own.
    threads_before = torch.get_num_threads()
    try:
        predictors: dict[str, Predictor] = {}
        requests: dict[str, list[dict[str, np.ndarray]]] = {}
        for item in models:
            encode = Encoder(item.model.path, max_length)
            requests[item.name] = [encode([t]) for t in texts[: config.requests]]
            predictors[item.name] = load_predictor(item.model, config.threads)
            warmup = itertools.islice(itertools.cycle(requests[item.name]), config.warmup)
            time_requests(predictors[item.name], list(warmup))
        names = [m.name for m in models]
        samples: dict[str, list[list[int]]] = {name: [] for name in names}
        order = []
        for index in tqdm(range(config.rounds), desc="side-by-side timing", leave=False):
            shift = index % len(names)
            turn = names[shift:] + names[:shift]
            order.append(turn)
            for name in turn:
                samples[name].append(time_requests(predictors[name], requests[name]))
    finally:
        torch.set_num_threads(threads_before)
    return TimingTable(
        rounds=config.rounds,
        requests=config.requests,
        threads=config.threads,
        order=order,
        models=[summarise(n, predictors[n].runtime, samples[n]) for n in names],
    )


def time_side_by_side(
    settings: Settings, models: list[TimedModel], split: StepResult, max_length: int, config: TimingConfig
) -> tuple[TimingTable, StepResult]:
    """`time_interleaved` on the split's eval texts, as a cached step keyed by the models'
    artifact keys, the split and the config: a rerun with nothing changed reuses the table."""

    def work(out: Path) -> dict[str, Any]:
        texts = [e.text for e in load_split(split.path, "eval")]
        return time_interleaved(models, texts, max_length, config).model_dump()

    result = run_step(
        settings.artifacts_dir,
        "timing",
        {"timing": config.model_dump(), "max_length": max_length},
        {f"model:{m.name}": m.key for m in models} | {"split": split.key},
        work,
        code=__name__,
    )
    return TimingTable.model_validate(result.manifest.metrics), result

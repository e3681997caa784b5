"""`engine.json`: what an engine folder holds, what it was built from and what a device needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tasks.core.errors import EngineError
from tasks.engines.target import InputProfile, Precision, Requirements, Runtime, Threads

ENGINE_JSON = "engine.json"


class CanaryResult(BaseModel):
    """The build-time check: the engine against the registered model on the canary set."""

    examples: int
    agreement: float  # share of canary labels equal to the registered model's
    max_logit_diff: float
    passed: bool
    reason: str
    device: str  # where the check ran (cpu, cuda:0 NVIDIA H100 ...)
    latency_p50_ms: float | None = None  # batch 1; measured only when the build machine matches
    latency_p95_ms: float | None = None
    throughput_per_s: float | None = None  # sequences per second at `throughput_batch`
    throughput_batch: int | None = None
    timing_note: str = ""  # why latency was not measured, when it was not
    energy_j_per_1k: float | None = None  # joules per 1,000 batch-1 inferences, from a real counter
    energy_j_per_1k_batched: float | None = None  # per 1,000 sequences at `throughput_batch`
    energy_note: str = ""  # the counter read, or why energy was not measured


class EngineInfo(BaseModel):
    """The contents of `engine.json`."""

    target: str
    runtime: Runtime
    runtime_version: str
    precision: Precision
    profiles: list[InputProfile]
    threads: Threads
    requires: Requirements  # what a device must have, the build machine's ISA included where it matters
    files: dict[str, str]  # engine file(s) and tokenizer files → sha256 (engine.json itself excluded)
    entry: str  # the file the runtime loads
    inputs: list[str]  # input names, in order
    labels: list[str]
    source_onnx_digest: str  # sha256 of the registered ONNX the engine reproduces
    model_version: str  # NAME/VERSION
    model_key: str  # the registered model's artifact key
    built_on: dict[str, Any]  # the build machine's capabilities (cpu model, flags, runtimes, GPU)
    build_seconds: float
    notes: list[str] = []  # what the builder decided and why (optimization level, fallbacks)
    check: CanaryResult | None = None


def write_info(engine_dir: Path, info: EngineInfo) -> None:
    (engine_dir / ENGINE_JSON).write_text(info.model_dump_json(indent=2))


def read_info(engine_dir: Path) -> EngineInfo:
    """engine.json of a folder; EngineError when it is missing or malformed."""
    path = Path(engine_dir) / ENGINE_JSON
    try:
        return EngineInfo.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise EngineError(f"{path}: cannot be read ({exc.strerror})") from None
    except (ValueError, ValidationError) as exc:
        raise EngineError(f"{path}: not a valid engine.json ({str(exc).splitlines()[0]})") from None

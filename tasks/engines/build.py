"""Build one engine for one target through the artifact cache, then check it on the canary set.

The engine folder holds the runtime's file(s), the tokenizer files, the canary set it was checked
on (`canary.json`, so the check can be repeated from the folder alone) and `engine.json`. The build is
keyed by the registered model's artifact key, the canary set and the target, so a rerun finds it.
A build whose canary check fails raises EngineCheckFailed and leaves nothing in the cache."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.artifacts import StepResult, run_step
from tasks.core.digests import content_digest, file_sha256
from tasks.core.errors import EngineCheckFailed, EngineError
from tasks.engines.canary import CANARY_FILE, read_canary
from tasks.engines.capabilities import read_capabilities, unmet
from tasks.engines.check import check_engine
from tasks.engines.info import ENGINE_JSON, EngineInfo, read_info, write_info
from tasks.engines.runtime import BuildSource, Built, Runtime
from tasks.engines.target import Requirements, Target

if TYPE_CHECKING:  # settings are passed in; a device loading engines needs no pydantic-settings
    from tasks.core.settings import Settings

log = logging.getLogger(__name__)

# The tokenizer travels with every engine so a device can serve text without the model folder.
TOKENIZER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def runtime_of(name: str) -> Runtime:
    """The runtime module for a target's `runtime` (each module is itself a Runtime). Each import
    is written out, so the code key of a build covers every runtime's code."""
    if name == "onnxruntime-cpu":
        from tasks.engines.runtimes import ort_cpu

        return ort_cpu
    if name == "torch-cuda":
        from tasks.engines.runtimes import torch_cuda

        return torch_cuda
    if name == "tensorrt":
        from tasks.engines.runtimes import tensorrt

        return tensorrt
    raise EngineError(f"unknown runtime {name!r}; allowed: onnxruntime-cpu, torch-cuda, tensorrt")


def merged_requirements(target: Requirements, built: dict[str, object]) -> Requirements:
    """The target's requirements with what the build adds: flags joined, other fields replaced."""
    fields: dict[str, Any] = target.model_dump()
    for name, value in built.items():
        if name in ("cpu_flags", "cpu_flags_absent") and isinstance(value, list):
            fields[name] = sorted(set(fields[name]) | set(value))
        else:
            fields[name] = value
    return Requirements.model_validate(fields)


def engine_info(
    target: Target,
    built: Built,
    source: BuildSource,
    *,
    labels: list[str],
    model_version: str,
    model_key: str,
    files: dict[str, str] | None = None,
    built_on: dict[str, Any] | None = None,
    build_seconds: float = 0.0,
) -> EngineInfo:
    """engine.json for what `built` wrote for `target` from `source`."""
    return EngineInfo(
        target=target.name,
        runtime=target.runtime,
        runtime_version=built.runtime_version,
        precision=target.precision,
        profiles=target.profiles,
        threads=target.threads,
        requires=merged_requirements(target.requires, built.requires),
        files=files or {},
        entry=built.entry,
        inputs=source.inputs,
        labels=labels,
        source_onnx_digest=source.onnx_digest,
        model_version=model_version,
        model_key=model_key,
        built_on=built_on or {},
        build_seconds=build_seconds,
        notes=built.notes,
    )


def engine_files(folder: Path) -> dict[str, str]:
    """sha256 of every file of an engine folder, engine.json and the manifest excluded."""
    return {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (ENGINE_JSON, "manifest.json")
    }


def engine_digest(folder: Path) -> str:
    """The engine's content digest: its files (engine.json included), as a device would verify them."""
    digests = engine_files(folder) | {ENGINE_JSON: file_sha256(folder / ENGINE_JSON)}
    return content_digest(digests)


def build_engine(
    settings: Settings,
    source: BuildSource,
    target: Target,
    canary: StepResult,
    model_version: str,
    model_key: str,
) -> StepResult:
    """The engine of `model_key` for `target`, built and checked (or found in the cache)."""
    runtime = runtime_of(target.runtime)

    def work(out: Path) -> dict[str, Any]:
        started = time.perf_counter()
        built = runtime.build(source, target, out)
        for name in TOKENIZER_FILES:
            if (source.tokenizer_dir / name).is_file():
                shutil.copyfile(source.tokenizer_dir / name, out / name)
        caps = read_capabilities()
        shutil.copyfile(canary.path / CANARY_FILE, out / CANARY_FILE)
        sample = read_canary(out / CANARY_FILE)
        info = engine_info(
            target,
            built,
            source,
            labels=sample.label_names,
            model_version=model_version,
            model_key=model_key,
            files=engine_files(out),
            built_on=caps.model_dump(),
            build_seconds=round(time.perf_counter() - started, 3),
        )
        missing = unmet(info.requires, target.runtime, caps)
        # A GPU engine on a machine without that GPU is checked for correctness on the CPU, untimed.
        device = None if not missing else ("cpu" if target.runtime == "torch-cuda" else None)
        note = (
            None if not missing else f"not timed: this machine is not a {target.name} ({'; '.join(missing)})"
        )
        result = check_engine(runtime.load(out, info, device), sample, target, note)
        write_info(out, info.model_copy(update={"check": result}))
        if not result.passed:
            raise EngineCheckFailed(
                f"engine of {model_version} for {target.name} failed its canary check ({result.reason}); "
                "not registered"
            )
        log.info("engine %s for %s: %s", model_version, target.name, result.reason)
        return {
            "size_bytes": sum(
                p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name not in TOKENIZER_FILES
            ),
            "build_seconds": info.build_seconds,
            "digest": engine_digest(out),
        } | result.model_dump(exclude={"reason", "timing_note", "device"})

    # Where it is built (the target's node pool and image) does not change what is built.
    config = {"target": target.model_dump(mode="json", exclude={"build"}), "model_version": model_version}
    inputs = {"model": model_key, "canary": canary.key, "onnx": source.onnx_digest}
    if source.calibration is not None:
        inputs["calibration"] = file_sha256(source.calibration)
    return run_step(settings.artifacts_dir, f"engine/{target.name}", config, inputs, work, code=__name__)


def load_engine(engine_dir: Path, device: str | None = None) -> tuple[EngineInfo, Any]:
    """An engine folder's info and its loaded predictor. Callers verify the folder first (a signed
    bundle's digests); this checks only that every file engine.json lists is there, unchanged."""
    engine_dir = Path(engine_dir)
    info = read_info(engine_dir)
    actual = engine_files(engine_dir)
    changed = sorted(n for n, d in info.files.items() if actual.get(n) != d)
    if changed:
        raise EngineError(f"engine {engine_dir}: {', '.join(changed)} missing or changed since it was built")
    return info, runtime_of(info.runtime).load(engine_dir, info, device)

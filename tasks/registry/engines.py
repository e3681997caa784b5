"""Engines in the registry: each build is an MLflow run (the engine folder as its artifacts, the
canary check as metrics) and a tag on the model version per target, so the registry answers
"which engines exist for version V, and for which targets"."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ValidationError

from tasks.core.errors import RegistryError
from tasks.core.locks import staging_dir
from tasks.core.settings import Settings
from tasks.engines.build import engine_digest
from tasks.engines.info import CanaryResult, EngineInfo
from tasks.registry import tracking
from tasks.registry.versions import VersionRef

ENGINE_TAG = "engine."  # after tracking.TAG: slimline.engine.<target>
ENGINE_ARTIFACT = "engine"


class EngineRecord(BaseModel):
    """One registered engine: where its files are and what identifies them."""

    target: str
    runtime: str
    precision: str
    digest: str  # content digest of the engine folder (engine.json included)
    key: str  # its artifact key
    run_id: str  # the MLflow run holding its files


class EngineOutcome(BaseModel):
    """What happened to one target's engine of one version."""

    model_version: str
    target: str
    status: Literal["built", "reused", "skipped", "failed"]
    reason: str
    record: EngineRecord | None = None
    check: CanaryResult | None = None
    size_bytes: int | None = None
    build_seconds: float | None = None
    path: Path | None = None


def engines_of(settings: Settings, ref: VersionRef) -> dict[str, EngineRecord]:
    """The engines registered for a version, by target."""
    found = {}
    for name, value in ref.lineage.items():
        if name.startswith(ENGINE_TAG):
            try:
                record = EngineRecord.model_validate(json.loads(value))
            except (ValueError, ValidationError):
                continue  # a tag someone else wrote; not ours to trust
            found[record.target] = record
    return found


def record_engine(
    settings: Settings, ref: VersionRef, engine_dir: Path, key: str, digest: str, info: EngineInfo
) -> EngineRecord:
    """Log a checked engine (`digest`: its content digest, as its build step recorded it) against
    its model version, once per engine: a rebuild finds it."""
    known = engines_of(settings, ref).get(info.target)
    if known is not None and known.digest == digest:
        return known
    mlflow = tracking.client(settings)
    check = info.check
    try:
        experiment = mlflow.get_run(ref.run_id).info.experiment_id
        run = mlflow.create_run(
            experiment,
            run_name=f"engine {ref.label} {info.target}",
            tags={
                f"{tracking.TAG}kind": "engine",
                f"{tracking.TAG}model_version": ref.label,
                f"{tracking.TAG}target": info.target,
                f"{tracking.TAG}runtime": info.runtime,
                f"{tracking.TAG}precision": info.precision,
                f"{tracking.TAG}engine_digest": digest,
                f"{tracking.TAG}artifact_key": key,
                f"{tracking.TAG}source_onnx_digest": info.source_onnx_digest,
                "mlflow.parentRunId": ref.run_id,
            },
        )
        run_id = run.info.run_id
        metrics = {"build_seconds": info.build_seconds}
        if check is not None:
            metrics |= {
                k: float(v)
                for k, v in check.model_dump(
                    include={
                        "agreement",
                        "max_logit_diff",
                        "latency_p50_ms",
                        "latency_p95_ms",
                        "throughput_per_s",
                        "energy_j_per_1k",
                        "energy_j_per_1k_batched",
                    }
                ).items()
                if v is not None
            }
        tracking.log_metrics(settings, run_id, metrics)
        mlflow.log_artifacts(run_id, str(engine_dir), ENGINE_ARTIFACT)
        mlflow.set_terminated(run_id, "FINISHED")
        record = EngineRecord(
            target=info.target,
            runtime=info.runtime,
            precision=info.precision,
            digest=digest,
            key=key,
            run_id=run_id,
        )
        mlflow.set_model_version_tag(
            ref.name, ref.version, f"{tracking.TAG}{ENGINE_TAG}{info.target}", record.model_dump_json()
        )
    except MlflowException as exc:
        raise RegistryError(
            f"recording the {info.target} engine of {ref.label} failed: {exc.message}"
        ) from exc
    return record


def fetch_engine(settings: Settings, record: EngineRecord) -> Path:
    """The engine's folder in the local cache, downloaded from its run once (atomically), its
    digest checked against the registry's."""
    final = settings.cache_dir / "engines" / record.digest[:32]
    if not final.exists():
        with staging_dir(final.parent, prefix=f".{record.digest[:32]}.tmp-") as staging:
            try:
                downloaded = tracking.client(settings).download_artifacts(
                    record.run_id, ENGINE_ARTIFACT, str(staging)
                )
            except MlflowException as exc:
                raise RegistryError(f"downloading engine {record.digest[:12]} failed: {exc.message}") from exc
            if engine_digest(Path(downloaded)) != record.digest:
                raise RegistryError(
                    f"engine of run {record.run_id} does not match its registered digest {record.digest[:12]}"
                )
            try:
                os.replace(downloaded, final)
            except OSError:
                if not final.exists():
                    raise
    return final


ENGINES_ARTIFACT = "engines.json"


def log_outcomes(settings: Settings, parent_run_id: str, outcomes: list[EngineOutcome]) -> None:
    """A night's engine outcomes as `engines.json` on its parent run."""
    tracking.log_json(
        settings, parent_run_id, ENGINES_ARTIFACT, {"engines": [o.model_dump(mode="json") for o in outcomes]}
    )


def logged_outcomes(settings: Settings, parent_run_id: str) -> list[EngineOutcome] | None:
    """The engine outcomes logged on a parent run; None before its engine step ran."""
    if not tracking.has_artifact(settings, parent_run_id, ENGINES_ARTIFACT):
        return None
    logged = tracking.load_json(settings, parent_run_id, ENGINES_ARTIFACT)
    return [EngineOutcome.model_validate(o) for o in logged["engines"]]

"""The pipeline's decisions in the audit log: a tiny nightly run (real MLflow, real ONNX engines)
leaves one record per decision, with the facts that join them, and the log verifies."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.audit.log import open_log, read_records
from tasks.audit.records import Record
from tasks.audit.verify import verify
from tasks.core.errors import CheckpointRefused, StoreError
from tasks.core.settings import Settings
from tasks.flow.audit_events import record_event
from tasks.flow.engines import build_published_engines
from tasks.flow.local import run_local
from tasks.release.keys import generate_key_pair, load_public_key
from tests.tiny import publish, write_target, write_tiny_recipe


def records(settings: Settings) -> list[Record]:
    return list(read_records(open_log(settings)))


def test_a_nightly_run_records_each_decision_once_and_the_log_verifies(
    settings: Settings, tiny_checkpoint: Path, tmp_path: Path
):
    keys = generate_key_pair(settings.signing_key)
    write_target(tmp_path / "targets", "cpu-avx2")
    settings = settings.model_copy(update={"targets_dir": tmp_path / "targets"})
    recipe = write_tiny_recipe(tmp_path / "recipe")
    uri = publish(settings, tiny_checkpoint, "nightly/tiny")

    summary = run_local(settings, recipe, uri)
    outcomes = build_published_engines(settings, summary)
    built = [o for o in outcomes if o.record is not None]
    assert built  # a target that cannot take a variant is skipped, and recorded only on the run

    log = records(settings)
    assert [r.kind for r in log] == [
        "checkpoint.verified",
        "data.validated",
        "variant.gated",
        "variant.gated",
        "version.registered",
        "version.registered",
        "alias.moved",
    ] + ["engine.built"] * len(built)
    by_kind = {r.kind: r for r in log}
    assert by_kind["checkpoint.verified"].subject == f"checkpoint:{uri}"
    assert by_kind["checkpoint.verified"].data["digest"] == summary.checkpoint_digest
    validated = by_kind["data.validated"]
    assert validated.data["dataset_digest"] == summary.dataset_digest and validated.data["success"] is True
    gated = {str(r.data["variant"]): r for r in log if r.kind == "variant.gated"}
    rows = {row.name: row for row in summary.rows}
    for name, record in gated.items():
        assert record.subject == f"variant_run:{rows[name].run_id}"
        assert record.data["passed"] is True and record.data["reasons"]
        assert record.data["recipe_digest"] == summary.recipe_digest
        assert record.data["code_commit"] == summary.code_commit
    registered = {r.subject: r for r in log if r.kind == "version.registered"}
    for name, row in rows.items():
        if row.version:
            version = registered[f"model_version:tiny-sentiment/{row.version}"]
            assert version.data["run_id"] == row.run_id
            assert version.data["artifact_key"] == gated[name].data["artifact_key"]
    assert by_kind["alias.moved"].subject == f"model_version:tiny-sentiment/{summary.candidate}"
    assert by_kind["alias.moved"].data == {"alias": "candidate", "version": summary.candidate}
    engines = [r for r in log if r.kind == "engine.built"]
    assert [(r.data["model_version"], r.data["digest"]) for r in engines] == [
        (o.model_version, o.record.digest) for o in built if o.record
    ]
    assert all(r.subject == f"engine:cpu-avx2/{r.data['digest']}" for r in engines)

    # A rerun decides nothing new about versions: it registers none and builds no engine again.
    run_local(settings, recipe, uri)
    rerun = [r.kind for r in records(settings)[len(log) :]]
    assert rerun == ["checkpoint.verified", "data.validated", "variant.gated", "variant.gated", "alias.moved"]

    report = verify(open_log(settings), load_public_key(keys.public))
    assert report.records == len(log) + len(rerun)


def test_a_refused_checkpoint_is_recorded_with_its_reason(
    settings: Settings, tiny_checkpoint: Path, tmp_path: Path
):
    recipe = write_tiny_recipe(tmp_path / "recipe")
    (tiny_checkpoint / "pytorch_model.bin").write_bytes(b"not even a pickle")
    uri = publish(settings, tiny_checkpoint, "nightly/evil")
    with pytest.raises(CheckpointRefused) as refused:
        run_local(settings, recipe, uri)
    (record,) = records(settings)
    assert record.kind == "checkpoint.refused" and record.subject == f"checkpoint:{uri}"
    assert record.data == {"reason": str(refused.value), "digest": None, "exit_code": refused.value.exit_code}


def test_a_record_that_cannot_be_formed_is_skipped_and_an_unwritable_log_is_a_store_error(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    record_event(settings, "checkpoint.refused", "checkpoint:file:///x", {"reason": "x" * 70_000}, "test")
    assert records(settings) == []
    assert "audit record not written (the step goes on)" in caplog.text

    (tmp_path / "a-file").write_text("not a folder")
    unwritable = Settings(home=settings.home, audit_log=(tmp_path / "a-file" / "audit").as_uri())
    with pytest.raises(StoreError, match=r"cannot append checkpoint.verified about checkpoint:file:///x: "):
        record_event(unwritable, "checkpoint.verified", "checkpoint:file:///x", {"digest": "ab"}, "test")

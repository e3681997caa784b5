"""Step outputs are keyed by (step, config, inputs, code) and appear only when complete."""

import json

import pytest

from tasks.core.artifacts import run_step, step_key

CODE = "tasks.intake.data"  # any module: the code the step runs


def test_second_run_reuses_and_does_no_work(tmp_path):
    calls = []

    def work(out):
        calls.append(out)
        (out / "result.txt").write_text("42")
        return {"answer": 42}

    first = run_step(tmp_path, "demo.step", {"a": 1}, {"x": "abc"}, work, code=CODE)
    second = run_step(tmp_path, "demo.step", {"a": 1}, {"x": "abc"}, work, code=CODE)
    assert len(calls) == 1
    assert not first.reused and second.reused
    assert second.path == first.path
    assert (second.path / "result.txt").read_text() == "42"
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["step"] == "demo.step"
    assert manifest["config"] == {"a": 1}
    assert manifest["inputs"] == {"x": "abc"}
    assert manifest["metrics"] == {"answer": 42}
    key = step_key("demo.step", {"a": 1}, {"x": "abc"}, manifest["code_digest"])
    assert manifest["key"] == first.key == key
    assert manifest["seconds"] >= 0 and manifest["code_digest"]


def test_key_changes_with_config_inputs_and_code(tmp_path):
    base = step_key("s", {"a": 1}, {"x": "1"}, "code")
    assert step_key("s", {"a": 2}, {"x": "1"}, "code") != base
    assert step_key("s", {"a": 1}, {"x": "2"}, "code") != base
    assert step_key("t", {"a": 1}, {"x": "1"}, "code") != base
    assert step_key("s", {"a": 1}, {"x": "1"}, "other code") != base


def test_a_failing_step_leaves_nothing_behind(tmp_path):
    def work(out):
        (out / "half.bin").write_bytes(b"partial")
        raise RuntimeError("died half-way")

    with pytest.raises(RuntimeError):
        run_step(tmp_path, "demo.step", {}, {}, work, code=CODE)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []

    ok = run_step(tmp_path, "demo.step", {}, {}, lambda out: {"done": True}, code=CODE)
    assert not ok.reused and ok.manifest.metrics == {"done": True}

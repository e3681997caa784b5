"""Engines: target files validated at load, ONNX Runtime CPU engines built from a registered
version through the artifact cache, checked on the canary set, recorded in MLflow, loaded in a
fresh process; precision mismatches and failed checks refused with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.cli import main
from tasks.core.errors import ConfigError, EngineCheckFailed, EngineError
from tasks.core.settings import Settings
from tasks.engines.capabilities import Capabilities, Gpu, read_capabilities, unmet
from tasks.engines.energy import energy_counter
from tasks.engines.info import CanaryResult, read_info
from tasks.engines.target import Requirements, Target, load_target, load_targets
from tasks.flow.engines import build_engines, build_published_engines, latency_over_budget
from tasks.flow.local import run_local
from tasks.gate.gates import TargetBudget
from tasks.registry.engines import engines_of, logged_outcomes
from tasks.registry.versions import get_version
from tasks.report.summary import Summary
from tests.tiny import CPU_TARGET, publish, write_target, write_tiny_recipe

REPO_TARGETS = Path(__file__).resolve().parents[1] / "targets"

# The registered fixture: settings, the versions by precision, and the night's summary.
Night = tuple[Settings, dict[str, str], Summary]


def test_the_demo_targets_load():
    targets = load_targets(REPO_TARGETS)
    assert set(targets) == {"cpu-avx512-vnni", "cpu-avx2", "h100"}
    assert targets["h100"].runtime == "torch-cuda" and targets["h100"].requires.compute_capability == "9.0"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"runtime": "tflite"},
            "runtime = 'tflite': Input should be 'onnxruntime-cpu', 'torch-cuda' or 'tensorrt'",
        ),
        (
            {
                "profiles": [
                    {"batch": {"min": 8, "opt": 4, "max": 16}, "sequence": {"min": 1, "opt": 8, "max": 8}}
                ]
            },
            "needs min <= opt <= max; got 8, 4, 16",
        ),
        ({"profiles": []}, "profiles: List should have at least 1 item"),
        ({"precision": "fp16"}, "precision fp16 is not built by onnxruntime-cpu; allowed: fp32, int8"),
        (
            {"runtime": "tensorrt", "precision": "fp16"},
            "a tensorrt target must name requires.compute_capability",
        ),
        ({"requires": {"cpu_flags": ["AVX2"]}}, "are not CPU flag names"),
        ({"requires": {"runtime_version": {"minimum": "2.0", "below": "1.0"}}}, "empty range"),
        ({"threads": {"intra_op": -1}}, "threads.intra_op = -1"),
    ],
)
def test_a_bad_target_fails_at_load_with_one_line(tmp_path: Path, changes: dict[str, object], expected: str):
    path = write_target(tmp_path, "bad", **changes)
    with pytest.raises(ConfigError) as caught:
        load_target(path)
    assert str(caught.value).startswith(f"target {path}: ")
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_target_is_named_after_its_file(tmp_path: Path):
    path = write_target(tmp_path, "cpu")
    path.rename(tmp_path / "other.yaml")
    with pytest.raises(ConfigError, match="name 'cpu' must match the file name 'other'"):
        load_target(tmp_path / "other.yaml")


def test_unmet_requirements_name_what_is_missing():
    caps = Capabilities(
        machine="x86_64",
        cpu_model="test",
        cpu_flags=["avx2", "fma"],
        cpu_count=4,
        runtimes={"onnxruntime-cpu": "1.19.2", "torch-cuda": "2.11.0+cu130"},
        gpus=[
            Gpu(name="NVIDIA A10", compute_capability="8.6", memory_mib=24000, driver="535.1", cuda="12.2")
        ],
    )
    cpu = Requirements.model_validate(
        {"cpu_flags": ["avx512f", "avx2"], "runtime_version": {"minimum": "1.20"}}
    )
    assert unmet(cpu, "onnxruntime-cpu", caps) == [
        "CPU lacks avx512f",
        "onnxruntime-cpu 1.19.2 is outside >=1.20",
    ]
    narrow = Requirements.model_validate({"cpu_flags_absent": ["fma"]})
    assert unmet(narrow, "onnxruntime-cpu", caps) == [
        "CPU has fma, which the engine's layout was not built for"
    ]
    gpu = Requirements.model_validate(
        {"compute_capability": "9.0", "runtime_version": {"minimum": "2.11", "below": "2.14"}}
    )
    assert unmet(gpu, "torch-cuda", caps) == ["needs a GPU of compute capability 9.0; found NVIDIA A10 (8.6)"]
    ampere = Requirements.model_validate(
        {"compute_capability": "8.6", "min_driver": "550", "cuda": {"minimum": "12.4"}}
    )
    assert unmet(ampere, "torch-cuda", caps) == [
        "driver 535.1 is older than 550",
        "CUDA 12.2 is outside >=12.4",
    ]
    assert unmet(Requirements(), "tensorrt", caps) == ["tensorrt is not installed or no GPU is present"]


def test_this_machine_reads_its_own_capabilities():
    caps = read_capabilities()
    assert caps.cpu_count >= 1 and caps.machine
    assert "onnxruntime-cpu" in caps.runtimes  # installed with slimline
    if caps.machine == "x86_64":
        assert "sse2" in caps.cpu_flags


@pytest.fixture
def registered(settings: Settings, tiny_checkpoint: Path, tmp_path: Path) -> Night:
    """A tiny nightly run: the FP32 ONNX export and its dynamic INT8, registered; their versions by
    precision (the registration order follows the side-by-side timing)."""
    targets = tmp_path / "targets"
    write_target(targets, "cpu-int8")
    write_target(targets, "cpu-fp32", precision="fp32", optimization_level="all")
    write_target(
        targets, "cpu-strict", check=CPU_TARGET["check"] | {"max_logit_diff": 1e-12, "min_agreement": 1.0}
    )
    settings = settings.model_copy(update={"targets_dir": targets})
    recipe = write_tiny_recipe(tmp_path / "recipe")
    data = yaml.safe_load(recipe.read_text())
    data["targets"] = [{"name": "cpu-int8"}, {"name": "cpu-fp32"}]
    recipe.write_text(yaml.safe_dump(data))
    summary = run_local(settings, recipe, publish(settings, tiny_checkpoint, "nightly/tiny"))
    assert summary.new_versions == ["1", "2"]
    versions = {row.name: f"tiny-sentiment/{row.version}" for row in summary.rows if row.version}
    return settings, {"fp32": versions["onnx-fp32"], "int8": versions["onnx-int8-dynamic"]}, summary


LOAD_SCRIPT = """
import json, sys
import numpy as np
from tasks.engines.build import load_engine
from tasks.engines.canary import read_canary
from tasks.engines.check import canary_requests
info, engine = load_engine(sys.argv[1])
canary = read_canary(sys.argv[2])
logits = np.concatenate([engine.predict(ids, mask) for ids, mask in canary_requests(canary, 1)]).tolist()
heavy = sorted(m for m in ("torch", "transformers", "mlflow", "airflow") if m in sys.modules)
print(json.dumps({"device": engine.device, "logits": logits, "heavy": heavy}))
"""


def test_cpu_engines_are_built_checked_recorded_and_load_in_a_fresh_process(
    registered: Night,
):
    settings, versions, _ = registered
    outcomes = build_engines(settings, versions["int8"], strict=False)
    by_target = {o.target: o for o in outcomes}
    # Version 2 is INT8: the INT8 target builds; the FP32 one is skipped with its reason.
    assert by_target["cpu-int8"].status == "built"
    assert by_target["cpu-fp32"].status == "skipped"
    assert "wants fp32 but the registered graph is int8" in by_target["cpu-fp32"].reason

    built = by_target["cpu-int8"]
    assert built.path is not None and built.check is not None and built.record is not None
    info = read_info(built.path)
    assert info.model_version == versions["int8"] and info.target == "cpu-int8"
    assert info.entry == "model.ort" and (built.path / "model.ort").stat().st_size > 0
    # The canary set the engine was checked on travels with it, so the check can be repeated.
    assert {"model.ort", "tokenizer.json", "config.json", "canary.json"} <= set(info.files)
    assert info.requires.runtime_version.minimum == "1.20"
    assert (
        info.check is not None
        and info.check.passed
        and info.check.examples == min(settings.canary_examples, 60)
    )  # the tiny eval split
    # This machine meets the target, so the check timed it.
    assert info.check.latency_p50_ms is not None and info.check.throughput_per_s is not None
    assert info.check.throughput_batch == 16
    # Energy only from a real counter: this machine's CPU has none, and the check says so.
    counter, why_not = energy_counter("cpu")
    if counter is None:
        assert info.check.energy_j_per_1k is None and info.check.energy_note == why_not
    else:
        assert (info.check.energy_j_per_1k or 0) > 0 and info.check.energy_note == counter.source

    # Recorded against the version: the registry answers which engines exist, for which targets.
    ref = get_version(settings, *versions["int8"].split("/"))
    recorded = engines_of(settings, ref)
    assert set(recorded) == {"cpu-int8"} and recorded["cpu-int8"].digest == built.record.digest

    # Loaded in a fresh process, it reproduces the registered model on the canary set.
    canary = next((settings.artifacts_dir / "release_canary").iterdir()) / "canary.json"
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(built.path), str(canary)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    loaded = json.loads(proc.stdout)
    reference = np.asarray(json.loads(canary.read_text())["reference_logits"])
    assert loaded["device"] == "cpu"
    # What a CPU device needs: ONNX Runtime and numpy, no PyTorch, transformers, MLflow or Airflow.
    assert loaded["heavy"] == []
    # Same graph, ONNX Runtime's own offline rewrites, each example alone as the reference was
    # computed: equal to the registered model within 1e-4.
    np.testing.assert_allclose(np.asarray(loaded["logits"]), reference, atol=1e-4)

    # A rebuild is a cache hit with the same digest, recorded once.
    again = {o.target: o for o in build_engines(settings, versions["int8"], ["cpu-int8"])}
    assert again["cpu-int8"].status == "reused" and again["cpu-int8"].record == built.record


def test_the_all_level_records_the_build_machines_vector_width(
    registered: Night,
):
    settings, versions, _ = registered
    (outcome,) = build_engines(settings, versions["fp32"], ["cpu-fp32"])
    assert outcome.path is not None
    requires = read_info(outcome.path).requires
    if "avx512f" in read_capabilities().cpu_flags:
        assert "avx512f" in requires.cpu_flags and requires.cpu_flags_absent == []
    else:
        assert requires.cpu_flags_absent == ["avx512f"]
    # A device of the other width is refused before download.
    other = read_capabilities().model_copy(update={"cpu_flags": ["avx2", "fma", "sse2"]})
    assert unmet(requires, "onnxruntime-cpu", other) == (
        [] if requires.cpu_flags_absent else ["CPU lacks avx512f"]
    )


def test_a_failed_canary_check_registers_and_caches_nothing(
    registered: Night,
):
    settings, versions, _ = registered
    with pytest.raises(EngineCheckFailed, match=r"failed its canary check \(max logit difference"):
        build_engines(settings, versions["int8"], ["cpu-strict"])
    assert not (settings.artifacts_dir / "engine_cpu-strict").exists() or not any(
        p for p in (settings.artifacts_dir / "engine_cpu-strict").iterdir() if not p.name.startswith(".")
    )
    assert engines_of(settings, get_version(settings, *versions["int8"].split("/"))) == {}


def test_engine_cli_errors_are_one_line_with_their_exit_codes(
    registered: Night,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    settings, versions, _ = registered
    monkeypatch.setenv("SLIMLINE_TARGETS_DIR", str(settings.targets_dir))
    home = ["--home", str(settings.home)]
    code = main([*home, "engine", "build", "--model-version", versions["int8"], "--target", "cpu-fp32"])
    err = capsys.readouterr().err
    assert code == EngineError.exit_code and err.count("\n") == 1
    assert "target cpu-fp32 wants fp32 but the registered graph is int8" in err
    code = main([*home, "engine", "build", "--model-version", versions["int8"], "--target", "nope"])
    err = capsys.readouterr().err
    assert (
        code == ConfigError.exit_code
        and "no target 'nope'" in err
        and "allowed: cpu-fp32, cpu-int8, cpu-strict" in err
    )
    assert (
        main([*home, "engine", "build", "--model-version", versions["int8"], "--target", "cpu-strict"]) == 14
    )
    capsys.readouterr()
    assert main([*home, "engine", "build", "--model-version", versions["int8"], "--target", "cpu-int8"]) == 0
    assert "cpu-int8" in capsys.readouterr().out
    assert main([*home, "engine", "list", "--model-version", versions["int8"], "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert list(listed) == ["cpu-int8"] and listed["cpu-int8"]["runtime"] == "onnxruntime-cpu"


def test_a_release_bundle_of_registered_engines_is_signed_and_verifies(
    registered: Night, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    settings, versions, _ = registered
    fleets = tmp_path / "fleets"
    fleets.mkdir()
    (fleets / "edge.yaml").write_text(yaml.safe_dump({"name": "edge", "targets": ["cpu-int8"]}))
    settings = settings.model_copy(update={"fleets_dir": fleets})
    env = {"SLIMLINE_TARGETS_DIR": str(settings.targets_dir), "SLIMLINE_FLEETS_DIR": str(fleets)}
    home = ["--home", str(settings.home)]
    version = versions["int8"]

    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        # No engine yet: the bundle names what is missing and the command that builds it.
        assert main([*home, "release", "bundle", "--model-version", version, "--fleet", "edge"]) == 2
        err = capsys.readouterr().err
        assert f"fleet edge needs engines for cpu-int8; {version} has none" in err
        assert f"slimline engine build --model-version {version} --target cpu-int8" in err
        assert main([*home, "engine", "build", "--model-version", version, "--target", "cpu-int8"]) == 0
        assert main([*home, "release", "bundle", "--model-version", version, "--fleet", "edge"]) == 2
        assert "no release key" in capsys.readouterr().err
        assert main([*home, "keys", "generate"]) == 0
        assert main([*home, "release", "bundle", "--model-version", version, "--fleet", "edge"]) == 0
        out = capsys.readouterr().out
    bundle = Path(out.split("bundle:")[1].split()[0])
    assert bundle == settings.releases_dir / "edge" / "000001" / "bundle"
    release = json.loads((bundle / "release.json").read_text())
    assert release["model_version"] == version and release["number"] == 1 and release["fleet"] == "edge"
    assert release["lineage"]["variant"] == "onnx-int8-dynamic"
    assert release["canary"]["expected"]["cpu-int8"]["agreement"] == 1.0
    public = Path(str(settings.signing_key) + ".pub")
    assert (
        main([*home, "release", "verify", str(bundle), "--trusted-key", str(public), "--fleet", "edge"]) == 0
    )
    # The same bundle against a device already on release 1: a replay.
    code = main(
        [*home, "release", "verify", str(bundle), "--trusted-key", str(public), "--current-release", "1"]
    )
    assert code == 15 and "not newer" in capsys.readouterr().err


def test_the_all_level_is_refused_for_a_target_this_machine_is_not(
    registered: Night,
):
    settings, versions, _ = registered
    # Knights Mill's flag: absent from every current CPU, so the build machine cannot stand for it.
    write_target(
        settings.targets_dir,
        "cpu-knm",
        precision="fp32",
        optimization_level="all",
        requires={"cpu_flags": ["avx512_4vnniw"]},
    )
    with pytest.raises(
        EngineError, match="build machine's CPU, which lacks avx512_4vnniw; build it on a cpu-knm"
    ):
        build_engines(settings, versions["fp32"], ["cpu-knm"])
    assert not (settings.artifacts_dir / "engine_cpu-knm").exists() or not [
        p for p in (settings.artifacts_dir / "engine_cpu-knm").iterdir() if not p.name.startswith(".")
    ]


def test_a_nights_engines_are_logged_and_shown_in_its_release_report(
    registered: Night,
):
    settings, versions, summary = registered
    report = settings.home / "reports" / f"{summary.parent_run_id}.html"
    assert "The engine step had not run when this report was written." in report.read_text()
    outcomes = build_published_engines(settings, summary)
    # The recipe's two targets for both versions: each precision builds for its own target only.
    assert sorted((o.model_version, o.target, o.status) for o in outcomes) == sorted(
        [
            (versions["int8"], "cpu-int8", "built"),
            (versions["int8"], "cpu-fp32", "skipped"),
            (versions["fp32"], "cpu-int8", "skipped"),
            (versions["fp32"], "cpu-fp32", "built"),
        ]
    )
    assert logged_outcomes(settings, summary.parent_run_id) == outcomes
    text = report.read_text()
    assert (
        "<h2>Engines</h2>" in text and f">{versions['int8']}<" in text and "skipped: target cpu-fp32" in text
    )


def test_a_gpu_target_is_built_from_the_pytorch_model_and_checked_on_this_cpu(registered: Night):
    settings, versions, _ = registered
    write_target(
        settings.targets_dir,
        "gpu-fp32",
        runtime="torch-cuda",
        precision="fp32",
        requires={"compute_capability": "9.0"},
        profiles=[{"batch": {"min": 1, "opt": 4, "max": 16}, "sequence": {"min": 1, "opt": 32, "max": 64}}],
        check=CPU_TARGET["check"] | {"max_logit_diff": 1e-3},
    )
    # The INT8 graph was changed after export: no PyTorch program stands for it.
    with pytest.raises(EngineError, match=r"applies quantize\.onnx_dynamic_int8 after export"):
        build_engines(settings, versions["int8"], ["gpu-fp32"])
    # The FP32 export's PyTorch model (the checkpoint itself) builds; without a GPU here the program
    # is checked on the CPU for correctness and not timed.
    (outcome,) = build_engines(settings, versions["fp32"], ["gpu-fp32"])
    assert outcome.status == "built" and outcome.check is not None and outcome.path is not None
    assert outcome.check.device == "cpu" and outcome.check.agreement == 1.0
    assert outcome.check.latency_p50_ms is None
    assert outcome.check.timing_note.startswith("not timed: this machine is not a gpu-fp32")
    info = read_info(outcome.path)
    assert info.runtime == "torch-cuda" and info.requires.compute_capability == "9.0"
    (again,) = build_engines(settings, versions["fp32"], ["gpu-fp32"])
    assert again.status == "reused" and again.record == outcome.record


def test_a_tensorrt_int8_target_gets_the_calibration_split_and_fails_in_one_line_here(registered: Night):
    settings, versions, _ = registered
    write_target(
        settings.targets_dir,
        "trt-int8",
        runtime="tensorrt",
        precision="int8",
        requires={"compute_capability": "9.0"},
    )
    with pytest.raises(EngineError) as caught:
        build_engines(settings, versions["fp32"], ["trt-int8"])
    assert "needs TensorRT, which is not installed here" in str(caught.value)
    assert "\n" not in str(caught.value)
    # The calibration split was tokenized for the builder: every calibration tweet, one length.
    (folder,) = (settings.artifacts_dir / "release_calibration").iterdir()
    tokens = json.loads((folder / "calibration.json").read_text())
    assert (
        len(tokens["input_ids"]) == len(tokens["attention_mask"]) == 20
    )  # the tiny recipe's calibration_size
    assert len({len(row) for row in tokens["input_ids"]}) == 1
    assert not (settings.artifacts_dir / "engine_trt-int8").exists() or not [
        p for p in (settings.artifacts_dir / "engine_trt-int8").iterdir() if not p.name.startswith(".")
    ]


def test_a_gpu_targets_latency_budget_is_judged_on_the_engines_own_timing():
    gpu = Target.model_validate(
        CPU_TARGET
        | {
            "name": "gpu",
            "runtime": "torch-cuda",
            "precision": "fp16",
            "requires": {"compute_capability": "9.0"},
        }
    )
    cpu = Target.model_validate(CPU_TARGET | {"name": "cpu"})
    timed = CanaryResult(
        examples=64,
        agreement=1.0,
        max_logit_diff=0.0,
        passed=True,
        reason="ok",
        device="cuda:0",
        latency_p95_ms=2.5,
    )
    untimed = timed.model_copy(update={"latency_p95_ms": None, "device": "cpu"})
    budget = TargetBudget(name="gpu", max_p95_latency_ms=1.0)
    assert latency_over_budget(budget, gpu, timed) == "p95 2.50 ms on cuda:0 > 1.00 ms budget (target gpu)"
    assert latency_over_budget(budget.model_copy(update={"max_p95_latency_ms": 3.0}), gpu, timed) is None
    # Not timed here (no such GPU): nothing to judge; CPU targets: judged on the side-by-side timing.
    assert latency_over_budget(budget, gpu, untimed) is None
    assert latency_over_budget(budget, cpu, timed) is None
    assert latency_over_budget(None, gpu, timed) is None

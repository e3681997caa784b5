"""The tensorrt engine runtime on a tiny BERT exported to ONNX in the test.

Everywhere: the module imports without TensorRT, a build refuses what TensorRT can never build
(ONNX Runtime-only graphs, INT8 without usable calibration data) before it looks for TensorRT, and
a build or load on a machine without TensorRT fails with one line and writes nothing.
Where TensorRT 10 and a CUDA GPU are present: FP16 and calibrated INT8 builds, loaded and compared
with ONNX Runtime's logits. No machine of this project has TensorRT, so those skip here.
"""

import csv
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from transformers import AutoTokenizer

from tasks.compress.techniques.onnx_export import OnnxExportConfig, export_onnx
from tasks.compress.techniques.onnx_optimize import OrtFusionConfig, ort_fusions
from tasks.compress.techniques.onnx_quantize import DynamicInt8Config, quantize_dynamic_int8
from tasks.core.errors import EngineError
from tasks.core.inference import OnnxPredictor
from tasks.engines.build import runtime_of
from tasks.engines.info import EngineInfo
from tasks.engines.runtime import BuildSource, Built
from tasks.engines.runtimes import tensorrt as trt_runtime
from tasks.engines.target import Requirements, Target, VersionRange
from tests.factories import LABELS, make_checkpoint, make_dataset
from tests.tiny import make_context

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
without_tensorrt = pytest.mark.skipif(
    HAS_TENSORRT, reason="TensorRT is installed here, so the missing-TensorRT path cannot be reached"
)
SEQUENCE = 32


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT exported to ONNX (FP32), two graphs TensorRT cannot build from, and tweets."""
    root = tmp_path_factory.mktemp("trt")
    context = make_context(root / "data", make_checkpoint(root / "hf", layers=2, hidden=64, heads=4))
    folders = {name: root / name for name in ("fp32", "dynamic-int8", "fused")}
    for folder in folders.values():
        folder.mkdir()
    exported = export_onnx(context.teacher, OnnxExportConfig(), folders["fp32"], context)
    quantize_dynamic_int8(exported, DynamicInt8Config(), folders["dynamic-int8"], context)
    ort_fusions(exported, OrtFusionConfig(), folders["fused"], context)
    return {**folders, "tweets": make_dataset(root / "tweets.csv")}


def tokens(models: dict[str, Path], count: int) -> dict[str, np.ndarray]:
    """`count` tweets through the exported model's tokenizer, padded to SEQUENCE tokens."""
    with models["tweets"].open(newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)][:count]
    tokenizer = AutoTokenizer.from_pretrained(models["fp32"])
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQUENCE, return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in batch.items()}


def write_calibration(models: dict[str, Path], path: Path, count: int = 40) -> Path:
    """Calibration data as the build source carries it: token ids and masks, equal-length rows."""
    batch = tokens(models, count)
    data = {name: batch[name].tolist() for name in ("input_ids", "attention_mask")}
    path.write_text(json.dumps(data))
    return path


def source(folder: Path, calibration: Path | None = None) -> BuildSource:
    graph = folder / "model.onnx"
    return BuildSource(
        onnx=graph,
        onnx_digest=hashlib.sha256(graph.read_bytes()).hexdigest(),
        tokenizer_dir=folder,
        calibration=calibration,
        inputs=[i.name for i in onnx.load(str(graph), load_external_data=False).graph.input],
    )


def target(precision: str = "fp16", capability: str = "9.0", profiles: list | None = None) -> Target:
    return Target.model_validate(
        {
            "name": "gpu-test",
            "runtime": "tensorrt",
            "precision": precision,
            "requires": {"compute_capability": capability},
            "profiles": profiles
            or [
                {"batch": {"min": 1, "opt": 4, "max": 8}, "sequence": {"min": 1, "opt": 16, "max": SEQUENCE}}
            ],
        }
    )


def one_line(error: pytest.ExceptionInfo[EngineError]) -> str:
    message = str(error.value)
    assert "\n" not in message and message.strip() == message
    return message


# Everywhere -----------------------------------------------------------------------------------


def test_the_module_is_the_tensorrt_runtime_and_imports_without_tensorrt():
    assert runtime_of("tensorrt") is trt_runtime
    for name in ("build", "load", "version"):
        assert callable(getattr(trt_runtime, name))
    assert "UNVERIFIED" in (trt_runtime.__doc__ or "")


@without_tensorrt
def test_version_is_none_without_tensorrt():
    assert trt_runtime.version() is None


@without_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_building_without_tensorrt_fails_with_one_line_and_writes_nothing(models, tmp_path, precision):
    calibration = write_calibration(models, tmp_path / "calibration.json")
    out = tmp_path / "engine"
    out.mkdir()
    with pytest.raises(EngineError) as error:
        trt_runtime.build(source(models["fp32"], calibration), target(precision), out)
    message = one_line(error)
    assert message.startswith("target gpu-test needs TensorRT, which is not installed here")
    assert "import tensorrt failed" in message and "TensorRT 10" in message
    assert list(out.iterdir()) == []  # no file that could pass for an engine


@without_tensorrt
def test_a_missing_out_dir_is_not_created_either(models, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(EngineError, match="needs TensorRT"):
        trt_runtime.build(source(models["fp32"]), target("fp16"), out)
    assert not out.exists()


@without_tensorrt
def test_loading_without_tensorrt_fails_with_one_line(tmp_path):
    chosen = target("fp16")
    info = EngineInfo(
        target=chosen.name,
        runtime="tensorrt",
        runtime_version="10.13.0.35",
        precision="fp16",
        profiles=chosen.profiles,
        threads=chosen.threads,
        requires=Requirements(compute_capability="9.0"),
        files={},
        entry=trt_runtime.PLAN_FILE,
        inputs=["input_ids", "attention_mask", "token_type_ids"],
        labels=LABELS,
        source_onnx_digest="0" * 64,
        model_version="tiny/1",
        model_key="tiny",
        built_on={},
        build_seconds=0.0,
    )
    with pytest.raises(EngineError) as error:
        trt_runtime.load(tmp_path, info, None)
    assert "needs TensorRT, which is not installed here" in one_line(error)


# Refused before TensorRT is looked for: these depend on the graph and data alone, so a model that
# can never be a TensorRT engine fails the same way on a CPU machine as on a GPU worker.


@pytest.mark.parametrize(
    ("variant", "operators"),
    [("dynamic-int8", "DynamicQuantizeLinear"), ("fused", "com.microsoft.")],
)
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_onnx_runtime_only_graphs_are_refused(models, tmp_path, variant, operators, precision):
    calibration = write_calibration(models, tmp_path / "calibration.json")
    out = tmp_path / "engine"
    out.mkdir()
    with pytest.raises(EngineError) as error:
        trt_runtime.build(source(models[variant], calibration), target(precision), out)
    message = one_line(error)
    assert "ONNX Runtime-only operators" in message and operators in message
    assert "TensorRT builds from a floating-point or QDQ" in message
    assert list(out.iterdir()) == []


def test_int8_without_calibration_data_is_refused(models, tmp_path):
    with pytest.raises(EngineError) as error:
        trt_runtime.build(source(models["fp32"]), target("int8"), tmp_path / "engine")
    assert "set dataset.calibration_size > 0" in one_line(error)
    assert not (tmp_path / "engine").exists()


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ("not json", "not JSON"),
        ([1, 2], "expected an object"),
        ({"input_ids": [[2, 5, 3]]}, "attention_mask must be"),
        ({"input_ids": [[2, 5, 3], [2, 3]], "attention_mask": [[1, 1, 1], [1, 1]]}, "input_ids must be"),
        ({"input_ids": [[2, 5.5, 3]], "attention_mask": [[1, 1, 1]]}, "input_ids must be"),
        ({"input_ids": [[2, 5, 3]], "attention_mask": [[1, 1]]}, "differ in shape"),
        (
            {"input_ids": [[2] * 40], "attention_mask": [[1] * 40]},
            "exceed target gpu-test's largest sequence",
        ),
    ],
)
def test_malformed_calibration_data_is_refused(models, tmp_path, data, complaint):
    path = tmp_path / "calibration.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(EngineError) as error:
        trt_runtime.build(source(models["fp32"], path), target("int8"), tmp_path / "engine")
    assert complaint in one_line(error)
    assert not (tmp_path / "engine").exists()


def test_the_runtime_pin_admits_the_exact_version_only():
    pin = VersionRange(minimum="10.13.0.35", below=trt_runtime._next_version("10.13.0.35"))
    assert pin.admits("10.13.0.35")
    assert not any(pin.admits(v) for v in ("10.13.0.34", "10.13.0.36", "10.13.1", "10.13", "11.0"))


# Where TensorRT and a CUDA GPU are present ------------------------------------------------------


@pytest.fixture
def gpu():
    """(tensorrt module, compute capability of cuda:0); skips where either is missing."""
    trt = pytest.importorskip(
        "tensorrt",
        reason="TensorRT is not installed here; these tests run on a GPU worker with TensorRT 10 "
        "(they are what verifies tasks/engines/runtimes/tensorrt.py)",
    )
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but PyTorch sees no CUDA GPU here")
    major, minor = torch.cuda.get_device_capability(0)
    return trt, f"{major}.{minor}"


def engine_info(built: Built, chosen: Target, build_source: BuildSource) -> EngineInfo:
    """engine.json's record of a build, as the engine builder writes it next to the plan."""
    return EngineInfo(
        target=chosen.name,
        runtime="tensorrt",
        runtime_version=built.runtime_version,
        precision=chosen.precision,
        profiles=chosen.profiles,
        threads=chosen.threads,
        requires=Requirements.model_validate(built.requires),
        files={},
        entry=built.entry,
        inputs=build_source.inputs,
        labels=LABELS,
        source_onnx_digest=build_source.onnx_digest,
        model_version="tiny/1",
        model_key="tiny",
        built_on={},
        build_seconds=0.0,
    )


def reference(folder: Path, batch: dict[str, np.ndarray]) -> np.ndarray:
    return OnnxPredictor(folder, threads=1).logits(batch)


def test_fp16_engine_reproduces_onnx_runtime(gpu, models, tmp_path):
    trt, capability = gpu
    profiles = [
        {"batch": {"min": 1, "opt": 2, "max": 4}, "sequence": {"min": 1, "opt": 16, "max": SEQUENCE}},
        {"batch": {"min": 5, "opt": 8, "max": 16}, "sequence": {"min": 1, "opt": 32, "max": SEQUENCE}},
    ]
    chosen = target("fp16", capability, profiles)
    build_source = source(models["fp32"])
    out = tmp_path / "engine"
    built = trt_runtime.build(build_source, chosen, out)

    assert built.entry == "model.plan" and built.runtime_version == trt.__version__
    assert sorted(p.name for p in out.iterdir()) == ["model.plan", "timing.cache"]
    assert all((out / name).stat().st_size > 0 for name in ("model.plan", "timing.cache"))
    requires = Requirements.model_validate(built.requires)
    assert requires.compute_capability == capability
    assert requires.runtime_version.admits(trt.__version__)
    assert not requires.runtime_version.admits(trt_runtime._next_version(trt.__version__))
    assert any("unverified" in note for note in built.notes)

    info = engine_info(built, chosen, build_source)
    predictor = trt_runtime.load(out, info, None)
    assert predictor.device.startswith("cuda:0 ")
    for count in (3, 8):  # one batch in each profile
        batch = tokens(models, count)
        got = predictor.predict(batch["input_ids"], batch["attention_mask"])
        assert got.dtype == np.float32 and got.shape == (count, len(LABELS))
        # FP16 arithmetic against ONNX Runtime FP32 on a random tiny model: stated tolerance.
        np.testing.assert_allclose(got, reference(models["fp32"], batch), atol=2e-2)

    batch = tokens(models, 17)
    with pytest.raises(EngineError, match="outside the engine's profiles"):
        predictor.predict(batch["input_ids"], batch["attention_mask"])
    other = info.model_copy(update={"runtime_version": "10.0.0.0"})
    with pytest.raises(EngineError, match="loads only in the version that built it"):
        trt_runtime.load(out, other, None)


def test_int8_engine_calibrates_on_the_calibration_split(gpu, models, tmp_path):
    _, capability = gpu
    chosen = target("int8", capability)
    calibration = write_calibration(models, tmp_path / "calibration.json", count=40)
    build_source = source(models["fp32"], calibration)
    out = tmp_path / "engine"
    built = trt_runtime.build(build_source, chosen, out)

    assert sorted(p.name for p in out.iterdir()) == ["calibration.cache", "model.plan", "timing.cache"]
    assert (out / "calibration.cache").stat().st_size > 0
    assert any("IInt8EntropyCalibrator2 over 5 batches of 8" in note for note in built.notes)

    predictor = trt_runtime.load(out, engine_info(built, chosen, build_source), "cuda:0")
    batch = tokens(models, 8)
    got = predictor.predict(batch["input_ids"], batch["attention_mask"])
    assert np.isfinite(got).all()
    # Calibrated INT8 on a random tiny model, as for ONNX Runtime's static INT8: stated tolerance 0.1.
    np.testing.assert_allclose(got, reference(models["fp32"], batch), atol=0.1)


def test_a_gpu_of_another_architecture_is_refused_before_building(gpu, models, tmp_path):
    _, capability = gpu
    other = f"{int(capability.split('.')[0]) + 1}.0"
    out = tmp_path / "engine"
    with pytest.raises(EngineError) as error:
        trt_runtime.build(source(models["fp32"]), target("fp16", other), out)
    assert f"runs on compute capability {other}" in one_line(error)
    assert not out.exists()

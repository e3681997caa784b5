"""The torch-cuda runtime on the CPU: a tiny BERT built into an exported program, loaded in a fresh
Python process with device="cpu", against the source model's own logits.

Tolerances, relative to the largest source logit: FP32 1e-5 (the same arithmetic, reordered);
FP16 1e-2 and BF16 4e-2 (11 and 8 significant bits, over two layers). The classifier's weights
are scaled up so that logits are of order one and those bounds mean something.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.core.errors import EngineError
from tasks.engines.build import engine_info
from tasks.engines.info import EngineInfo, read_info, write_info
from tasks.engines.runtime import BuildSource, Built
from tasks.engines.runtimes import torch_cuda
from tasks.engines.target import Target, load_target
from tests.factories import LABELS, make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PROFILE = {"batch": {"min": 1, "opt": 4, "max": 8}, "sequence": {"min": 4, "opt": 16, "max": 32}}
RELATIVE_TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 4e-2}
SHAPES = [(1, 7), (5, 7), (1, 16), (5, 16)]  # batch 1 and 5, sequence 7 and 16
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]

# Runs in a fresh interpreter: loads each engine with device="cpu" and predicts the given inputs;
# records refusals as the one line the user would see.
LOAD_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np
from tasks.core.errors import EngineError
from tasks.engines.info import read_info
from tasks.engines.runtimes import torch_cuda

spec = json.loads(Path(sys.argv[1]).read_text())
out = {}
for precision, engine_dir in spec["engines"].items():
    predictor = torch_cuda.load(Path(engine_dir), read_info(Path(engine_dir)), "cpu")
    got = {"device": predictor.device, "logits": []}
    for ids, mask in spec["inputs"]:
        logits = predictor.predict(np.asarray(ids, np.int64), np.asarray(mask, np.int64))
        got["logits"].append({"dtype": str(logits.dtype), "values": logits.tolist()})
    refusals = []
    for batch, sequence in spec["outside"]:
        try:
            predictor.predict(np.ones((batch, sequence), np.int64), np.ones((batch, sequence), np.int64))
            refusals.append(None)
        except EngineError as exc:
            refusals.append(str(exc))
    got["refusals"] = refusals
    out[precision] = got
print(json.dumps(out))
"""


def _target(precision: str) -> Target:
    return Target.model_validate(
        {
            "name": f"tiny-{precision}",
            "runtime": "torch-cuda",
            "precision": precision,
            "requires": {"compute_capability": "9.0"},
            "profiles": [PROFILE],
        }
    )


def _source(checkpoint: Path, torch_model: Path | None) -> BuildSource:
    return BuildSource(
        onnx=checkpoint / "model.onnx",
        onnx_digest="0" * 64,
        torch_model=torch_model,
        tokenizer_dir=checkpoint,
        inputs=INPUTS,
    )


def _info(target: Target, built: Built, source: BuildSource) -> EngineInfo:
    return engine_info(target, built, source, labels=LABELS, model_version="tiny/1", model_key="tiny")


def _inputs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    pairs = []
    for batch, sequence in SHAPES:
        ids = rng.integers(5, 60, (batch, sequence), dtype=np.int64)
        mask = np.ones_like(ids)
        mask[0, sequence // 2 :] = 0  # a padded row: masked positions must not change its logits
        pairs.append((ids, mask))
    return pairs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT whose classifier is scaled so that logits are of order one."""
    from transformers import BertForSequenceClassification

    path = make_checkpoint(tmp_path_factory.mktemp("torch-cuda") / "ckpt", layers=2, hidden=32, heads=2)
    model = BertForSequenceClassification.from_pretrained(path, use_safetensors=True)
    model.classifier.weight.data *= 50
    model.save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def engines(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Built]]:
    built = {}
    for precision in RELATIVE_TOLERANCE:
        out = tmp_path_factory.mktemp(f"engine-{precision}")
        target = _target(precision)
        source = _source(checkpoint, checkpoint)
        result = torch_cuda.build(source, target, out)
        write_info(out, _info(target, result, source))
        built[precision] = (out, result)
    return built


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> list[np.ndarray]:
    """The source model's own logits (FP32, eager attention), independent of the engine."""
    import torch

    from tasks.core.models import load_classifier

    model = load_classifier(checkpoint, attn_implementation="eager")
    with torch.inference_mode():
        return [
            model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
            for ids, mask in _inputs()
        ]


@pytest.fixture(scope="module")
def fresh_process(engines: dict[str, tuple[Path, Built]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    spec = {
        "engines": {precision: str(path) for precision, (path, _) in engines.items()},
        "inputs": [(ids.tolist(), mask.tolist()) for ids, mask in _inputs()],
        "outside": [(1, 33), (9, 8), (2, 3)],
    }
    spec_path = tmp_path_factory.mktemp("spec") / "spec.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(spec_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**_clean_env(), "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.parametrize("precision", list(RELATIVE_TOLERANCE))
def test_fresh_process_reproduces_source_logits(
    precision: str, fresh_process: dict[str, Any], reference: list[np.ndarray]
) -> None:
    got = fresh_process[precision]
    assert got["device"] == "cpu"
    scale = max(float(np.abs(r).max()) for r in reference)
    assert scale > 0.5, "logits must be of order one for the tolerance to mean something"
    for (batch, _sequence), want, logits in zip(SHAPES, reference, got["logits"], strict=True):
        values = np.asarray(logits["values"])
        assert logits["dtype"] == "float32"
        assert values.shape == (batch, len(LABELS))
        assert np.abs(values - want).max() <= RELATIVE_TOLERANCE[precision] * scale, (precision, batch)


def test_half_precision_is_not_fp32(fresh_process: dict[str, Any]) -> None:
    """The FP16 and BF16 engines really compute at lower precision (their logits differ from FP32's)."""
    fp32 = np.concatenate([np.asarray(x["values"]).ravel() for x in fresh_process["fp32"]["logits"]])
    for precision in ("fp16", "bf16"):
        half = np.concatenate([np.asarray(x["values"]).ravel() for x in fresh_process[precision]["logits"]])
        assert np.abs(half - fp32).max() > 0


def test_shapes_outside_the_profile_are_refused(fresh_process: dict[str, Any]) -> None:
    for refusal in fresh_process["fp32"]["refusals"]:
        assert refusal is not None
        assert "outside the engine's profiles (batch 1..8 × sequence 4..32)" in refusal
        assert "\n" not in refusal
    assert fresh_process["fp32"]["refusals"][0].startswith("input of batch 1 and sequence 33")


def test_build_writes_the_program_and_says_what_it_did(engines: dict[str, tuple[Path, Built]]) -> None:
    import torch

    path, built = engines["fp16"]
    assert built.entry == "program.pt2"
    assert (path / "program.pt2").is_file()
    assert built.runtime_version == torch_cuda.version()
    # Programs saved by torch 2.11 and 2.13 load in each other (bench/results/engines-gpu.json):
    # the build adds no requirement to the target's runtime range.
    assert built.requires == {}
    assert any("program schema" in note for note in built.notes)
    if not torch.cuda.is_available():
        assert not (path / torch_cuda.CACHE_FILE).exists()
        assert any("no CUDA GPU on the build machine: nothing was compiled" in note for note in built.notes)


def test_built_archive_needs_no_unpickling(engines: dict[str, tuple[Path, Built]]) -> None:
    path, _ = engines["fp32"]
    with zipfile.ZipFile(path / "program.pt2") as archive:
        pickled = [i.filename for i in archive.infolist() if i.filename.endswith(".pt") and i.file_size]
        configs = [
            json.loads(archive.read(n))["config"] for n in archive.namelist() if n.endswith("_config.json")
        ]
    assert pickled == []
    assert configs and all(not meta["use_pickle"] for config in configs for meta in config.values())
    torch_cuda.refuse_pickled_payloads(path / "program.pt2")  # passes


def _rewrite(source: Path, dest: Path, change: Any) -> Path:
    """A copy of a .pt2 archive with `change(name, data) -> data` applied to every entry."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(dest, "w") as new:
        for item in old.infolist():
            new.writestr(item, change(item.filename, old.read(item)))
    return dest


def test_archives_with_pickled_payloads_are_refused(
    engines: dict[str, tuple[Path, Built]], tmp_path: Path
) -> None:
    path, built = engines["fp32"]
    info = read_info(path)

    def pickled_weight(name: str, data: bytes) -> bytes:
        if not name.endswith("_weights_config.json"):
            return data
        config = json.loads(data)
        first = next(iter(config["config"]))
        config["config"][first]["use_pickle"] = True
        return json.dumps(config).encode()

    def sample_inputs(name: str, data: bytes) -> bytes:
        return b"not empty" if "/data/sample_inputs/" in name else data

    for change, expected in (
        (pickled_weight, "is stored pickled"),
        (sample_inputs, "holds a pickled payload"),
    ):
        engine = tmp_path / change.__name__
        engine.mkdir()
        _rewrite(path / built.entry, engine / built.entry, change)
        with pytest.raises(EngineError, match=expected):
            torch_cuda.load(engine, info, "cpu")


def test_missing_torch_model_is_refused_in_one_line(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineError) as refused:
        torch_cuda.build(_source(checkpoint, None), _target("fp16"), tmp_path / "engine")
    message = str(refused.value)
    assert message.startswith("torch-cuda engines are built from the PyTorch model behind the ONNX; ")
    assert "\n" not in message
    assert not (tmp_path / "engine").exists()


def test_load_defaults_to_cuda_and_says_how_to_check_on_cpu(engines: dict[str, tuple[Path, Built]]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    path, _ = engines["fp32"]
    with pytest.raises(EngineError) as refused:
        torch_cuda.load(path, read_info(path), None)
    message = str(refused.value)
    assert "needs a CUDA GPU and none is available here" in message
    assert "pass device='cpu' for a functional check" in message
    assert "\n" not in message


def test_warm_up_covers_the_serving_path(engines: dict[str, tuple[Path, Built]]) -> None:
    """After the warm-up, requests of any accepted shape compile nothing more (on the GPU a compile
    on a request costs seconds). A real torch.compile, with a backend that needs no C++ compiler."""
    import torch
    from torch._dynamo.utils import counters

    path, _ = engines["fp32"]
    program = torch.export.load(path / "program.pt2").module()
    compiled = torch.compile(program, dynamic=True, backend="aot_eager")
    predictor = torch_cuda.ProgramPredictor(compiled, "cpu", _target("fp32").profiles, compiled=False)
    torch._dynamo.reset()
    counters.clear()
    predictor.warm_up()
    warmed = counters["stats"]["unique_graphs"]
    assert warmed >= 1
    for ids, mask in _inputs():
        predictor.predict(ids, mask)
    assert counters["stats"]["unique_graphs"] == warmed
    # A caller in inference mode (as servers and benchmarks often are) must not compile it again.
    with torch.inference_mode():
        for ids, mask in _inputs():
            predictor.predict(ids, mask)
    assert counters["stats"]["unique_graphs"] == warmed


def test_buckets_cover_the_h100_profile() -> None:
    target = load_target(ROOT / "targets" / "h100.yaml")
    profile = target.profiles[0]
    assert torch_cuda.bucket_sizes(profile.batch) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert torch_cuda.bucket_sizes(profile.sequence) == [8, 16, 32, 64]
    assert torch_cuda.padded_shape(target.profiles, 5, 9) == (8, 16)
    assert torch_cuda.padded_shape(target.profiles, 256, 64) == (256, 64)
    with pytest.raises(EngineError, match="outside the engine's profiles"):
        torch_cuda.padded_shape(target.profiles, 1, 7)


def test_module_imports_without_torch_airflow_or_mlflow() -> None:
    probe = (
        "import sys, tasks.engines.runtimes.torch_cuda; "
        "print(sorted(m for m in ('torch', 'transformers', 'airflow', 'mlflow') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**_clean_env(), "PYTHONPATH": str(ROOT)},
        check=True,
    )
    assert done.stdout.strip() == "[]"

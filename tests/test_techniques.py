"""Techniques on tiny models built in the test: ONNX export and dynamic INT8 quantization."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tasks.errors import ConfigError, TechniqueError
from tasks.evaluate import OnnxPredictor, model_size_bytes
from tasks.techniques import TECHNIQUES, ModelRef, get_technique
from tasks.techniques.onnx_export import OnnxExportConfig, export_onnx
from tasks.techniques.onnx_quantize import DynamicInt8Config, quantize_dynamic_int8
from tests.factories import make_checkpoint

TEXTS = ["i love this great car", "i hate the bad traffic", "the car is a car", "good"]


def torch_logits(folder: Path, texts: list[str]) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()


def onnx_logits(folder: Path, texts: list[str]) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = {k: np.asarray(v) for k, v in tokenizer(texts, padding=True, return_tensors="np").items()}
    return OnnxPredictor(folder, threads=1).logits(batch)


@pytest.fixture
def exported(tmp_path) -> ModelRef:
    source = make_checkpoint(tmp_path / "hf", layers=2, hidden=64, heads=4)
    out = tmp_path / "onnx"
    out.mkdir()
    return export_onnx(ModelRef(path=source, format="hf"), OnnxExportConfig(), out)


def test_registry_names_what_recipes_use():
    assert {"export.onnx", "quantize.onnx_dynamic_int8"} <= set(TECHNIQUES)
    with pytest.raises(ConfigError, match=r"unknown technique 'prune\.magic'; allowed: "):
        get_technique("prune.magic")


def test_export_matches_pytorch_with_dynamic_axes(exported, tmp_path):
    graph = onnx.load(str(exported.path / "model.onnx"))
    onnx.checker.check_model(graph)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]
    assert (exported.path / "tokenizer.json").exists() and (exported.path / "config.json").exists()
    # Batch and sequence lengths other than the export sample's, both ways: within 1e-4.
    for texts in (TEXTS, TEXTS[:1], [" ".join(TEXTS * 3)]):
        expected = torch_logits(tmp_path / "hf", texts)
        np.testing.assert_allclose(onnx_logits(exported.path, texts), expected, atol=1e-4)


def test_dynamic_int8_is_smaller_and_close(exported, tmp_path):
    out = tmp_path / "int8"
    out.mkdir()
    quantized = quantize_dynamic_int8(exported, DynamicInt8Config(), out)
    assert quantized.format == "onnx"
    assert model_size_bytes(out) < 0.6 * model_size_bytes(exported.path)
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops
    reference = onnx_logits(exported.path, TEXTS)
    # INT8 weights on a random tiny model: logits move, but by little (stated tolerance 0.05).
    np.testing.assert_allclose(onnx_logits(out, TEXTS), reference, atol=0.05)


def test_quantize_rejects_a_folder_without_a_graph(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TechniqueError, match=r"quantize\.onnx_dynamic_int8 failed"):
        quantize_dynamic_int8(ModelRef(path=empty, format="onnx"), DynamicInt8Config(), out)


@pytest.mark.parametrize(
    ("config", "field"),
    [(OnnxExportConfig, {"opset": 30}), (DynamicInt8Config, {"weight_type": "int4"})],
)
def test_configs_reject_out_of_range_values(config, field):
    with pytest.raises(ValueError, match=next(iter(field))):
        config.model_validate(field)

"""Techniques on tiny models built in the test: ONNX export and dynamic INT8 quantization."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tasks.compress.technique import TechniqueContext
from tasks.compress.techniques import TECHNIQUES, get_technique
from tasks.compress.techniques.onnx_export import OnnxExportConfig, export_onnx
from tasks.compress.techniques.onnx_fp16 import Fp16Config, quantize_fp16
from tasks.compress.techniques.onnx_optimize import OrtFusionConfig, ort_fusions
from tasks.compress.techniques.onnx_quantize import (
    DynamicInt8Config,
    StaticInt8Config,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from tasks.core.errors import ConfigError, TechniqueError
from tasks.core.inference import OnnxPredictor
from tasks.core.models import ModelRef, model_size_bytes
from tests.factories import make_checkpoint
from tests.tiny import make_context

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
def context(tmp_path) -> TechniqueContext:
    return make_context(tmp_path / "data", make_checkpoint(tmp_path / "hf", layers=2, hidden=64, heads=4))


@pytest.fixture
def exported(tmp_path, context) -> ModelRef:
    out = tmp_path / "onnx"
    out.mkdir()
    return export_onnx(context.teacher, OnnxExportConfig(), out, context)


def out_dir(tmp_path, name: str):
    path = tmp_path / name
    path.mkdir()
    return path


def test_registry_names_what_recipes_use():
    assert {"export.onnx", "quantize.onnx_dynamic_int8"} <= set(TECHNIQUES)
    with pytest.raises(ConfigError, match=r"unknown technique 'prune\.magic'; allowed: "):
        get_technique("prune.magic")


def test_export_matches_pytorch_with_dynamic_axes(exported, context):
    graph = onnx.load(str(exported.path / "model.onnx"))
    onnx.checker.check_model(graph)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]
    assert (exported.path / "tokenizer.json").exists() and (exported.path / "config.json").exists()
    # Batch and sequence lengths other than the export sample's, both ways: within 1e-4.
    for texts in (TEXTS, TEXTS[:1], [" ".join(TEXTS * 3)]):
        expected = torch_logits(context.teacher.path, texts)
        np.testing.assert_allclose(onnx_logits(exported.path, texts), expected, atol=1e-4)


def test_dynamic_int8_is_smaller_and_close(exported, tmp_path, context):
    out = out_dir(tmp_path, "int8")
    quantized = quantize_dynamic_int8(exported, DynamicInt8Config(), out, context)
    assert quantized.format == "onnx"
    assert model_size_bytes(out) < 0.6 * model_size_bytes(exported.path)
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops
    reference = onnx_logits(exported.path, TEXTS)
    # INT8 weights on a random tiny model: logits move, but by little (stated tolerance 0.05).
    np.testing.assert_allclose(onnx_logits(out, TEXTS), reference, atol=0.05)


def test_quantize_rejects_a_folder_without_a_graph(tmp_path, context):
    empty = ModelRef(path=out_dir(tmp_path, "empty"), format="onnx")
    with pytest.raises(TechniqueError, match=r"quantize\.onnx_dynamic_int8 failed"):
        quantize_dynamic_int8(empty, DynamicInt8Config(), out_dir(tmp_path, "out"), context)


def test_fusions_fuse_attention_and_layer_norm_and_keep_outputs(exported, tmp_path, context):
    out = out_dir(tmp_path, "fused")
    ort_fusions(exported, OrtFusionConfig(), out, context)
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops
    assert "Softmax" not in ops
    for texts in (TEXTS, TEXTS[:1]):
        np.testing.assert_allclose(onnx_logits(out, texts), onnx_logits(exported.path, texts), atol=1e-4)


# Entropy calibration is left out here: on a random tiny model some activations are constant,
# and its histograms (ORT) refuse a zero range; it runs on real models.
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_int8_is_qdq_calibrated_and_close(exported, tmp_path, context, method):
    out = out_dir(tmp_path, f"static-{method}")
    quantize_static_int8(exported, StaticInt8Config(method=method, calibration_examples=16), out, context)
    ops = [node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    # Encoder weights become INT8; embeddings, pooler and classifier (a third here) stay FP32.
    assert model_size_bytes(out) < 0.7 * model_size_bytes(exported.path)
    # Calibrated INT8 activations and weights on a random tiny model: stated tolerance 0.1.
    np.testing.assert_allclose(onnx_logits(out, TEXTS), onnx_logits(exported.path, TEXTS), atol=0.1)


def test_static_int8_needs_calibration_examples(exported, tmp_path):
    context = make_context(tmp_path / "nocalib", exported.path, calibration=0)
    with pytest.raises(TechniqueError, match=r"set dataset\.calibration_size > 0"):
        quantize_static_int8(exported, StaticInt8Config(), out_dir(tmp_path, "out"), context)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (OnnxExportConfig, {"opset": 30}),
        (DynamicInt8Config, {"weight_type": "int4"}),
        (StaticInt8Config, {"method": "kl"}),
        (StaticInt8Config, {"calibration_examples": 2}),
        (OrtFusionConfig, {"attention": "sometimes"}),
        (Fp16Config, {"keep_fp32_ops": "Softmax"}),
    ],
)
def test_configs_reject_out_of_range_values(config, field):
    with pytest.raises(ValueError, match=next(iter(field))):
        config.model_validate(field)


@pytest.mark.parametrize("quantize", ["dynamic", "static"])
def test_fused_graph_quantizes(exported, tmp_path, context, quantize):
    fused = ort_fusions(exported, OrtFusionConfig(), out_dir(tmp_path, "fused"), context)
    out = out_dir(tmp_path, f"fused-{quantize}")
    if quantize == "dynamic":
        quantize_dynamic_int8(fused, DynamicInt8Config(per_channel=True), out, context)
    else:
        quantize_static_int8(fused, StaticInt8Config(calibration_examples=16), out, context)
    assert model_size_bytes(out) < 0.7 * model_size_bytes(fused.path)
    np.testing.assert_allclose(onnx_logits(out, TEXTS), onnx_logits(exported.path, TEXTS), atol=0.1)


@pytest.mark.parametrize("fused", [False, True])
def test_fp16_halves_the_weights_and_keeps_io_types(exported, tmp_path, context, fused):
    source = (
        ort_fusions(exported, OrtFusionConfig(), out_dir(tmp_path, "fused"), context) if fused else exported
    )
    out = out_dir(tmp_path, "fp16")
    quantize_fp16(source, Fp16Config(), out, context)
    graph = onnx.load(str(out / "model.onnx"))
    weights = [t for t in graph.graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert model_size_bytes(out) < 0.6 * model_size_bytes(source.path)
    assert [i.type.tensor_type.elem_type for i in graph.graph.input] == [onnx.TensorProto.INT64] * len(
        graph.graph.input
    )
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # Half precision carries about three decimal digits: stated tolerance 1e-2 on the logits.
    np.testing.assert_allclose(onnx_logits(out, TEXTS), onnx_logits(exported.path, TEXTS), atol=1e-2)

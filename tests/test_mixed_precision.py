"""quantize.mixed_precision on tiny models: the operator groups, the sensitivity pass, and which
groups stay FP32 and why."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tasks.compress.technique import TechniqueContext
from tasks.compress.techniques.mixed_precision import (
    MixedPrecisionConfig,
    operator_groups,
    quantize_mixed_precision,
    quantize_nodes,
)
from tasks.compress.techniques.onnx_export import OnnxExportConfig, export_onnx
from tasks.compress.techniques.onnx_optimize import OrtFusionConfig, ort_fusions
from tasks.core.errors import TechniqueError
from tasks.core.models import ONNX_FILE, ModelRef
from tasks.intake.data import load_split
from tests.factories import make_checkpoint
from tests.test_techniques import onnx_logits
from tests.tiny import make_context

GROUPS = ["embeddings", "layer.0 attention", "layer.0 ffn", "layer.1 attention", "layer.1 ffn", "head"]
TEXTS = ["i love this great car", "i hate the bad traffic", "the car is a car", "good"]


def folder(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def with_outlier(context: TechniqueContext) -> None:
    """Layer 1's first feed-forward matrix gets one weight a thousand times its largest: quantized
    with one scale per tensor, every other weight of that matrix rounds to zero. The head is
    scaled up and centred on the calibration texts, so that the random model's predictions depend
    on its input as a trained model's do."""
    checkpoint = context.teacher.path
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    weight = model.bert.encoder.layer[1].intermediate.dense.weight
    texts = [e.text for e in load_split(context.split_dir, "calibration")]
    with torch.no_grad():
        weight[0, 0] = 1000 * weight.abs().max()
        model.bert.pooler.dense.weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
        model.classifier.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
        encoded = AutoTokenizer.from_pretrained(checkpoint)(texts, padding=True, return_tensors="pt")
        model.classifier.bias -= model(**encoded).logits.mean(0)
    model.save_pretrained(checkpoint, safe_serialization=True)


@pytest.fixture
def context(tmp_path) -> TechniqueContext:
    context = make_context(
        tmp_path / "data", make_checkpoint(tmp_path / "hf", layers=2, hidden=64, heads=4), calibration=40
    )
    with_outlier(context)
    return context


@pytest.fixture
def exported(tmp_path, context) -> ModelRef:
    return export_onnx(context.teacher, OnnxExportConfig(), folder(tmp_path, "onnx"), context)


def test_groups_are_each_layers_attention_and_ffn_and_the_head_fused_or_not(exported, tmp_path, context):
    plain = operator_groups(onnx.load(str(exported.path / ONNX_FILE)).graph)
    fused_model = ort_fusions(exported, OrtFusionConfig(), folder(tmp_path, "fused"), context)
    fused = operator_groups(onnx.load(str(fused_model.path / ONNX_FILE)).graph)
    assert [g.name for g in plain] == [g.name for g in fused] == GROUPS
    # Unfused: three tables, Q, K, V and the output projection; fused: EmbedLayerNormalization,
    # one Attention node and the projection; the head, the pooler's and the classifier's Gemm.
    assert [len(g.nodes) for g in plain] == [3, 4, 2, 4, 2, 2]
    assert [len(g.nodes) for g in fused] == [1, 2, 2, 2, 2, 2]
    assert fused[-1].nodes == ["/bert/pooler/dense/Gemm_MatMul", "/classifier/Gemm_MatMul"]
    assert any(n.startswith("Attention") for n in fused[3].nodes)


def test_the_sensitive_group_stays_fp32_and_the_report_says_why(exported, tmp_path, context):
    config = MixedPrecisionConfig(min_agreement=0.95, per_channel=False, calibration_examples=40)
    result = quantize_mixed_precision(exported, config, folder(tmp_path, "mixed"), context)

    report = json.loads((result.path / "technique_report.json").read_text())
    groups = {g["name"]: g for g in report["groups"]}
    assert list(groups) == GROUPS
    # The outlier's matrix first, then the head and the embedding table (the random head's weights
    # are wide and the table has one scale for its whole range), most sensitive first.
    assert report["full_precision"] == ["layer.1 ffn", "head", "embeddings"]
    ranked = sorted(groups.values(), key=lambda g: (g["agreement"], -g["logit_mse"]))
    assert [g["name"] for g in ranked[:3]] == report["full_precision"]
    kept = groups["layer.1 ffn"]
    assert kept["precision"] == "fp32" and "kept FP32 to reach 0.95" in kept["why"]
    assert kept["agreement"] < 0.95
    assert all(groups[name]["precision"] == "int8" for name in GROUPS[1:4])
    assert all(groups[name]["why"].startswith("agreement ") for name in GROUPS)
    # Every group quantized missed the target; then one group back in FP32 at a time.
    trials = report["trials"]
    assert [t["full_precision"] for t in trials] == [report["full_precision"][:n] for n in range(4)]
    agreements = [t["agreement"] for t in trials]
    assert agreements == sorted(agreements) and agreements[2] < 0.95 <= agreements[3] == report["agreement"]

    graph = onnx.load(str(result.path / ONNX_FILE)).graph
    float_matmuls = {n.name for n in graph.node if n.op_type == "MatMul"}
    assert "/bert/encoder/layer.1/intermediate/dense/MatMul" in float_matmuls
    assert "/bert/encoder/layer.0/intermediate/dense/MatMul" not in float_matmuls
    assert any(n.op_type == "MatMulInteger" for n in graph.node)
    np.testing.assert_allclose(onnx_logits(result.path, TEXTS), onnx_logits(exported.path, TEXTS), atol=0.5)
    assert (result.path / "tokenizer.json").exists()


def test_with_every_group_in_fp32_the_graph_comes_out_unquantized(exported, tmp_path):
    # quantize_dynamic reads an empty node list as "every node": the step must not.
    source = exported.path / ONNX_FILE
    config = MixedPrecisionConfig()
    untouched = quantize_nodes(source, [], tmp_path / "none", config)
    assert (untouched / ONNX_FILE).read_bytes() == source.read_bytes()
    groups = operator_groups(onnx.load(str(source)).graph)
    one = quantize_nodes(source, groups[-1].nodes, tmp_path / "head", config)
    quantized = [n for n in onnx.load(str(one / ONNX_FILE)).graph.node if n.op_type == "MatMulInteger"]
    assert len(quantized) == len(groups[-1].nodes) == 2


def test_a_target_out_of_reach_fails_naming_what_to_change(exported, tmp_path, context):
    config = MixedPrecisionConfig(min_agreement=0.95, max_full_precision=0, per_channel=False)
    out = folder(tmp_path, "mixed")
    with pytest.raises(TechniqueError, match=r"with 0 of 6 groups in FP32 .*allowed: a lower min_agreement"):
        quantize_mixed_precision(exported, config, out, context)
    assert not (out / ONNX_FILE).exists()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"min_agreement": 0}, r"min_agreement\n.*greater than 0"),
        ({"min_agreement": 1.5}, r"min_agreement\n.*less than or equal to 1"),
        ({"max_full_precision": -0.1}, r"max_full_precision\n.*greater than or equal to 0"),
        ({"groups": "layer"}, r"groups\n.*Extra inputs are not permitted"),
    ],
)
def test_config_names_the_field_and_what_is_allowed(values, message):
    with pytest.raises(ValidationError, match=message):
        MixedPrecisionConfig.model_validate(values)

"""Pruning techniques and recovery fine-tuning on tiny BERTs built in the test."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForSequenceClassification

from tasks.compress.technique import TechniqueContext
from tasks.compress.techniques import TECHNIQUES
from tasks.compress.techniques.onnx_export import OnnxExportConfig, export_onnx
from tasks.compress.techniques.onnx_optimize import OrtFusionConfig, ort_fusions
from tasks.compress.techniques.onnx_quantize import DynamicInt8Config, quantize_dynamic_int8
from tasks.compress.techniques.prune import (
    FfnPruningConfig,
    HeadPruningConfig,
    LayerPruningConfig,
    MagnitudePruningConfig,
    RecoveryConfig,
    SemiStructuredConfig,
    finetune_recover,
    prune_ffn,
    prune_heads,
    prune_layers,
    prune_magnitude,
    prune_semi_structured,
)
from tasks.core.errors import TechniqueError
from tasks.core.models import ATTENTION_PROJECTIONS, FFN_PROJECTIONS, PROJECTIONS, ModelRef, load_classifier
from tests.factories import make_checkpoint
from tests.test_techniques import TEXTS, onnx_logits, torch_logits
from tests.tiny import make_context

HIDDEN, HEADS, HEAD_DIM = 32, 4, 8
# Parameters one head holds: query/key/value rows with their biases, output-projection columns.
PER_HEAD = 3 * (HEAD_DIM * HIDDEN + HEAD_DIM) + HIDDEN * HEAD_DIM


def stock(folder: Path):
    """The folder as every stock consumer (evaluate, export.onnx) loads it."""
    return AutoModelForSequenceClassification.from_pretrained(
        folder, use_safetensors=True, trust_remote_code=False
    ).eval()


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def report(folder: Path) -> dict:
    return json.loads((folder / "technique_report.json").read_text())


def out_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def assert_onnx_matches(tmp_path: Path, context: TechniqueContext, model: ModelRef) -> None:
    """export.onnx of the folder runs in ONNX Runtime and agrees with PyTorch within 1e-4."""
    exported = export_onnx(model, OnnxExportConfig(), out_dir(tmp_path, f"onnx-{model.path.name}"), context)
    np.testing.assert_allclose(onnx_logits(exported.path, TEXTS), torch_logits(model.path, TEXTS), atol=1e-4)


def edit(folder: Path, change) -> None:
    """Rewrite the checkpoint in `folder` after `change(model)` (under no_grad)."""
    model = stock(folder)
    with torch.no_grad():
        change(model)
    model.save_pretrained(folder)


@pytest.fixture
def context(tmp_path) -> TechniqueContext:
    checkpoint = make_checkpoint(tmp_path / "hf", layers=2, hidden=HIDDEN, heads=HEADS)
    return make_context(tmp_path / "data", checkpoint)


def test_techniques_are_registered_with_their_data_needs():
    expected = {
        "prune.heads": True,
        "prune.ffn": True,
        "prune.layers": False,
        "prune.magnitude": False,
        "prune.semi_structured": False,
        "finetune.recover": True,
        "distill.student": True,
    }
    assert {name: TECHNIQUES[name].uses_data for name in expected} == expected
    assert all(TECHNIQUES[name].accepts == ("hf",) and TECHNIQUES[name].produces == "hf" for name in expected)


def test_head_pruning_removes_the_heads_that_do_not_matter(tmp_path, context):
    # Zero the value projection of head 2 in layer 0 and head 1 in layer 1: those heads add
    # nothing to the output, so their mask gradient, hence their importance, is exactly 0.
    def kill(model):
        layers = model.bert.encoder.layer
        for layer, head in ((0, 2), (1, 1)):
            value = layers[layer].attention.self.value
            value.weight[head * HEAD_DIM : (head + 1) * HEAD_DIM] = 0
            value.bias[head * HEAD_DIM : (head + 1) * HEAD_DIM] = 0

    edit(context.teacher.path, kill)
    before = torch_logits(context.teacher.path, TEXTS)
    config = HeadPruningConfig(heads_to_prune=1, importance_batches=2, batch_size=16)
    pruned = prune_heads(context.teacher, config, out_dir(tmp_path, "heads"), context)

    found = report(pruned.path)
    assert found["pruned_heads"] == [[2], [1]]
    importance = np.array(found["head_importance"])
    assert importance[0, 2] == 0 and importance[1, 1] == 0
    assert (np.delete(importance, [2, 4 + 1]) > 0).all()
    config_json = json.loads((pruned.path / "config.json").read_text())
    assert config_json["slimline_pruned_heads"] == [[2], [1]]

    # Stock loading: stock shapes, and the same outputs (the removed heads contributed nothing).
    np.testing.assert_allclose(torch_logits(pruned.path, TEXTS), before, atol=1e-5)
    # Physical removal: one head fewer per layer, same outputs.
    small = load_classifier(pruned.path, remove_pruned_heads=True)
    attention = small.bert.encoder.layer[0].attention
    assert attention.self.query.weight.shape == (3 * HEAD_DIM, HIDDEN)
    assert attention.self.value.bias.shape == (3 * HEAD_DIM,)
    assert attention.output.dense.weight.shape == (HIDDEN, 3 * HEAD_DIM)
    assert params(stock(pruned.path)) - params(small) == 2 * PER_HEAD
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(pruned.path)(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        np.testing.assert_allclose(small(**encoded).logits.numpy(), before, atol=1e-5)
    assert_onnx_matches(tmp_path, context, pruned)
    # export.onnx slices the removed heads out: the graph's projections are the smaller ones.
    import onnx

    graph = onnx.load(str(tmp_path / f"onnx-{pruned.path.name}" / "model.onnx")).graph
    shapes = [tuple(t.dims) for t in graph.initializer if len(t.dims) == 2]
    assert shapes.count((HIDDEN, 3 * HEAD_DIM)) == 2 * 3  # q, k, v of both layers
    assert shapes.count((3 * HEAD_DIM, HIDDEN)) == 2  # attention output of both layers
    assert shapes.count((HIDDEN, HIDDEN)) == 1  # the pooler only
    # Transformer fusions see the narrower attention and keep the outputs.
    exported = ModelRef(path=tmp_path / f"onnx-{pruned.path.name}", format="onnx")
    fused = ort_fusions(exported, OrtFusionConfig(), out_dir(tmp_path, "fused"), context)
    attention = [n for n in onnx.load(str(fused.path / "model.onnx")).graph.node if n.op_type == "Attention"]
    assert [
        onnx.helper.get_attribute_value(a) for n in attention for a in n.attribute if a.name == "num_heads"
    ] == [
        3,
        3,
    ]
    # Dynamic INT8 turns it into QAttention, which checks the head count against the width.
    quantized = quantize_dynamic_int8(
        fused, DynamicInt8Config(per_channel=True), out_dir(tmp_path, "q"), context
    )
    assert np.abs(onnx_logits(quantized.path, TEXTS) - before).max() < 0.1
    np.testing.assert_allclose(onnx_logits(fused.path, TEXTS), before, atol=1e-4)


def test_head_pruning_again_keeps_earlier_removals_and_checks_the_count(tmp_path, context):
    config = HeadPruningConfig(heads_to_prune=1, importance_batches=1)
    first = prune_heads(context.teacher, config, out_dir(tmp_path, "first"), context)
    second = prune_heads(first, HeadPruningConfig(heads_to_prune=2), out_dir(tmp_path, "second"), context)
    earlier, now = report(first.path)["pruned_heads"], report(second.path)["pruned_heads"]
    assert all(len(row) == 3 and set(old) < set(row) for old, row in zip(earlier, now, strict=True))
    query = load_classifier(second.path, remove_pruned_heads=True).bert.encoder.layer[1].attention.self.query
    assert query.weight.shape == (HEAD_DIM, HIDDEN)
    with pytest.raises(
        TechniqueError, match=r"heads_to_prune=1 but the model has 1 heads per layer; allowed: none"
    ):
        prune_heads(second, HeadPruningConfig(heads_to_prune=1), out_dir(tmp_path, "third"), context)
    with pytest.raises(TechniqueError, match=r"heads_to_prune=4 but the model has 4 heads .*allowed: 1\.\.3"):
        prune_heads(context.teacher, HeadPruningConfig(heads_to_prune=4), out_dir(tmp_path, "x"), context)


def test_ffn_pruning_shrinks_every_layer_and_reloads(tmp_path, context):
    original = stock(context.teacher.path)
    pruned = prune_ffn(
        context.teacher,
        FfnPruningConfig(keep_fraction=0.25, importance_batches=2),
        out_dir(tmp_path, "ffn"),
        context,
    )
    reloaded = stock(pruned.path)
    assert reloaded.config.intermediate_size == 16
    for layer in reloaded.bert.encoder.layer:
        assert layer.intermediate.dense.weight.shape == (16, HIDDEN)
        assert layer.output.dense.weight.shape == (HIDDEN, 16)
    removed = 64 - 16
    assert params(original) - params(reloaded) == 2 * (removed * (HIDDEN + 1) + removed * HIDDEN)
    assert report(pruned.path) == {"intermediate_size_before": 64, "intermediate_size": 16}
    assert_onnx_matches(tmp_path, context, pruned)


def test_ffn_pruning_drops_the_neuron_that_does_not_matter(tmp_path, context):
    # Neuron 5's output column is zero in both layers: its importance is 0, so keeping 63 of 64
    # neurons must drop exactly it and keep the others' weights unchanged.
    def kill(model):
        for layer in model.bert.encoder.layer:
            layer.output.dense.weight[:, 5] = 0

    edit(context.teacher.path, kill)
    original = stock(context.teacher.path)
    pruned = prune_ffn(
        context.teacher,
        FfnPruningConfig(keep_fraction=63 / 64, importance_batches=1),
        out_dir(tmp_path, "f"),
        context,
    )
    kept = [j for j in range(64) if j != 5]
    for before, after in zip(original.bert.encoder.layer, stock(pruned.path).bert.encoder.layer, strict=True):
        torch.testing.assert_close(after.intermediate.dense.weight, before.intermediate.dense.weight[kept])
        torch.testing.assert_close(after.output.dense.weight, before.output.dense.weight[:, kept])


def test_layer_pruning_keeps_the_chosen_layers(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "deep", layers=4, hidden=HIDDEN, heads=HEADS)
    context = make_context(tmp_path / "data", checkpoint)
    original = stock(checkpoint)
    pruned = prune_layers(
        context.teacher, LayerPruningConfig(keep=[0, 2]), out_dir(tmp_path, "layers"), context
    )
    reloaded = stock(pruned.path)
    assert reloaded.config.num_hidden_layers == 2 and len(reloaded.bert.encoder.layer) == 2
    per_layer = sum(p.numel() for p in original.bert.encoder.layer[0].parameters())
    assert params(original) - params(reloaded) == 2 * per_layer
    torch.testing.assert_close(
        reloaded.bert.encoder.layer[1].output.dense.weight, original.bert.encoder.layer[2].output.dense.weight
    )
    assert json.loads((pruned.path / "config.json").read_text())["slimline_source_layers"] == [0, 2]
    assert_onnx_matches(tmp_path, context, pruned)
    with pytest.raises(
        TechniqueError, match=r"keep=\[0, 4\] names layer 4 but the model has 4 layers; allowed: 0\.\.3"
    ):
        prune_layers(context.teacher, LayerPruningConfig(keep=[0, 4]), out_dir(tmp_path, "bad"), context)


@pytest.mark.parametrize("sparsity", [0.3, 0.7])
def test_magnitude_pruning_reaches_its_sparsity(tmp_path, context, sparsity):
    pruned = prune_magnitude(
        context.teacher, MagnitudePruningConfig(sparsity=sparsity), out_dir(tmp_path, "sparse"), context
    )
    assert abs(report(pruned.path)["sparsity"] - sparsity) <= 0.01
    weights = [m.weight for m in stock(pruned.path).bert.encoder.modules() if isinstance(m, torch.nn.Linear)]
    measured = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert abs(measured - sparsity) <= 0.01
    # Not pruned: embeddings, pooler and classifier keep every weight.
    assert int((stock(pruned.path).classifier.weight == 0).sum()) == 0
    assert_onnx_matches(tmp_path, context, pruned)


def projection_weights(folder: Path, names: tuple[str, ...]) -> list[torch.Tensor]:
    model = stock(folder)
    return [
        layer.get_submodule(name).weight.detach().clone()
        for layer in model.bert.encoder.layer
        for name in names
    ]


def assert_two_of_four(weight: torch.Tensor) -> None:
    groups = weight.reshape(weight.shape[0], -1, 4)
    assert bool(((groups == 0).sum(dim=-1) >= 2).all())


def test_semi_structured_pruning_leaves_two_of_every_four_weights(tmp_path, context):
    before = projection_weights(context.teacher.path, FFN_PROJECTIONS)
    pruned = prune_semi_structured(
        context.teacher, SemiStructuredConfig(targets="attention"), out_dir(tmp_path, "24"), context
    )
    for weight, original in zip(
        projection_weights(pruned.path, ATTENTION_PROJECTIONS),
        projection_weights(context.teacher.path, ATTENTION_PROJECTIONS),
        strict=True,
    ):
        assert_two_of_four(weight)
        # The two kept in each group are the two of largest magnitude, unchanged.
        kept = weight != 0
        assert torch.equal(weight[kept], original[kept])
        groups = original.abs().reshape(original.shape[0], -1, 4)
        dropped_max = groups.masked_fill(kept.reshape(groups.shape), -1).amax(dim=-1)
        kept_min = groups.masked_fill(~kept.reshape(groups.shape), float("inf")).amin(dim=-1)
        assert bool((dropped_max <= kept_min).all())
    # Not targeted: the feed-forward projections are untouched.
    for weight, original in zip(projection_weights(pruned.path, FFN_PROJECTIONS), before, strict=True):
        assert torch.equal(weight, original)
    found = report(pruned.path)
    assert found["pattern"] == "2:4" and found["sparsity"] == 0.5
    assert_onnx_matches(tmp_path, context, pruned)


def test_recovery_with_keep_zeros_trains_the_kept_weights_and_keeps_the_pattern(tmp_path, context):
    pruned = prune_semi_structured(context.teacher, SemiStructuredConfig(), out_dir(tmp_path, "24"), context)
    sparse = projection_weights(pruned.path, PROJECTIONS)
    config = RecoveryConfig(epochs=1, max_examples=64, batch_size=16, learning_rate=1e-3)
    kept = finetune_recover(
        pruned, config.model_copy(update={"keep_zeros": True}), out_dir(tmp_path, "k"), context
    )
    for weight, start in zip(projection_weights(kept.path, PROJECTIONS), sparse, strict=True):
        assert torch.equal(weight == 0, start == 0)  # the same zeros, no more, no fewer
        assert not torch.equal(weight, start)  # and the kept weights trained
    # Without it AdamW's updates fill the zeros in: the pattern is lost.
    free = finetune_recover(pruned, config, out_dir(tmp_path, "f"), context)
    assert any(
        not bool(((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all())
        for w in projection_weights(free.path, PROJECTIONS)
    )


def test_semi_structured_pruning_needs_inputs_in_groups_of_four(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "odd", layers=1, hidden=30, heads=2)
    context = make_context(tmp_path / "data", checkpoint)
    with pytest.raises(
        TechniqueError, match=r"has 30 inputs, not a multiple of 4; the 2:4 pattern needs groups"
    ):
        prune_semi_structured(context.teacher, SemiStructuredConfig(), out_dir(tmp_path, "bad"), context)


def test_recovery_keeps_pruned_heads_dead_and_reuses_teacher_logits(tmp_path, context):
    pruned = prune_heads(
        context.teacher, HeadPruningConfig(importance_batches=1), out_dir(tmp_path, "h"), context
    )
    config = RecoveryConfig(epochs=2, max_examples=64, batch_size=16, learning_rate=1e-3)
    first = finetune_recover(pruned, config, out_dir(tmp_path, "r1"), context)
    second = finetune_recover(pruned, config, out_dir(tmp_path, "r2"), context)
    assert len(report(first.path)["epoch_losses"]) == 2
    assert (report(first.path)["teacher_logits_reused"], report(second.path)["teacher_logits_reused"]) == (
        False,
        True,
    )
    # Training changed the weights, yet the removed heads are still exactly zero, so physical
    # removal still gives the same outputs as the stock-shaped folder.
    assert not np.allclose(torch_logits(first.path, TEXTS), torch_logits(pruned.path, TEXTS), atol=1e-4)
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(first.path)(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        small = load_classifier(first.path, remove_pruned_heads=True)(**encoded).logits.numpy()
    np.testing.assert_allclose(small, torch_logits(first.path, TEXTS), atol=1e-5)


@pytest.mark.parametrize(
    ("config", "values", "message"),
    [
        (HeadPruningConfig, {"heads_to_prune": 0}, r"heads_to_prune\n.*greater than or equal to 1"),
        (FfnPruningConfig, {"keep_fraction": 0}, r"keep_fraction\n.*greater than 0"),
        (FfnPruningConfig, {"keep_fraction": 1.5}, r"keep_fraction\n.*less than or equal to 1"),
        (LayerPruningConfig, {"keep": []}, r"keep\n.*at least 1 item"),
        (LayerPruningConfig, {"keep": [1, 1]}, r"keep\n.*keep=\[1, 1\]; allowed: distinct layer indices"),
        (LayerPruningConfig, {"keep": [2, 0]}, r"keep\n.*ascending order"),
        (LayerPruningConfig, {"keep": [-1]}, r"keep\n.*≥ 0"),
        (MagnitudePruningConfig, {"sparsity": 1.0}, r"sparsity\n.*less than 1"),
        (MagnitudePruningConfig, {"sparsity": -0.1}, r"sparsity\n.*greater than or equal to 0"),
        (RecoveryConfig, {"alpha": 1.5}, r"alpha\n.*less than or equal to 1"),
        (RecoveryConfig, {"epocs": 2}, r"epocs\n.*Extra inputs are not permitted"),
        (
            SemiStructuredConfig,
            {"targets": "embeddings"},
            r"targets\n.*Input should be 'attention', 'ffn' or 'both'",
        ),
    ],
)
def test_configs_name_the_field_and_what_is_allowed(config, values, message):
    with pytest.raises(ValidationError, match=message):
        config.model_validate(values)

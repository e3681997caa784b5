"""lowrank.svd on tiny BERTs built in the test: rank rules, the persisted format and its loader,
export to ONNX and dynamic INT8 quantization of the factorized model."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from tasks.compress.technique import TechniqueContext
from tasks.compress.techniques import TECHNIQUES
from tasks.compress.techniques.lowrank import LowRankConfig, energy_rank, lowrank_svd
from tasks.compress.techniques.onnx_export import OnnxExportConfig, export_onnx
from tasks.compress.techniques.onnx_quantize import DynamicInt8Config, quantize_dynamic_int8
from tasks.compress.techniques.prune import RecoveryConfig, finetune_recover
from tasks.core.errors import SlimlineError, TechniqueError
from tasks.core.models import (
    LOW_RANK_KEY,
    PROJECTIONS,
    PRUNED_HEADS_KEY,
    ModelRef,
    load_classifier,
    load_tokenizer,
    save_classifier,
)
from tasks.recipe import Variant
from tests.factories import make_checkpoint
from tests.test_techniques import TEXTS, onnx_logits
from tests.tiny import make_context

HIDDEN, HEADS = 32, 4  # intermediate size 64


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "hf", layers=2, hidden=HIDDEN, heads=HEADS)


@pytest.fixture
def context(tmp_path, checkpoint) -> TechniqueContext:
    return make_context(tmp_path / "data", checkpoint)


def factorize(source: Path, dest: Path, context: TechniqueContext, **config) -> Path:
    dest.mkdir()
    ref = lowrank_svd(ModelRef(path=source, format="hf"), LowRankConfig(**config), dest, context)
    return ref.path


def logits(model, folder: Path) -> np.ndarray:
    tokenizer = load_tokenizer(folder)
    with torch.inference_mode():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.numpy()


def report(folder: Path) -> dict:
    return json.loads((folder / "technique_report.json").read_text())


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def weight(folder: Path, layer: int, projection: str) -> np.ndarray:
    return load_file(folder / "model.safetensors")[f"bert.encoder.layer.{layer}.{projection}.weight"].numpy()


def test_registered_as_an_hf_to_hf_technique_without_data():
    spec = TECHNIQUES["lowrank.svd"]
    assert (spec.accepts, spec.produces, spec.uses_data) == (("hf",), "hf", False)


def test_ranks_follow_the_energy_rule(tmp_path, checkpoint, context):
    out = factorize(checkpoint, tmp_path / "lowrank", context, energy=0.5)
    s = np.linalg.svd(weight(checkpoint, 0, "intermediate.dense").astype(np.float64), compute_uv=False)
    cumulative = np.cumsum(s**2) / np.sum(s**2)
    expected = int(np.argmax(cumulative >= 0.5)) + 1
    assert expected * (HIDDEN + 2 * HIDDEN) < HIDDEN * 2 * HIDDEN  # it is worth factorizing
    entry = next(
        m for m in report(out)["matrices"] if (m["layer"], m["projection"]) == (0, "intermediate.dense")
    )
    assert entry["factorized"] and entry["rank"] == expected
    assert entry["energy_kept"] == pytest.approx(cumulative[expected - 1], abs=1e-6)
    assert energy_rank([0.5, 0.3, 0.2], 0.8) == 2 and energy_rank([0.5, 0.3, 0.2], 1.0) == 3
    # config.json records the ranks; the loader rebuilds pairs of exactly those shapes.
    layout = json.loads((out / "config.json").read_text())[LOW_RANK_KEY]
    assert layout[0]["intermediate.dense"] == expected
    pair = load_classifier(out).bert.encoder.layer[0].intermediate.dense
    assert tuple(pair.down.weight.shape) == (expected, HIDDEN)
    assert tuple(pair.up.weight.shape) == (2 * HIDDEN, expected)


def test_full_energy_matches_the_dense_model(tmp_path, checkpoint, context):
    # Random weights are full rank: at energy 1 no factorization saves parameters, nothing changes.
    out = factorize(checkpoint, tmp_path / "full", context, energy=1.0)
    assert report(out)["factorized"] == 0
    assert LOW_RANK_KEY not in json.loads((out / "config.json").read_text())
    dense = logits(load_classifier(checkpoint), checkpoint)
    np.testing.assert_allclose(logits(load_classifier(out), out), dense, atol=1e-6)

    # Rank-4 weights: energy 1 factorizes every projection at rank 4, and the outputs stay the same.
    tensors = load_file(checkpoint / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    for name, tensor in tensors.items():
        if "encoder" in name and any(name.endswith(f".{p}.weight") for p in PROJECTIONS):
            rows, columns = tensor.shape
            a, b = torch.randn(rows, 4, generator=generator), torch.randn(4, columns, generator=generator)
            tensors[name] = (a @ b * 0.05).contiguous()
    save_file(tensors, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    out = factorize(checkpoint, tmp_path / "rank4", context, energy=1.0)
    assert {m["rank"] for m in report(out)["matrices"]} == {4}
    dense = logits(load_classifier(checkpoint), checkpoint)
    np.testing.assert_allclose(logits(load_classifier(out), out), dense, atol=1e-4)


def test_lower_energy_drops_parameters_and_reports_how_many(tmp_path, checkpoint, context):
    out = factorize(checkpoint, tmp_path / "lowrank", context, energy=0.6)
    before, after = params(load_classifier(checkpoint)), params(load_classifier(out))
    assert after < before
    summary = report(out)
    assert (summary["model_params_before"], summary["model_params_after"]) == (before, after)
    assert summary["params_removed"] == before - after
    assert summary["param_reduction"] == pytest.approx(1 - after / before, abs=1e-6)
    assert summary["target_params_after"] < summary["target_params_before"]
    assert summary["factorized"] + summary["left_dense"] == 2 * len(PROJECTIONS)


def test_ffn_targets_leave_attention_dense(tmp_path, checkpoint, context):
    out = factorize(checkpoint, tmp_path / "ffn", context, energy=0.5, targets="ffn")
    layout = json.loads((out / "config.json").read_text())[LOW_RANK_KEY]
    assert all(set(row) <= {"intermediate.dense", "output.dense"} and row for row in layout)


def test_budget_mode_respects_the_budget(tmp_path, checkpoint, context):
    out = factorize(checkpoint, tmp_path / "budget", context, keep_params=0.4, min_rank=2)
    summary = report(out)
    budget = 0.4 * summary["target_params_before"]
    assert summary["rule"] == "keep_params"
    assert summary["target_params_after"] <= budget
    # Greedy stops only when no step fits; every step costs at most in + out weights.
    assert budget - summary["target_params_after"] < HIDDEN + 2 * HIDDEN
    # What the report counts is what the loaded model holds.
    model = load_classifier(out)
    held = sum(
        module.weight.numel()
        for layer in model.bert.encoder.layer
        for name in PROJECTIONS
        for module in layer.get_submodule(name).modules()
        if isinstance(module, torch.nn.Linear)
    )
    assert held == summary["target_params_after"]
    assert all(m["rank"] is None or m["rank"] >= 2 for m in summary["matrices"])
    with pytest.raises(TechniqueError, match=r"keep_params=0.01 allows .* min_rank=8"):
        factorize(checkpoint, tmp_path / "tight", context, keep_params=0.01, min_rank=8)


def test_round_trip_gives_identical_logits(tmp_path, checkpoint, context):
    out = factorize(checkpoint, tmp_path / "lowrank", context, energy=0.7)
    loaded = load_classifier(out)
    # The loaded model is the truncated SVD of the original weights, nothing else.
    dense = load_classifier(checkpoint)
    layout = json.loads((out / "config.json").read_text())[LOW_RANK_KEY]
    with torch.no_grad():
        for index, row in enumerate(layout):
            for name, rank in row.items():
                u, s, vh = np.linalg.svd(weight(checkpoint, index, name).astype(np.float64))
                approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
                dense.bert.encoder.layer[index].get_submodule(name).weight.copy_(torch.from_numpy(approx))
    np.testing.assert_allclose(logits(loaded, out), logits(dense, checkpoint), atol=1e-5)
    # Written again by the shared saver and read back: the same tensors, ranks and logits.
    again = tmp_path / "again"
    again.mkdir()
    save_classifier(loaded, load_tokenizer(out), again)
    assert json.loads((again / "config.json").read_text())[LOW_RANK_KEY] == layout
    assert set(load_file(again / "model.safetensors")) == set(load_file(out / "model.safetensors"))
    np.testing.assert_array_equal(logits(load_classifier(again), again), logits(loaded, out))
    # The way evaluation and export load it.
    exported_form = load_classifier(out, remove_pruned_heads=True, attn_implementation="eager")
    np.testing.assert_allclose(logits(exported_form, out), logits(loaded, out), atol=1e-6)


def test_pruned_heads_slice_out_of_factorized_projections(tmp_path, checkpoint, context):
    model = load_classifier(checkpoint)
    setattr(model.config, PRUNED_HEADS_KEY, [[1], [0, 3]])
    pruned = tmp_path / "pruned"
    pruned.mkdir()
    save_classifier(model, load_tokenizer(checkpoint), pruned)
    out = factorize(pruned, tmp_path / "lowrank", context, energy=0.95)
    full = load_classifier(out)
    sliced = load_classifier(out, remove_pruned_heads=True)
    assert sliced.bert.encoder.layer[1].attention.self.num_attention_heads == 2
    np.testing.assert_allclose(logits(sliced, out), logits(full, out), atol=1e-5)


def test_export_and_dynamic_int8_of_the_factorized_model(tmp_path, checkpoint, context):
    out = factorize(checkpoint, tmp_path / "lowrank", context, energy=0.6)
    ranks = json.loads((out / "config.json").read_text())[LOW_RANK_KEY]
    onnx_dir, int8_dir = tmp_path / "onnx", tmp_path / "int8"
    onnx_dir.mkdir()
    int8_dir.mkdir()
    exported = export_onnx(ModelRef(path=out, format="hf"), OnnxExportConfig(), onnx_dir, context)
    reference = logits(load_classifier(out), out)
    np.testing.assert_allclose(onnx_logits(exported.path, TEXTS), reference, atol=1e-4)
    # The thin factors are what the graph holds.
    shapes = {tuple(t.dims) for t in onnx.load(str(exported.path / "model.onnx")).graph.initializer}
    rank = ranks[0]["intermediate.dense"]
    assert {(HIDDEN, rank), (rank, 2 * HIDDEN)} <= shapes or {(rank, HIDDEN), (2 * HIDDEN, rank)} <= shapes
    quantized = quantize_dynamic_int8(exported, DynamicInt8Config(), int8_dir, context)
    ops = {node.op_type for node in onnx.load(str(quantized.path / "model.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops
    int8 = onnx_logits(quantized.path, TEXTS)
    assert int8.shape == reference.shape and np.isfinite(int8).all()


def test_recovery_fine_tune_keeps_the_factorization(tmp_path, checkpoint, context):
    out = factorize(checkpoint, tmp_path / "lowrank", context, energy=0.6)
    recovered = tmp_path / "recovered"
    recovered.mkdir()
    config = RecoveryConfig(epochs=1, batch_size=16, max_examples=32)
    finetune_recover(ModelRef(path=out, format="hf"), config, recovered, context)
    layout = json.loads((out / "config.json").read_text())[LOW_RANK_KEY]
    assert json.loads((recovered / "config.json").read_text())[LOW_RANK_KEY] == layout
    before, after = load_classifier(out), load_classifier(recovered)
    assert params(after) == params(before)
    assert not np.allclose(logits(after, recovered), logits(before, out))


def test_malformed_or_refactorized_input_fails_in_one_line(tmp_path, checkpoint, context):
    out = factorize(checkpoint, tmp_path / "lowrank", context, energy=0.6)
    with pytest.raises(TechniqueError, match=r"already factorized; apply lowrank\.svd once"):
        factorize(out, tmp_path / "twice", context, energy=0.6)
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    for broken, message in [
        ([{"attention.self.bogus": 2}, {}], "names 'attention.self.bogus'; allowed: attention.self.query"),
        ([{"intermediate.dense": 0}, {}], r"intermediate.dense=0; allowed: an integer ≥ 1"),
        ([{}], "one {projection: rank} object per layer"),
        ([{"intermediate.dense": 99}, {}], r"rank 99 does not fit the projection; allowed: 1..32"),
    ]:
        config_file.write_text(json.dumps(config | {LOW_RANK_KEY: broken}))
        with pytest.raises(TechniqueError, match=message) as raised:
            load_classifier(out)
        assert "\n" not in str(raised.value)
    # Ranks that disagree with the stored tensors.
    layout = config[LOW_RANK_KEY]
    name, rank = next(iter(layout[0].items()))
    layout[0][name] = rank + 1
    config_file.write_text(json.dumps(config | {LOW_RANK_KEY: layout}))
    with pytest.raises(SlimlineError, match=r"do not match config.json \(slimline_low_rank\).*wrong shape"):
        load_classifier(out)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"energy": 0.9, "keep_params": 0.5}, r"energy=0.9 and keep_params=0.5 are both set; allowed"),
        ({"energy": 1.5}, r"energy\n.*less than or equal to 1"),
        ({"energy": 0}, r"energy\n.*greater than 0"),
        ({"keep_params": 1.0}, r"keep_params\n.*less than 1"),
        ({"min_rank": 0}, r"min_rank\n.*greater than or equal to 1"),
        ({"targets": "mlp"}, r"targets\n.*'attention', 'ffn' or 'both'"),
        ({"rank": 4}, r"rank\n.*Extra inputs are not permitted"),
    ],
)
def test_bad_configs_name_the_field(values, message):
    with pytest.raises(ValidationError, match=message):
        LowRankConfig.model_validate(values)


def test_recipes_can_use_it():
    assert LowRankConfig().energy == 0.9 and LowRankConfig(keep_params=0.5).energy is None
    variant = Variant.model_validate(
        {
            "name": "lowrank-int8",
            "steps": [
                {"technique": "lowrank.svd", "config": {"keep_params": 0.5, "targets": "ffn"}},
                {"technique": "finetune.recover"},
                {"technique": "export.onnx"},
                {"technique": "quantize.onnx_dynamic_int8"},
            ],
        }
    )
    assert variant.steps[0].config == {"energy": None, "keep_params": 0.5, "min_rank": 1, "targets": "ffn"}
    with pytest.raises(ValidationError, match=r"lowrank.svd: energy = 1.5: .*less than or equal to 1"):
        Variant.model_validate(
            {"name": "bad", "steps": [{"technique": "lowrank.svd", "config": {"energy": 1.5}}]}
        )

"""Distillation into a shallower student, and the cached teacher logits, on tiny BERTs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from pydantic import ValidationError
from transformers import AutoTokenizer

from tasks.compress import training
from tasks.compress.technique import TechniqueContext
from tasks.compress.techniques.distill import DistillConfig, distill_student
from tasks.compress.techniques.prune import HeadPruningConfig, prune_heads
from tasks.compress.training import (
    TEACHER_LOGITS_FILE,
    TrainItem,
    TrainSettings,
    native_bf16,
    read_training_log,
    resolve_precision,
    teacher_logits,
    train_student,
)
from tasks.core.errors import TechniqueError
from tasks.core.inference import length_batches
from tasks.core.models import ModelRef, keep_layers, load_classifier
from tasks.intake.data import load_split
from tests.factories import make_checkpoint
from tests.test_prune import assert_onnx_matches, out_dir, report, stock
from tests.tiny import make_context

FAST = {"epochs": 6, "batch_size": 16, "learning_rate": 5e-3, "train_examples": 100, "transfer_examples": 80}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """A randomly initialised 4-layer base and a teacher fine-tuned from it on the labels (the
    base's predictions are nearly uniform; the teacher's depend on the text)."""
    base = make_checkpoint(tmp_path_factory.mktemp("base") / "hf", layers=4, hidden=32, heads=2)
    split = make_context(tmp_path_factory.mktemp("teacher-data"), base).split_dir
    items = [TrainItem(e.text, e.label) for e in load_split(split, "train")]
    model = load_classifier(base)
    settings = TrainSettings(epochs=6, learning_rate=5e-3, batch_size=16, kl_weight=0.0, hard_weight=1.0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    train_student(model, None, items, settings, tokenizer=tokenizer, max_length=32)
    teacher = tmp_path_factory.mktemp("teacher") / "hf"
    model.save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    return base, teacher


@pytest.fixture
def context(tmp_path, checkpoints) -> TechniqueContext:
    return make_context(tmp_path / "data", checkpoints[1])


def held_out(context: TechniqueContext) -> dict[str, torch.Tensor]:
    texts = [e.text for e in load_split(context.split_dir, "eval")]
    return AutoTokenizer.from_pretrained(context.teacher.path)(texts, padding=True, return_tensors="pt")


def kl_to_teacher(student, context: TechniqueContext) -> float:
    """Mean KL(teacher ‖ student) of the predicted distributions over the eval split."""
    encoded = held_out(context)
    with torch.inference_mode():
        target = torch.log_softmax(stock(context.teacher.path)(**encoded).logits, -1)
        mine = torch.log_softmax(student.eval()(**encoded).logits, -1)
    return float((target.exp() * (target - mine)).sum(-1).mean())


def hidden_gap(student, context: TechniqueContext, pairs: list[tuple[int, int]]) -> float:
    """Mean squared distance of student layer outputs to their teacher layers' (eval split)."""
    encoded = held_out(context)
    with torch.inference_mode():
        mine = student.eval()(**encoded, output_hidden_states=True).hidden_states
        theirs = stock(context.teacher.path)(**encoded, output_hidden_states=True).hidden_states
    return float(sum(((mine[s + 1] - theirs[t + 1]) ** 2).mean() for s, t in pairs) / len(pairs))


def attention_gap(student, context: TechniqueContext, pairs: list[tuple[int, int]], heads) -> float:
    """Mean KL(teacher ‖ student) of the live heads' attention rows over real query tokens."""
    encoded = held_out(context)
    teacher = load_classifier(context.teacher.path, attn_implementation="eager")
    student.set_attn_implementation("eager")
    with torch.inference_mode():
        mine = student.eval()(**encoded, output_attentions=True).attentions
        theirs = teacher(**encoded, output_attentions=True).attentions
    tokens = encoded["attention_mask"].bool()
    gaps = []
    for (s, t), keep in zip(pairs, heads, strict=True):
        p, q = theirs[t][:, keep].clamp_min(1e-12), mine[s][:, keep].clamp_min(1e-12)
        rows = (p * (p.log() - q.log())).sum(-1)  # batch × heads × query
        gaps.append(float(rows.permute(0, 2, 1)[tokens].mean()))
    return sum(gaps) / len(gaps)


def test_teacher_logits_are_computed_once_per_shard_and_stored_as_npy(tmp_path, context, monkeypatch):
    texts = [e.text for e in load_split(context.split_dir, "train")]
    monkeypatch.setattr(training, "LOGITS_SHARD", 64)
    first = teacher_logits(context)
    shards = -(-len(texts) // 64)
    assert len(first.shards) == shards and not first.reused
    stored = [np.load(s.path / TEACHER_LOGITS_FILE, allow_pickle=False) for s in first.shards]
    assert all(part.dtype == np.float32 for part in stored) and sum(len(p) for p in stored) == len(texts)
    assert first.values.shape == (len(texts), 3)
    # Rows come back in split order although batches group texts by length.
    encoded = AutoTokenizer.from_pretrained(context.teacher.path)(
        texts, padding=True, truncation=True, max_length=context.max_length, return_tensors="pt"
    )
    with torch.inference_mode():
        expected = stock(context.teacher.path)(**encoded).logits.numpy()
    np.testing.assert_allclose(first.values, expected, atol=1e-5)

    # A second request, or one for fewer rows, must not load (let alone run) the teacher.
    def refuse(*args, **kwargs):
        raise AssertionError("the teacher was loaded again")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", refuse)
    again = teacher_logits(context)
    assert again.reused and again.keys == first.keys
    np.testing.assert_array_equal(again.values, first.values)
    prefix = teacher_logits(context, rows=70)
    assert prefix.reused and prefix.keys == first.keys[:2]
    np.testing.assert_array_equal(prefix.values, first.values[:70])
    # Another split or another precision is another artifact.
    with pytest.raises(AssertionError, match="loaded again"):
        teacher_logits(context, split="calibration")
    with pytest.raises(AssertionError, match="loaded again"):
        teacher_logits(context, rows=10, precision="bf16")


def test_only_the_shards_a_technique_trains_on_are_computed(tmp_path, context, monkeypatch):
    monkeypatch.setattr(training, "LOGITS_SHARD", 64)
    prefix = teacher_logits(context, rows=70)  # two shards: rows 0-63 and 64-127
    assert len(prefix.shards) == 2 and prefix.values.shape == (70, 3) and not prefix.reused
    whole = teacher_logits(context)
    assert whole.keys[:2] == prefix.keys and [s.reused for s in whole.shards[:2]] == [True, True]
    assert not any(s.reused for s in whole.shards[2:])


def test_length_batches_cover_every_example_once_and_group_similar_lengths():
    lengths = [(i * 37) % 61 + 1 for i in range(1000)]
    generator = torch.Generator().manual_seed(0)
    batches = length_batches(lengths, 16, generator)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) == 16 for b in batches if len(b) != 1000 % 16)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    random_order = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    padded_random = sum(
        len(chunk) * max(lengths[i] for i in chunk)
        for chunk in (random_order[s : s + 16] for s in range(0, 1000, 16))
    )
    assert padded < 0.7 * padded_random
    # Another epoch (the generator moved on) mixes differently; inference batches are fully sorted.
    assert length_batches(lengths, 16, generator) != batches
    flat = [i for b in length_batches(lengths, 16) for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths)


def test_distillation_lowers_the_students_kl_to_the_teacher(tmp_path, context, checkpoints):
    # The student starts from layers 0 and 2 of the base the teacher was fine-tuned from, as a
    # DistilBERT student starts from the pretrained encoder: it knows nothing of the task yet.
    base = ModelRef(path=checkpoints[0], format="hf")
    untrained = load_classifier(base.path)
    keep_layers(untrained, [0, 2])
    before = kl_to_teacher(untrained, context)

    config = DistillConfig(layers=[0, 2], kl_weight=1.0, hard_weight=0.0, temperature=1.0, **FAST)
    student = distill_student(base, config, out_dir(tmp_path, "student"), context)

    after = kl_to_teacher(stock(student.path), context)
    assert after < 0.2 * before, (before, after)
    reloaded = stock(student.path)
    assert reloaded.config.num_hidden_layers == 2 and len(reloaded.bert.encoder.layer) == 2
    found = report(student.path)
    assert found["layers"] == [0, 2] and found["teacher_layers"] == [0, 2]
    assert (found["labelled_examples"], found["transfer_examples"]) == (100, 80)
    assert len(found["epoch_losses"]) == 6 and found["epoch_losses"][-1] < found["epoch_losses"][0]
    training = read_training_log(student.path)
    assert training is not None and training.epoch_losses == found["epoch_losses"]
    assert training.steps == 6 * -(-180 // 16) == training.curve[-1]["step"]
    assert set(training.curve[0]) == {"step", "loss", "kl"}  # hard_weight=0: no hard-label term
    assert training.curve[-1]["kl"] < training.curve[0]["kl"]
    assert_onnx_matches(tmp_path, context, student)

    # The same transfer set again: the teacher's logits come from the cache.
    again = distill_student(base, config, out_dir(tmp_path, "again"), context)
    assert not found["teacher_logits_reused"] and report(again.path)["teacher_logits_reused"]


def test_bf16_distillation_learns_as_fp32_does_and_keeps_float32_weights(tmp_path, context, checkpoints):
    base = ModelRef(path=checkpoints[0], format="hf")
    untrained = load_classifier(base.path)
    keep_layers(untrained, [0, 2])
    before = kl_to_teacher(untrained, context)
    losses = {"kl_weight": 1.0, "hard_weight": 0.5, "hidden_weight": 1.0, "attention_weight": 1.0}
    config = DistillConfig(layers=[0, 2], temperature=1.0, precision="bf16", **losses, **FAST)
    student = distill_student(base, config, out_dir(tmp_path, "bf16"), context)

    after = kl_to_teacher(stock(student.path), context)
    assert after < 0.2 * before, (before, after)
    assert {p.dtype for p in stock(student.path).parameters()} == {torch.float32}
    found = report(student.path)
    assert (found["precision"], found["device"]) == ("bf16", "cpu")
    training = read_training_log(student.path)
    assert training is not None and training.precision == "bf16"
    assert set(training.curve[0]) == {"step", "loss", "kl", "hard", "hidden", "attention"}
    assert all(np.isfinite(point["loss"]) for point in training.curve)
    # The bf16 soft targets are their own artifact, within a few hundredths of the fp32 ones.
    bf16 = teacher_logits(context, rows=180, precision="bf16")
    fp32 = teacher_logits(context, rows=180)
    assert found["teacher_logits_keys"] == bf16.keys and not set(bf16.keys) & set(fp32.keys)
    assert bf16.reused and not fp32.reused
    np.testing.assert_allclose(bf16.values, fp32.values, atol=0.1)
    assert not np.array_equal(bf16.values, fp32.values)


def test_auto_precision_trains_in_bf16_only_where_the_cpu_has_it(tmp_path, context, checkpoints):
    base = ModelRef(path=checkpoints[0], format="hf")
    config = DistillConfig(layers=[0, 2], precision="auto", **FAST)
    student = distill_student(base, config, out_dir(tmp_path, "auto"), context)
    expected = "bf16" if native_bf16() else "fp32"
    assert report(student.path)["precision"] == expected == resolve_precision("auto")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    # The soft targets are those of the precision that ran, shared with a step that asked for it.
    assert (
        report(student.path)["teacher_logits_keys"]
        == teacher_logits(context, rows=180, precision=expected).keys
    )


def test_hidden_and_attention_losses_on_a_head_pruned_student(tmp_path, context):
    pruned = prune_heads(
        context.teacher, HeadPruningConfig(importance_batches=1), out_dir(tmp_path, "h"), context
    )
    untrained = load_classifier(pruned.path)
    keep_layers(untrained, [1, 3])
    pairs = [(0, 1), (1, 3)]
    heads = [[h for h in range(2) if h not in removed] for removed in untrained.config.slimline_pruned_heads]
    before = hidden_gap(untrained, context, pairs), attention_gap(untrained, context, pairs, heads)

    config = DistillConfig(
        layers=[1, 3], kl_weight=0.0, hard_weight=0.0, hidden_weight=1.0, attention_weight=1.0, **FAST
    )
    student = distill_student(pruned, config, out_dir(tmp_path, "student"), context)

    reloaded = stock(student.path)
    assert hidden_gap(reloaded, context, pairs) < 0.5 * before[0]
    assert attention_gap(stock(student.path), context, pairs, heads) < 0.8 * before[1]
    saved = json.loads((student.path / "config.json").read_text())
    assert saved["slimline_source_layers"] == [1, 3]
    assert saved["slimline_pruned_heads"] == [report(pruned.path)["pruned_heads"][i] for i in (1, 3)]
    # The attention loss skipped the removed heads and training kept them at zero.
    encoded = held_out(context)
    with torch.inference_mode():
        small = load_classifier(student.path, remove_pruned_heads=True)
        np.testing.assert_allclose(small(**encoded).logits, reloaded(**encoded).logits, atol=1e-5)
    assert small.bert.encoder.layer[0].attention.self.query.weight.shape == (16, 32)
    assert report(student.path)["teacher_logits_keys"] is None  # no KL term: no teacher logits
    assert_onnx_matches(tmp_path, context, student)


def test_a_student_deeper_than_its_teacher_is_refused(tmp_path):
    teacher = make_checkpoint(tmp_path / "teacher", layers=2, hidden=32, heads=2)
    context = make_context(tmp_path / "data", teacher)
    deep = ModelRef(path=make_checkpoint(tmp_path / "deep", layers=4, hidden=32, heads=2), format="hf")
    with pytest.raises(
        TechniqueError, match=r"3-layer student but the teacher has 2 layers; allowed: at most 2"
    ):
        distill_student(deep, DistillConfig(layers=[0, 1, 2]), out_dir(tmp_path, "a"), context)
    with pytest.raises(TechniqueError, match=r"4-layer student but the teacher has 2 layers"):
        distill_student(deep, DistillConfig(), out_dir(tmp_path, "b"), context)
    with pytest.raises(
        TechniqueError, match=r"layers=\[0, 4\] names layer 4 but the input model has 4 layers"
    ):
        distill_student(deep, DistillConfig(layers=[0, 4]), out_dir(tmp_path, "c"), context)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"layers": []}, r"layers\n.*at least 1 item"),
        (
            {"layers": [2, 1]},
            r"layers\n.*layers=\[2, 1\]; allowed: distinct layer indices ≥ 0 in ascending order",
        ),
        ({"temperature": 0}, r"temperature\n.*greater than 0"),
        (
            {"kl_weight": 0, "hard_weight": 0},
            r"hidden_weight and attention_weight are all 0; allowed: at least one",
        ),
        ({"hidden_weight": -1}, r"hidden_weight\n.*greater than or equal to 0"),
        ({"transfer_examples": -1}, r"transfer_examples\n.*greater than or equal to 0"),
        ({"student_layers": [0]}, r"student_layers\n.*Extra inputs are not permitted"),
        ({"precision": "fp16"}, r"precision\n.*Input should be 'fp32', 'bf16' or 'auto'"),
    ],
)
def test_distill_config_names_the_field_and_what_is_allowed(values, message):
    with pytest.raises(ValidationError, match=message):
        DistillConfig.model_validate(values)

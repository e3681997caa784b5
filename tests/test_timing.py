"""Side-by-side timing of real tiny models (PyTorch and ONNX Runtime) in one process."""

from __future__ import annotations

import statistics

import pytest
import torch
from pydantic import ValidationError

from tasks.compress.techniques.onnx_export import OnnxExportConfig, export_onnx
from tasks.core.models import ModelRef
from tasks.gate.timing import TimedModel, TimingConfig, time_interleaved, time_side_by_side
from tasks.intake.data import DatasetConfig, load_split, prepare_splits
from tests.factories import LABELS, make_dataset
from tests.tiny import make_context


@pytest.fixture
def models(tmp_path, tiny_checkpoint) -> list[TimedModel]:
    context = make_context(tmp_path / "ctx", tiny_checkpoint)
    (tmp_path / "onnx").mkdir()
    onnx = export_onnx(context.teacher, OnnxExportConfig(), tmp_path / "onnx", context)
    return [
        TimedModel(name="baseline", model=ModelRef(path=tiny_checkpoint, format="hf"), key="k-hf"),
        TimedModel(name="onnx", model=onnx, key="k-onnx"),
        TimedModel(name="onnx-again", model=onnx, key="k-onnx"),
    ]


def test_models_are_timed_interleaved_with_rotating_order_and_threads_restored(models):
    torch.set_num_threads(3)
    try:
        texts = ["i love this phone", "the worst flight", "coffee is ok", "a new game", "my car"] * 2
        config = TimingConfig(rounds=4, requests=6, warmup=3, threads=1)
        table = time_interleaved(models, texts, 32, config)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(1)
    assert table.order == [
        ["baseline", "onnx", "onnx-again"],
        ["onnx", "onnx-again", "baseline"],
        ["onnx-again", "baseline", "onnx"],
        ["baseline", "onnx", "onnx-again"],
    ]
    assert (table.rounds, table.requests, table.threads) == (4, 6, 1)
    assert [m.runtime for m in table.models] == ["pytorch", "onnxruntime", "onnxruntime"]
    for row in table.models:
        assert len(row.p50_ms_per_round) == len(row.p95_ms_per_round) == 4
        assert row.p50_ms == pytest.approx(statistics.median(row.p50_ms_per_round), abs=1e-4)
        assert row.p50_min_ms == min(row.p50_ms_per_round) and row.p50_max_ms == max(row.p50_ms_per_round)
        assert row.p95_ms == pytest.approx(statistics.median(row.p95_ms_per_round), abs=1e-4)
        assert all(p95 >= p50 for p50, p95 in zip(row.p50_ms_per_round, row.p95_ms_per_round, strict=True))
    assert table.of("onnx").name == "onnx"


def test_too_few_texts_for_a_round_is_refused(models):
    with pytest.raises(ValueError, match="6 requests per round need as many texts; got 2"):
        time_interleaved(models, ["a", "b"], 32, TimingConfig(requests=6))


def test_the_timing_step_is_cached_by_models_split_and_config(models, settings, tmp_path):
    data = make_dataset(tmp_path / "tweets.csv")
    split = prepare_splits(
        settings, DatasetConfig(source=str(data), labels=LABELS, eval_size=40, calibration_size=20)
    )
    assert len(load_split(split.path, "eval")) >= 10
    config = TimingConfig(rounds=2, requests=10, warmup=1)
    first, first_step = time_side_by_side(settings, models[:2], split, 32, config)
    again, again_step = time_side_by_side(settings, models[:2], split, 32, config)
    assert not first_step.reused and again_step.reused and again == first
    assert again_step.manifest.inputs == {
        "model:baseline": "k-hf",
        "model:onnx": "k-onnx",
        "split": split.key,
    }
    more, more_step = time_side_by_side(
        settings, models[:2], split, 32, config.model_copy(update={"rounds": 3})
    )
    assert not more_step.reused and more.rounds == 3


@pytest.mark.parametrize(
    ("field", "value"), [("rounds", 0), ("requests", 2), ("threads", 0), ("warmup", -1), ("repeats", 3)]
)
def test_timing_config_names_the_bad_field(field, value):
    with pytest.raises(ValidationError, match=field):
        TimingConfig.model_validate({field: value})

"""Great Expectations suites over the split and the predictions file: the clean data passes,
each planted defect fails with a message that names the expectation and the offending rows."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from tasks.core.errors import DataError, DataValidationError, SlimlineError
from tasks.core.settings import Settings
from tasks.gate.evaluate import write_predictions
from tasks.intake.data import DatasetConfig, Example, load_split, prepare_splits, read_examples, split
from tasks.intake.validation import (
    REPORT,
    ValidationConfig,
    ValidationReport,
    validate_predictions,
    validate_splits,
    write_report,
)
from tasks.recipe import load_recipe, parse_recipe
from tests.factories import LABELS, make_dataset

REPO = Path(__file__).resolve().parent.parent
CONFIG = ValidationConfig()


def write_split(folder: Path, calibration: int = 20) -> tuple[Path, DatasetConfig]:
    """The tiny generated dataset split as tasks.intake.data does it (sizes of tests/tiny.make_context)."""
    data = make_dataset(folder / "tweets.csv")
    config = DatasetConfig(source=str(data), labels=LABELS, eval_size=40, calibration_size=calibration)
    split_dir = folder / "split"
    split_dir.mkdir(parents=True)
    for name, rows in split(read_examples(data, config), config).items():
        write_rows(split_dir, name, rows)
    return split_dir, config


def write_rows(split_dir: Path, name: str, rows: list[Example]) -> None:
    (split_dir / f"{name}.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in rows))


def failure_message(report: ValidationReport) -> str:
    assert not report.success
    with pytest.raises(DataValidationError) as caught:
        report.raise_if_failed()
    assert caught.value.exit_code == 9 and not caught.value.transient
    assert str(caught.value) == report.message()
    return report.message()


@pytest.fixture
def tiny_split(tmp_path: Path) -> tuple[Path, DatasetConfig]:
    return write_split(tmp_path)


def test_clean_split_passes_and_report_is_written(tiny_split: tuple[Path, DatasetConfig], tmp_path: Path):
    split_dir, dataset = tiny_split
    report = validate_splits(split_dir, dataset, CONFIG)
    assert report.success, report.message()
    assert [s.data for s in report.suites] == ["train", "eval", "calibration"]
    assert report.message() == "data validation passed: train, eval, calibration"
    report.raise_if_failed()
    eval_suite = report.suites[1]
    assert eval_suite.evaluated == len(eval_suite.outcomes) >= 10
    kinds = {(o.expectation, tuple(o.columns)) for o in eval_suite.outcomes}
    assert ("expect_column_values_to_not_be_in_set", ("in_train",)) in kinds
    assert ("expect_column_values_to_not_be_in_set", ("in_calibration",)) in kinds
    assert ("expect_column_values_to_be_between", ("share",)) in kinds
    assert eval_suite.summary().startswith("split.eval on eval: ")
    # Leakage is checked for the eval split only.
    assert all("in_train" not in o.columns for o in report.suites[0].outcomes)

    path = write_report(report, tmp_path / "out")
    assert path == tmp_path / "out" / REPORT
    stored = json.loads(path.read_text())
    assert stored["success"] is True and len(stored["suites"]) == 3
    assert ValidationReport.model_validate(stored).suites == report.suites


def test_empty_calibration_split_is_skipped(tmp_path: Path):
    split_dir, dataset = write_split(tmp_path, calibration=0)
    assert (split_dir / "calibration.jsonl").read_text() == ""
    report = validate_splits(split_dir, dataset, CONFIG)
    assert report.success, report.message()
    assert [s.data for s in report.suites] == ["train", "eval"]
    assert all("in_calibration" not in o.columns for o in report.suites[1].outcomes)


def test_leaked_eval_row_fails(tiny_split: tuple[Path, DatasetConfig]):
    split_dir, dataset = tiny_split
    evaluation = load_split(split_dir, "eval")
    leaked = [evaluation[3], evaluation[11]]
    write_rows(split_dir, "train", [*load_split(split_dir, "train"), *leaked])

    report = validate_splits(split_dir, dataset, CONFIG)
    message = failure_message(report)
    assert message.startswith(
        "data validation failed: eval: expect_column_values_to_not_be_in_set(in_train) — "
        f"2 of 40 rows also in train: {leaked[0].text!r} (line 4, {LABELS[leaked[0].label]}), "
        f"{leaked[1].text!r} (line 12, {LABELS[leaked[1].label]})"
    )
    # The copies are new texts in train, not duplicates there: only the eval suite fails.
    assert [s.data for s in report.suites if not s.success] == ["eval"]


def test_leak_into_calibration_is_named(tiny_split: tuple[Path, DatasetConfig]):
    split_dir, dataset = tiny_split
    evaluation = load_split(split_dir, "eval")
    write_rows(split_dir, "calibration", [*load_split(split_dir, "calibration"), evaluation[0]])
    message = failure_message(validate_splits(split_dir, dataset, CONFIG))
    assert (
        "eval: expect_column_values_to_not_be_in_set(in_calibration) — 1 of 40 rows also in calibration"
        in (message)
    )


def test_unknown_label_fails(tiny_split: tuple[Path, DatasetConfig]):
    split_dir, dataset = tiny_split
    evaluation = load_split(split_dir, "eval")
    evaluation[5] = Example(text=evaluation[5].text, label=7)
    write_rows(split_dir, "eval", evaluation)

    message = failure_message(validate_splits(split_dir, dataset, CONFIG))
    assert (
        "eval: expect_column_values_to_be_in_set(label) — 1 of 40 rows with a label outside 0..2 "
        f"(negative, neutral, positive): {evaluation[5].text!r} (line 6, label 7)"
    ) in message


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_fails(tiny_split: tuple[Path, DatasetConfig], text: str):
    split_dir, dataset = tiny_split
    evaluation = load_split(split_dir, "eval")
    evaluation[2] = Example(text=text, label=evaluation[2].label)
    write_rows(split_dir, "eval", evaluation)

    message = failure_message(validate_splits(split_dir, dataset, CONFIG))
    assert (
        "eval: expect_column_values_to_not_match_regex(text) — 1 of 40 rows empty or whitespace-only: "
        f"{text!r} (line 3, {LABELS[evaluation[2].label]})"
    ) in message


def test_duplicate_row_fails(tiny_split: tuple[Path, DatasetConfig]):
    split_dir, dataset = tiny_split
    train = load_split(split_dir, "train")
    write_rows(split_dir, "train", [*train, train[0]])

    message = failure_message(validate_splits(split_dir, dataset, CONFIG))
    quoted = f"{train[0].text!r}"
    assert message.startswith(
        "data validation failed: train: expect_column_values_to_be_unique(text) — "
        f"2 of {len(train) + 1} rows duplicated (same text): {quoted} (line 1, {LABELS[train[0].label]}), "
        f"{quoted} (line {len(train) + 1}, {LABELS[train[0].label]})"
    )


def test_class_share_outside_bounds_fails(tiny_split: tuple[Path, DatasetConfig]):
    split_dir, dataset = tiny_split
    # Every positive eval row relabelled negative: negative grows, positive disappears.
    evaluation = [
        Example(text=x.text, label=0 if x.label == 2 else x.label) for x in load_split(split_dir, "eval")
    ]
    write_rows(split_dir, "eval", evaluation)
    negatives = sum(1 for x in evaluation if x.label == 0)

    message = failure_message(validate_splits(split_dir, dataset, ValidationConfig(max_class_share=0.6)))
    assert (
        "eval: expect_column_values_to_be_between(share) — 2 of 3 classes with a share outside 0.05..0.6: "
        f"negative {negatives / 40:.3f} ({negatives} of 40 rows), positive 0.000 (0 of 40 rows)"
    ) in message
    assert negatives / 40 > 0.6


def test_text_length_bounds_fail(tiny_split: tuple[Path, DatasetConfig]):
    split_dir, dataset = tiny_split
    config = ValidationConfig(max_text_chars=20, max_mean_text_chars=10, max_failed_examples=2)
    report = validate_splits(split_dir, dataset, config)
    message = failure_message(report)
    assert "expect_column_value_lengths_to_be_between(text) — " in message
    assert "rows outside 1..20 chars: '" in message
    assert (
        "expect_column_mean_to_be_between(text_chars) — mean text length outside 3..10 chars (observed "
        in (message)
    )
    failed = [o for s in report.suites for o in s.failures()]
    assert all(len(o.examples) <= 2 for o in failed)
    assert {s.data for s in report.suites if not s.success} == {"train", "eval", "calibration"}


def test_null_text_and_missing_label_column_fail_in_the_suite(tiny_split: tuple[Path, DatasetConfig]):
    # The suite reads the stored file as it is: a null text or a row without a label is a
    # failed expectation with its row quoted, not a parse error before validation.
    split_dir, dataset = tiny_split
    rows = (split_dir / "eval.jsonl").read_text().splitlines()
    rows[3] = json.dumps({"text": None, "label": 0})
    (split_dir / "eval.jsonl").write_text("\n".join(rows) + "\n")
    message = failure_message(validate_splits(split_dir, dataset, CONFIG))
    assert "eval: expect_column_values_to_not_be_null(text)" in message and "line 4" in message
    (split_dir / "calibration.jsonl").write_text('{"text": "no label here"}\n')
    message = failure_message(validate_splits(split_dir, dataset, CONFIG))
    assert "calibration: expect_table_columns_to_match_set" in message and "'label' missing" in message


def test_unreadable_split_is_a_data_error(tiny_split: tuple[Path, DatasetConfig]):
    split_dir, dataset = tiny_split
    (split_dir / "eval.jsonl").write_text('{"text": "cut off", "lab\n')
    with pytest.raises(DataError, match=r"eval\.jsonl: line 1 is not JSON"):
        validate_splits(split_dir, dataset, CONFIG)
    (split_dir / "eval.jsonl").unlink()
    with pytest.raises(DataError, match=r"eval\.jsonl: cannot be read"):
        validate_splits(split_dir, dataset, CONFIG)


def test_validation_config_bounds_and_recipe_section(tmp_path: Path):
    with pytest.raises(ValueError, match=r"min_class_share \(0\.5\) must be below max_class_share \(0\.4\)"):
        ValidationConfig(min_class_share=0.5, max_class_share=0.4)
    with pytest.raises(ValueError, match="min_mean_text_chars"):
        ValidationConfig(min_mean_text_chars=600)
    with pytest.raises(ValueError, match="less than or equal to 1"):
        ValidationConfig(max_class_share=1.5)
    data = {
        "name": "r",
        "registered_model": "m",
        "dataset": {"source": "x.csv", "labels": LABELS},
        "targets": [{"name": "cpu-avx2"}],
        "variants": [{"name": "v", "steps": [{"technique": "export.onnx"}]}],
    }
    assert parse_recipe(data, "test").validation == ValidationConfig()
    recipe = parse_recipe({**data, "validation": {"max_class_share": 0.7}}, "test")
    assert recipe.validation.max_class_share == 0.7
    with pytest.raises(SlimlineError, match=r"validation\.max_share"):
        parse_recipe({**data, "validation": {"max_share": 0.7}}, "test")


# --- predictions ---------------------------------------------------------------------------


def write_clean_predictions(path: Path, rows: int = 40) -> Path:
    rng = np.random.default_rng(0)
    examples = [Example(text=f"t{i}", label=i % 3) for i in range(rows)]
    write_predictions(path, examples, rng.normal(size=(rows, 3)).astype(np.float32))
    return path


def edit_line(path: Path, line: int, column: str, value: str) -> None:
    """Set `column` of CSV line `line` (1-based, the header is line 1) to `value`."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[line - 1].split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def test_clean_predictions_pass(tmp_path: Path):
    csv = write_clean_predictions(tmp_path / "predictions.csv")
    report = validate_predictions(csv, LABELS, 40, CONFIG)
    assert report.success, report.message()
    assert report.message() == "data validation passed: predictions"
    assert report.suites[0].suite == "predictions"


@pytest.mark.parametrize(
    ("value", "expectation", "meaning"),
    [
        ("nan", "expect_column_values_to_not_be_null", "missing, NaN or not a number"),
        ("inf", "expect_column_values_to_be_between", "infinite"),
        ("-inf", "expect_column_values_to_be_between", "infinite"),
    ],
)
def test_non_finite_logit_fails(tmp_path: Path, value: str, expectation: str, meaning: str):
    csv = write_clean_predictions(tmp_path / "predictions.csv")
    edit_line(csv, 8, "logit_1", value)
    message = failure_message(validate_predictions(csv, LABELS, 40, CONFIG))
    assert message == (
        f"data validation failed: predictions: {expectation}(logit_1) — 1 of 40 rows {meaning}: "
        f"line 8: logit_1={value}"
    )


def test_missing_row_fails(tmp_path: Path):
    csv = write_clean_predictions(tmp_path / "predictions.csv")
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:18] + lines[19:]) + "\n")  # drops index 17
    message = failure_message(validate_predictions(csv, LABELS, 40, CONFIG))
    assert message == (
        "data validation failed: predictions: expect_table_row_count_to_equal() — "
        "one row per example, 40 rows (observed 39): index 17 missing"
    )


def test_out_of_range_prediction_and_unordered_index_fail(tmp_path: Path):
    csv = write_clean_predictions(tmp_path / "predictions.csv")
    edit_line(csv, 4, "prediction", "3")
    edit_line(csv, 6, "index", "40")
    message = failure_message(validate_predictions(csv, LABELS, 40, CONFIG))
    assert (
        "expect_column_values_to_be_in_set(prediction) — 1 of 40 rows with a prediction outside 0..2"
        in message
    )
    assert "line 4: prediction=3" in message
    assert (
        "expect_column_values_to_be_between(index) — 1 of 40 rows with an index outside 0..39: line 6"
        in message
    )


def write_probabilities(path: Path, rows: list[list[float]]) -> Path:
    """A predictions CSV with prob_* columns next to the logits (not written today)."""
    header = "index,label,prediction,logit_0,logit_1,logit_2,prob_0,prob_1,prob_2"
    body = [
        ",".join(str(v) for v in [i, 0, int(np.argmax(p)), *np.log(np.maximum(p, 1e-9)), *p])
        for i, p in enumerate(rows)
    ]
    path.write_text("\n".join([header, *body]) + "\n")
    return path


def test_probabilities_must_sum_to_one(tmp_path: Path):
    good = [[0.2, 0.3, 0.5], [0.9995, 0.0003, 0.0002], [1 / 3, 1 / 3, 1 / 3]]
    assert validate_predictions(write_probabilities(tmp_path / "ok.csv", good), LABELS, 3, CONFIG).success

    bad = [*good, [0.5, 0.3, 0.1], [0.7, 0.2, 0.2]]
    report = validate_predictions(write_probabilities(tmp_path / "bad.csv", bad), LABELS, 5, CONFIG)
    message = failure_message(report)
    assert message == (
        "data validation failed: predictions: expect_column_values_to_be_between(prob_sum) — "
        "2 of 5 rows whose probabilities do not sum to 1 ± 0.001: line 5: prob_sum=0.9, line 6: prob_sum=1.1"
    )


def test_probability_outside_unit_interval_fails(tmp_path: Path):
    csv = write_probabilities(tmp_path / "p.csv", [[1.5, -0.5, 0.0]])
    message = failure_message(validate_predictions(csv, LABELS, 1, CONFIG))
    assert (
        "expect_column_values_to_be_between(prob_0) — 1 of 1 rows outside 0..1: line 2: prob_0=1.5" in message
    )
    assert (
        "expect_column_values_to_be_between(prob_1) — 1 of 1 rows outside 0..1: line 2: prob_1=-0.5"
        in message
    )


def test_unreadable_predictions_are_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="cannot be read"):
        validate_predictions(tmp_path / "missing.csv", LABELS, 1, CONFIG)


# --- the real demo corpus --------------------------------------------------------------------


def test_demo_corpus_passes(settings: Settings, caplog: pytest.LogCaptureFixture):
    recipe = load_recipe(REPO / "recipes" / "minilm-sentiment.yaml")
    split_dir = prepare_splits(settings, recipe.dataset).path
    caplog.set_level(logging.INFO, logger="tasks.intake.validation")
    started = time.perf_counter()
    report = validate_splits(split_dir, recipe.dataset, recipe.validation)
    seconds = time.perf_counter() - started
    assert report.success, report.message()
    rows = sum(len(load_split(split_dir, name)) for name in ("train", "eval", "calibration"))
    assert rows > 30_000
    print(f"validate_splits on the demo corpus: {rows} rows in {seconds:.2f} s")

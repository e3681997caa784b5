"""Data validation: Great Expectations suites over the dataset split and the predictions file.

The suites are defined here in code and run on an ephemeral GE context (no project folder):
one suite per non-empty split (columns, empty texts, label range, duplicates, class shares,
text lengths, eval rows leaked into train or calibration), one over the share of unknown tokens
when the eval split is tokenized with a checkpoint's own tokenizer, and one over an evaluation's
predictions CSV (one row per example, prediction range, finite logits, probabilities). GE
does every check; pandas only loads the data and derives the columns a check needs (text
length, per-class share, whether an eval text is in another split, the sum of probabilities).
Great Expectations is imported inside the functions: it takes seconds to import, and the
Airflow DAG files import `tasks` on every parse.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field, computed_field, model_validator

from tasks.core.artifacts import StepResult, run_step
from tasks.core.config import Strict
from tasks.core.errors import CheckpointRefused, DataError, DataValidationError
from tasks.intake.data import DatasetConfig

if TYPE_CHECKING:
    from great_expectations.data_context import AbstractDataContext

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "eval", "calibration")
REPORT = "validation.json"
# Eval rows must not appear in these splits: a leaked row inflates accuracy (train) or lets the
# static quantizer calibrate on the very examples it is judged on (calibration).
LEAK_TARGETS: tuple[str, ...] = ("train", "calibration")
PROBABILITY_SUM_TOLERANCE = 1e-3
# The meta key that pairs a GE result with the check that made it.
CHECK_KEY = "slimline_check"
# Quoted texts are cut here so one message stays one readable line.
QUOTE_CHARS = 60


class ExpectationOutcome(BaseModel):
    """One expectation's verdict, with enough of the data to act on a failure."""

    expectation: str = Field(description="GE expectation type, e.g. expect_column_values_to_be_unique.")
    columns: list[str] = Field(default_factory=list, description="Columns it applies to; empty: the table.")
    description: str = Field(description="What a failure means, e.g. 'also in train'.")
    success: bool
    observed: str = Field(description="Observed value, short: '2 of 40 rows', '103.2'.")
    unexpected_count: int | None = Field(None, description="Offending rows; None for table-level checks.")
    examples: list[str] = Field(
        default_factory=list, description="Offending rows, at most max_failed_examples."
    )

    def line(self) -> str:
        """`expectation(columns) — what was observed: offending rows`."""
        target = f"{self.expectation}({', '.join(self.columns)})"
        if self.unexpected_count is not None:
            what = f"{self.observed} {self.description}"
        else:
            what = f"{self.description} (observed {self.observed})"
        examples = f": {', '.join(self.examples)}" if self.examples else ""
        return f"{target} — {what}{examples}"


class SuiteResult(BaseModel):
    """One suite run over one data set (a split, a predictions file)."""

    suite: str = Field(description="Suite name, e.g. split.eval.")
    data: str = Field(description="What was validated, e.g. eval.")
    success: bool
    evaluated: int = Field(description="Expectations evaluated.")
    outcomes: list[ExpectationOutcome]

    def failures(self) -> list[ExpectationOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.success]

    def summary(self) -> str:
        failed = self.failures()
        head = f"{self.suite} on {self.data}: {self.evaluated - len(failed)}/{self.evaluated} passed"
        if not failed:
            return head
        names = ", ".join(f"{o.expectation}({', '.join(o.columns)})" for o in failed)
        return f"{head}; failed: {names}"


class ValidationReport(BaseModel):
    suites: list[SuiteResult]

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented spelling for mypy
    @property
    def success(self) -> bool:
        return all(suite.success for suite in self.suites)

    def message(self) -> str:
        """One line naming each failed suite, its failed expectations and a few offending rows."""
        if self.success:
            return f"data validation passed: {', '.join(s.data for s in self.suites) or 'nothing to check'}"
        parts = [
            f"{suite.data}: {'; '.join(outcome.line() for outcome in suite.failures())}"
            for suite in self.suites
            if not suite.success
        ]
        return f"data validation failed: {' | '.join(parts)}"

    def raise_if_failed(self) -> None:
        if not self.success:
            raise DataValidationError(self.message())


@dataclass(frozen=True)
class _Check:
    """A GE expectation plus what its failure means, in words, for the message."""

    expectation: Any
    description: str
    # Replaces the offending-row examples where GE reports none (e.g. which rows are missing).
    examples: Callable[[], list[str]] | None = None


@dataclass(frozen=True)
class _Frame:
    """A dataframe to validate, the unit its rows count as, and how to quote one of its rows."""

    name: str
    frame: Any  # pandas.DataFrame (pandas ships no type information)
    unit: str
    quote: Callable[[Any, Any, list[str]], str]  # (index, row, columns) -> short text


def _gx_context() -> AbstractDataContext:
    """An ephemeral GE context with progress bars off and GE's import-time logging quiet."""
    # GE 1.24 sends no usage analytics, but earlier 1.x releases did unless this is false; set it so
    # a version change cannot start phoning home. setdefault leaves an operator's own choice alone.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        # Its import logs dozens of INFO lines about docs registration.
        gx_logger.setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # That module sets its own logger to INFO at import, which logs a line per ephemeral context.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _quote_text(text: object) -> str:
    value = str(text)
    return repr(value if len(value) <= QUOTE_CHARS else value[: QUOTE_CHARS - 1] + "…")


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)[:200]


def _exception_message(info: dict[str, Any]) -> str | None:
    """GE's exception_info is flat for an expectation that raised, and keyed by metric when a
    metric it needs raised (e.g. a missing column)."""
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _columns(kwargs: dict[str, Any]) -> list[str]:
    if "column" in kwargs:
        return [str(kwargs["column"])]
    for key in ("column_list", "column_set"):
        if kwargs.get(key) is not None:
            return [str(c) for c in kwargs[key]]
    return []


def _outcome(result: Any, check: _Check, target: _Frame, limit: int) -> ExpectationOutcome:
    config = result.expectation_config
    kwargs = dict(config.kwargs) if config is not None else {}
    details: dict[str, Any] = result.result or {}
    columns = _columns(kwargs)
    error = _exception_message(result.exception_info or {})
    examples: list[str] = []
    unexpected: int | None = None
    if error is not None:
        observed = f"error: {error}"
    elif "unexpected_count" in details:
        unexpected = int(details["unexpected_count"])
        observed = f"{unexpected} of {details['element_count']} {target.unit}"
        indices = details.get("partial_unexpected_index_list") or []
        examples = [target.quote(i, target.frame.loc[i], columns) for i in indices[:limit]]
    else:
        observed = _short(details.get("observed_value"))
        mismatched = (details.get("details") or {}).get("mismatched") or {}
        examples = [
            *(f"{column!r} missing" for column in mismatched.get("missing") or []),
            *(f"{column!r} unexpected" for column in mismatched.get("unexpected") or []),
        ][:limit]
    if not result.success and check.examples is not None:
        examples = check.examples()[:limit]
    return ExpectationOutcome(
        expectation=config.type if config is not None else type(check.expectation).__name__,
        columns=columns,
        description=check.description,
        success=bool(result.success),
        observed=observed,
        unexpected_count=unexpected,
        examples=examples,
    )


def _run_suite(
    context: AbstractDataContext, suite: str, data: str, frames: list[tuple[_Frame, list[_Check]]], limit: int
) -> SuiteResult:
    """Validate each frame against its checks (one GE batch and suite each) and merge the results
    into one suite for `data`: a suite's checks may need derived frames, e.g. one row per class."""
    import great_expectations as gx

    source = context.data_sources.add_pandas(f"{suite}")
    success, evaluated, outcomes = True, 0, []
    for target, checks in frames:
        definition = source.add_dataframe_asset(target.name).add_batch_definition_whole_dataframe("all")
        batch = definition.get_batch(batch_parameters={"dataframe": target.frame})
        gx_suite = gx.ExpectationSuite(name=f"{suite}.{target.name}")
        for number, check in enumerate(checks):
            # GE neither keeps suite order in its results nor assigns ids to an unsaved suite, so
            # each expectation carries its position in `checks` in its meta.
            check.expectation.meta = {**(check.expectation.meta or {}), CHECK_KEY: number}
            gx_suite.add_expectation(check.expectation)
        # SUMMARY keeps the first offending rows' indices without copying every unexpected value.
        result = batch.validate(
            gx_suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": max(limit, 1)}
        )
        success = success and bool(result.success)
        evaluated += int(result.statistics["evaluated_expectations"])
        by_number = {r.expectation_config.meta[CHECK_KEY]: r for r in result.results if r.expectation_config}
        if sorted(by_number) != list(range(len(checks))):  # pragma: no cover - guards against an API change
            raise RuntimeError(f"GE returned {len(by_number)} results for {len(checks)} expectations")
        outcomes += [_outcome(by_number[n], check, target, limit) for n, check in enumerate(checks)]
    return SuiteResult(suite=suite, data=data, success=success, evaluated=evaluated, outcomes=outcomes)


def _load_frame(split_dir: Path, name: str) -> Any:
    """The split file's rows as stored, without parsing them into examples: the suite is what
    says whether a column is missing or a value is null, so the file must reach it unrepaired."""
    import pandas as pd

    path = split_dir / f"{name}.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"split {path}: cannot be read ({exc.strerror})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"split {path}: line {number} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"split {path}: line {number} is not an object with text and label")
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def _split_checks(dataset: DatasetConfig, config: ValidationConfig, leaks: list[str]) -> list[_Check]:
    import great_expectations as gx

    e = gx.expectations
    allowed = list(range(len(dataset.labels)))
    checks = [
        _Check(
            e.ExpectTableColumnsToMatchSet(column_set=["text", "label"], exact_match=False),
            "required columns text, label",
        ),
        _Check(e.ExpectColumnValuesToNotBeNull(column="text"), "with no text"),
        _Check(
            e.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"), "empty or whitespace-only"
        ),
        _Check(e.ExpectColumnValuesToNotBeNull(column="label"), "with no label"),
        _Check(
            e.ExpectColumnValuesToBeInSet(column="label", value_set=allowed),
            f"with a label outside 0..{len(allowed) - 1} ({', '.join(dataset.labels)})",
        ),
        # On the text alone: two rows with one text are a duplicate whether or not they agree on
        # the label, and if they do not the data contradicts itself.
        _Check(e.ExpectColumnValuesToBeUnique(column="text"), "duplicated (same text)"),
        _Check(
            e.ExpectColumnValueLengthsToBeBetween(
                column="text", min_value=config.min_text_chars, max_value=config.max_text_chars
            ),
            f"outside {config.min_text_chars}..{config.max_text_chars} chars",
        ),
        _Check(
            e.ExpectColumnMeanToBeBetween(
                column="text_chars",
                min_value=config.min_mean_text_chars,
                max_value=config.max_mean_text_chars,
            ),
            f"mean text length outside {config.min_mean_text_chars:g}..{config.max_mean_text_chars:g} chars",
        ),
    ]
    checks += [
        _Check(e.ExpectColumnValuesToNotBeInSet(column=f"in_{other}", value_set=[True]), f"also in {other}")
        for other in leaks
    ]
    return checks


def _split_frame(name: str, raw: Any, labels: list[str], others: dict[str, set[str]]) -> _Frame:
    frame = raw.copy()
    if "text" in frame:
        frame["text_chars"] = frame["text"].astype("string").str.len()
        # GE's not-in-set check serialises its value set per metric (seconds for 35k train texts);
        # a membership column computed here once keeps the check linear and its message the same.
        for other, texts in others.items():
            frame[f"in_{other}"] = frame["text"].isin(texts)

    def quote(index: Any, row: Any, columns: list[str]) -> str:
        label = row.get("label")
        # pandas hands back numpy integers; a float or text label is shown as stored.
        known = isinstance(label, int | np.integer) and 0 <= int(label) < len(labels)
        shown = label.item() if isinstance(label, np.generic) else label
        named = labels[int(label)] if known else f"label {shown!r}"
        return f"{_quote_text(row.get('text'))} (line {int(index) + 1}, {named})"

    return _Frame(name=name, frame=frame, unit="rows", quote=quote)


def _share_frame(name: str, raw: Any, labels: list[str]) -> _Frame:
    """One row per recipe label (a label with no example has share 0, so it fails the minimum)."""
    import pandas as pd

    column = raw["label"] if "label" in raw else pd.Series(dtype=object)
    counts = [int((column == index).sum()) for index in range(len(labels))]
    total = len(raw)
    frame = pd.DataFrame({"label": labels, "count": counts, "share": [c / total for c in counts]})

    def quote(index: Any, row: Any, columns: list[str]) -> str:
        return f"{row['label']} {row['share']:.3f} ({row['count']} of {total} rows)"

    return _Frame(name=f"{name}-class-shares", frame=frame, unit="classes", quote=quote)


def _texts(raw: Any) -> set[str]:
    return set(raw["text"].dropna().astype(str)) if "text" in raw else set()


def validate_splits(split_dir: Path, dataset: DatasetConfig, config: ValidationConfig) -> ValidationReport:
    """Run one suite per non-empty split of a `prepare_splits` artifact (an empty calibration split,
    calibration_size 0, is skipped)."""
    import great_expectations as gx

    splits = {name: _load_frame(split_dir, name) for name in SPLITS}
    context = _gx_context()
    suites = []
    for name, raw in splits.items():
        if raw.empty:
            log.info("split %s is empty; not validated", name)
            continue
        leaks = [o for o in LEAK_TARGETS if name == "eval" and not splits[o].empty]
        rows = _split_frame(name, raw, dataset.labels, {o: _texts(splits[o]) for o in leaks})
        shares = _share_frame(name, raw, dataset.labels)
        share_check = _Check(
            gx.expectations.ExpectColumnValuesToBeBetween(
                column="share", min_value=config.min_class_share, max_value=config.max_class_share
            ),
            f"with a share outside {config.min_class_share:g}..{config.max_class_share:g}",
        )
        frames = [(rows, _split_checks(dataset, config, leaks)), (shares, [share_check])]
        suites.append(_run_suite(context, f"split.{name}", name, frames, config.max_failed_examples))
    report = ValidationReport(suites=suites)
    for suite in report.suites:
        log.info("%s", suite.summary())
    return report


def _read_predictions(path: Path) -> Any:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise DataError(f"predictions {path}: cannot be read ({exc})") from None
    return frame


def _prediction_frames(
    frame: Any, labels: list[str], expected_rows: int
) -> list[tuple[_Frame, list[_Check]]]:
    """The file itself, and (where it has probabilities) a derived frame of per-row sums: kept
    apart so the check that the file has exactly the columns written does not see the sum."""
    import great_expectations as gx
    import numpy as np
    import pandas as pd

    e = gx.expectations
    k = len(labels)
    logits = [f"logit_{i}" for i in range(k)]
    probs = [f"prob_{i}" for i in range(k)] if any(str(c).startswith("prob_") for c in frame.columns) else []
    # The layout is fixed by tasks.gate.evaluate.write_predictions; an extra logit column means a model
    # with more outputs than the recipe has labels.
    required = ["index", "label", "prediction", *logits, *probs]
    present = [c for c in required if c in frame.columns]
    for column in present:
        # A value pandas cannot read as a number becomes NaN, so the not-null check reports it.
        frame[column] = pd.to_numeric(frame[column], errors="coerce")

    def missing_indices() -> list[str]:
        seen = set(frame["index"].dropna().astype(int)) if "index" in present else set()
        return [f"index {i} missing" for i in range(expected_rows) if i not in seen]

    checks = [
        _Check(e.ExpectTableColumnsToMatchSet(column_set=required, exact_match=True), "columns as written"),
        _Check(
            e.ExpectTableRowCountToEqual(value=expected_rows),
            f"one row per example, {expected_rows} rows",
            examples=missing_indices,
        ),
    ]
    checks += [
        _Check(e.ExpectColumnValuesToNotBeNull(column=c), "missing, NaN or not a number") for c in present
    ]
    if "index" in present:
        checks += [
            _Check(e.ExpectColumnValuesToBeUnique(column="index"), "with a repeated index"),
            _Check(
                e.ExpectColumnValuesToBeBetween(column="index", min_value=0, max_value=expected_rows - 1),
                f"with an index outside 0..{expected_rows - 1}",
            ),
            # Gates pair baseline and variant predictions by row order, so the order is part of it.
            _Check(e.ExpectColumnValuesToBeIncreasing(column="index", strictly=True), "out of index order"),
        ]
    checks += [
        _Check(
            e.ExpectColumnValuesToBeInSet(column=c, value_set=list(range(k))),
            f"with a {c} outside 0..{k - 1} ({', '.join(labels)})",
        )
        for c in ("label", "prediction")
        if c in present
    ]
    # Between the largest finite floats: GE skips NaN in value checks (the not-null check has
    # them), so this catches exactly +inf and -inf.
    finite = float(np.finfo(np.float64).max)
    checks += [
        _Check(e.ExpectColumnValuesToBeBetween(column=c, min_value=-finite, max_value=finite), "infinite")
        for c in logits
        if c in present
    ]
    checks += [
        _Check(e.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1), "outside 0..1")
        for c in probs
        if c in present
    ]

    def quote(index: Any, row: Any, columns: list[str]) -> str:
        # Line numbers count the header, so they match what an editor shows.
        values = ", ".join(f"{c}={_short(row[c])}" for c in columns if c in row.index)
        return f"line {int(index) + 2}: {values}"

    frames = [(_Frame(name="predictions", frame=frame, unit="rows", quote=quote), checks)]
    if probs and all(c in present for c in probs):
        # skipna=False: a NaN probability makes the sum NaN (reported by its not-null check), not 1 - p.
        sums = pd.DataFrame({"prob_sum": frame[probs].sum(axis=1, skipna=False)}, index=frame.index)
        tolerance = PROBABILITY_SUM_TOLERANCE
        check = _Check(
            e.ExpectColumnValuesToBeBetween(
                column="prob_sum", min_value=1 - tolerance, max_value=1 + tolerance
            ),
            f"whose probabilities do not sum to 1 ± {tolerance:g}",
        )
        frames.append((_Frame(name="probability-sums", frame=sums, unit="rows", quote=quote), [check]))
    return frames


def validate_predictions(
    predictions_csv: Path, labels: list[str], expected_rows: int, config: ValidationConfig
) -> ValidationReport:
    """Run the predictions suite over a CSV written by `tasks.gate.evaluate.write_predictions`."""
    frames = _prediction_frames(_read_predictions(predictions_csv), labels, expected_rows)
    suite = _run_suite(_gx_context(), "predictions", "predictions", frames, config.max_failed_examples)
    log.info("%s", suite.summary())
    return ValidationReport(suites=[suite])


def validate_unknown_tokens(
    uri: str, checkpoint: Path, split_dir: Path, max_length: int, config: ValidationConfig
) -> ValidationReport:
    """The eval split tokenized with the checkpoint's tokenizer (truncated as evaluation does):
    the share of unknown tokens must stay within the recipe's bound. A tokenizer that does not
    match the data makes every gate pass on garbage, so a failure refuses the checkpoint
    (CheckpointRefused, not a data error: the data is fine, the checkpoint does not fit it)."""
    import great_expectations as gx
    import pandas as pd

    from tasks.core.models import load_tokenizer

    raw = _load_frame(split_dir, "eval")
    texts = [str(t) for t in raw["text"].dropna()] if "text" in raw else []
    tokenizer = load_tokenizer(checkpoint)
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    tokens = sum(len(row) for row in ids)
    unknown_id, unknown_token = tokenizer.unk_token_id, str(tokenizer.unk_token)
    unknown = sum(row.count(unknown_id) for row in ids) if unknown_id is not None else 0
    share = unknown / tokens if tokens else 0.0
    bound = config.max_unknown_token_share
    frame = pd.DataFrame({"unknown": [unknown], "tokens": [tokens], "unknown_share": [share]})

    def quote(index: Any, row: Any, columns: list[str]) -> str:
        return f"{row['unknown']} of {row['tokens']} tokens are {unknown_token}"

    check = _Check(
        gx.expectations.ExpectColumnValuesToBeBetween(column="unknown_share", min_value=0, max_value=bound),
        f"with a share of {unknown_token} tokens above {bound:.1%}",
    )
    target = _Frame(name="eval-unknown-tokens", frame=frame, unit="splits", quote=quote)
    suite = _run_suite(
        _gx_context(), "tokenizer.eval", "eval", [(target, [check])], config.max_failed_examples
    )
    log.info("%s", suite.summary())
    if not suite.success:
        raise CheckpointRefused(
            f"checkpoint {uri}: {share:.1%} of eval tokens are {unknown_token} ({unknown} of {tokens}), "
            f"allowed ≤ {bound:.1%} (recipe validation.max_unknown_token_share)"
        )
    return ValidationReport(suites=[suite])


def write_report(report: ValidationReport, out_dir: Path) -> Path:
    """Write `validation.json` into `out_dir` (temporary file, then rename: never half-written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{REPORT}.tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(report.model_dump(mode="json"), handle, indent=2, allow_nan=False)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def validate_split_step(
    artifacts_dir: Path, split: StepResult, dataset: DatasetConfig, config: ValidationConfig
) -> ValidationReport:
    """`validate_splits` as a cached step: the report is an artifact of the split it judged,
    kept whether it passed or failed (callers raise on failure after storing it)."""

    def work(out: Path) -> dict[str, Any]:
        report = validate_splits(split.path, dataset, config)
        write_report(report, out)
        return {"success": report.success, "suites": len(report.suites)}

    step_config = {"dataset": dataset.model_dump(mode="json"), "validation": config.model_dump(mode="json")}
    result = run_step(artifacts_dir, "validate.data", step_config, {"split": split.key}, work, code=__name__)
    return ValidationReport.model_validate_json((result.path / REPORT).read_text(encoding="utf-8"))


class ValidationConfig(Strict):
    min_class_share: float = Field(0.05, ge=0, le=1, description="Smallest share of any label in a split.")
    max_class_share: float = Field(0.8, ge=0, le=1, description="Largest share of any label in a split.")
    min_text_chars: int = Field(1, ge=1, description="Shortest text allowed, in characters.")
    max_text_chars: int = Field(1000, ge=1, description="Longest text allowed, in characters.")
    min_mean_text_chars: float = Field(3, ge=0, description="Lower bound on a split's mean text length.")
    max_mean_text_chars: float = Field(500, gt=0, description="Upper bound on a split's mean text length.")
    max_failed_examples: int = Field(5, ge=0, le=100, description="Offending rows quoted per expectation.")
    max_unknown_token_share: float = Field(
        0.05, ge=0, le=1, description="Largest share of eval tokens the checkpoint's tokenizer maps to [UNK]."
    )

    @model_validator(mode="after")
    def _ordered_bounds(self) -> ValidationConfig:
        for low, high in (
            ("min_class_share", "max_class_share"),
            ("min_text_chars", "max_text_chars"),
            ("min_mean_text_chars", "max_mean_text_chars"),
        ):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) must be below {high} ({getattr(self, high)})")
        return self

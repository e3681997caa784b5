"""Plain helpers that build tiny, offline test inputs: a BERT checkpoint and a sentiment CSV."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

SPECIAL_TOKENS: list[str] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

POSITIVE_WORDS: list[str] = ["love", "great", "awesome", "amazing", "happy", "best"]
NEGATIVE_WORDS: list[str] = ["hate", "terrible", "awful", "worst", "sad", "broken"]
SUBJECTS: list[str] = [
    "car", "cars", "phone", "movie", "game", "food", "coffee", "service", "weather", "day",
    "team", "song", "app", "flight", "hotel", "book", "show", "city",
]  # fmt: skip
NEUTRAL_WORDS: list[str] = [
    "the", "a", "is", "i", "not", "my", "this", "it", "was", "today", "new", "just", "got",
    "saw", "and", "of", "to", "in", "at", "on", "very", "so", "really", "good", "bad", "ok",
    "fine", "okay", "went", "bought",
]  # fmt: skip

VOCAB: list[str] = SPECIAL_TOKENS + POSITIVE_WORDS + NEGATIVE_WORDS + SUBJECTS + NEUTRAL_WORDS

LABELS: list[str] = ["negative", "neutral", "positive"]

_CUES: dict[str, list[str]] = {
    "negative": NEGATIVE_WORDS,
    "neutral": ["ok", "fine", "okay"],
    "positive": POSITIVE_WORDS,
}
# Filler words that carry no cue, so each text's label follows from exactly one cue word.
_FILLER: list[str] = [w for w in NEUTRAL_WORDS if w not in {"good", "bad", "not", *_CUES["neutral"]}]


def make_checkpoint(dest: Path, *, layers: int = 2, hidden: int = 32, heads: int = 2, seed: int = 0) -> Path:
    """Write a tiny randomly initialised BERT sequence classifier (safetensors) and its tokenizer."""
    import torch
    from transformers import (  # type: ignore[attr-defined]  # BertTokenizerFast: a lazy alias in v5
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,
    )

    dest.mkdir(parents=True, exist_ok=True)
    vocab_file = dest / "vocab.txt"
    vocab_file.write_text("".join(f"{token}\n" for token in VOCAB), encoding="utf-8")
    # transformers 5 ignores a `vocab_file=` constructor argument (it takes `vocab=`), while 4.x
    # takes `vocab_file=`; loading the folder that holds vocab.txt works the same on both.
    tokenizer = BertTokenizerFast.from_pretrained(
        str(dest), do_lower_case=True, model_max_length=128, local_files_only=True
    )
    if len(tokenizer) != len(VOCAB):  # pragma: no cover - guards against an API change
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {len(VOCAB)}")

    # Generic PretrainedConfig arguments, which BertConfig's typed signature does not list.
    labels: dict[str, Any] = {
        "num_labels": len(LABELS),
        "id2label": dict(enumerate(LABELS)),
        "label2id": {label: i for i, label in enumerate(LABELS)},
    }
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
        **labels,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    return dest


def _sentence(rng: random.Random, label: str) -> str:
    words = [rng.choice(_CUES[label]), rng.choice(SUBJECTS)]
    words += rng.sample(_FILLER, rng.randint(2, 6))
    rng.shuffle(words)
    return " ".join(words)


def make_dataset(path: Path, n: int = 240, seed: int = 0) -> Path:
    """Write a `text,label` CSV of `n` unique texts whose label follows from its cue word."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 1000 * max(n, 1):  # pragma: no cover - the word space is far larger
            raise RuntimeError(f"could not make {n} unique texts")
        label = LABELS[len(rows) % len(LABELS)]
        text = _sentence(rng, label)
        if text in seen:
            continue
        seen.add(text)
        rows.append((text, label))
    rng.shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path

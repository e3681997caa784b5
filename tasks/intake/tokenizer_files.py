"""The tokenizer a checkpoint must carry, and the size of its vocabulary, read from the files.

Without tokenizer files transformers builds a blank tokenizer that maps every word to the unknown
token, and every gate then passes on garbage; so a checkpoint needs the fast `tokenizer.json` or
the vocabulary files its architecture's tokenizer reads. Sizes come from bounded reads of those
files: no tokenizer code runs at verification time.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.core.errors import CheckpointRefused

FAST = "tokenizer.json"
# The files each architecture's own (slow) tokenizer reads, when there is no tokenizer.json.
VOCABULARY_FILES: dict[str, tuple[str, ...]] = {
    "bert": ("vocab.txt",),
    "electra": ("vocab.txt",),
    "roberta": ("vocab.json", "merges.txt"),
    "xlm-roberta": ("sentencepiece.bpe.model",),
}
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
# XLMRobertaTokenizer shifts the sentencepiece ids by one and appends <mask>.
SENTENCEPIECE_EXTRA = {"xlm-roberta": 2}


def _read(uri: str, path: Path, name: str) -> bytes:
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise CheckpointRefused(f"checkpoint {uri}: {name} exceeds {MAX_TOKENIZER_BYTES} bytes")
    return path.read_bytes()


def _json(uri: str, data: bytes, name: str) -> object:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointRefused(f"checkpoint {uri}: {name} is not valid JSON ({exc})") from None


def _ids_size(uri: str, name: str, ids: list[object]) -> int:
    numbers = [i for i in ids if isinstance(i, int) and not isinstance(i, bool) and i >= 0]
    if len(numbers) != len(ids):
        raise CheckpointRefused(f"checkpoint {uri}: {name} has a token id that is not a whole number ≥ 0")
    return max(numbers, default=-1) + 1


def _fast_size(uri: str, data: bytes) -> int:
    """Ids in tokenizer.json: its model's vocabulary (a token -> id map, or a list of pieces for a
    unigram model) and the added tokens."""
    doc = _json(uri, data, FAST)
    model = doc.get("model") if isinstance(doc, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    added = doc.get("added_tokens") if isinstance(doc, dict) else None
    if not isinstance(vocab, dict | list) or not isinstance(added, list | None):
        raise CheckpointRefused(
            f"checkpoint {uri}: {FAST} has no model vocabulary; allowed: a tokenizers-library file"
        )
    size = _ids_size(uri, FAST, list(vocab.values())) if isinstance(vocab, dict) else len(vocab)
    added_ids = [t.get("id") if isinstance(t, dict) else None for t in added or []]
    return max(size, _ids_size(uri, FAST, added_ids))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos
    raise ValueError("truncated varint")


def _sentencepiece_pieces(data: bytes) -> int:
    """Count the pieces (field 1, repeated) of a sentencepiece ModelProto, skipping other fields."""
    pieces = pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            pos += length
            pieces += field == 1
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(data):
            raise ValueError("field runs past the end")
    return pieces


def _files_size(uri: str, folder: Path, model_type: str, names: tuple[str, ...]) -> int:
    first = names[0]
    data = _read(uri, folder / first, first)
    if first == "vocab.txt":
        # One token per line, as BertTokenizer reads it.
        return data.count(b"\n") + (bool(data) and not data.endswith(b"\n"))
    if first == "vocab.json":
        vocab = _json(uri, data, first)
        if not isinstance(vocab, dict):
            raise CheckpointRefused(f"checkpoint {uri}: {first} is not a token -> id map")
        return _ids_size(uri, first, list(vocab.values()))
    try:
        return _sentencepiece_pieces(data) + SENTENCEPIECE_EXTRA.get(model_type, 0)
    except ValueError as exc:
        raise CheckpointRefused(f"checkpoint {uri}: {first} is not a sentencepiece model ({exc})") from None


def check_tokenizer(uri: str, folder: Path, model_type: str, embedding_rows: int) -> None:
    """A tokenizer is present and each of its token ids has an embedding row."""
    alternatives = [(FAST,), VOCABULARY_FILES[model_type]]
    present = next((names for names in alternatives if all((folder / n).is_file() for n in names)), None)
    if present is None:
        raise CheckpointRefused(
            f"checkpoint {uri}: no tokenizer; a {model_type} checkpoint needs {FAST} or "
            f"{' + '.join(VOCABULARY_FILES[model_type])}"
        )
    name = present[0]
    if name == FAST:
        size = _fast_size(uri, _read(uri, folder / FAST, FAST))
    else:
        size = _files_size(uri, folder, model_type, present)
    if size == 0:
        raise CheckpointRefused(
            f"checkpoint {uri}: {name} holds no tokens; allowed: a tokenizer's vocabulary"
        )
    if size > embedding_rows:
        raise CheckpointRefused(
            f"checkpoint {uri}: {name} has {size} tokens but the embeddings have {embedding_rows} rows "
            "(config.json vocab_size); allowed: at most one token per embedding row"
        )

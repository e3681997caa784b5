"""Property: any mutant of a good checkpoint is either refused with a SlimlineError, or passes and
then loads and classifies a few texts. Never another exception, never memory beyond a bound.

Hypothesis truncates files, flips bits in the safetensors header, sets config numbers to odd
values (huge, negative, zero, floats, text), deletes and renames files, and replaces files by
symbolic or hard links to a copy outside the folder. The limits in the default settings, checked
before anything loads, are what keeps a passing mutant small.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tasks.core.errors import SlimlineError
from tasks.core.models import load_classifier, load_tokenizer
from tasks.core.settings import Settings
from tasks.intake.checkpoints import verify_folder

FILES = ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json"]
CONFIG_NUMBERS = [
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "type_vocab_size", "pad_token_id", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "layer_norm_eps", "initializer_range", "num_labels",
]  # fmt: skip
ODD_VALUES = st.one_of(
    st.integers(-3, 300),
    st.sampled_from([10**5, 65_536, 2**31, 10**18, 2**70]),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    st.text(max_size=4),
    st.booleans(),
    st.none(),
)
NEW_NAMES = ["model.bin", "weights.safetensors", "vocab.json", "notes.txt", "evil.py", "sub/config.json"]
TEXTS = ["i love this car", "the worst flight today", "ok fine coffee"]
# Peak resident memory of this process (torch loaded, tiny models built) stays well below this.
MAX_RSS_BYTES = 3 * 1024**3

Mutation = Callable[[Path, Path], None]  # (checkpoint folder, a scratch folder outside it)


def _truncate(name: str, fraction: float) -> Mutation:
    def apply(folder: Path, outside: Path) -> None:
        path = folder / name
        if path.exists():
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * fraction)])

    return apply


def _flip_header(position: int, bit: int) -> Mutation:
    """Flip one bit in the safetensors length field or JSON header."""

    def apply(folder: Path, outside: Path) -> None:
        path = folder / "model.safetensors"
        if not path.exists():
            return
        data = bytearray(path.read_bytes())
        if len(data) < 8:
            return
        (header_len,) = struct.unpack("<Q", data[:8])
        index = position % min(len(data), 8 + header_len)
        data[index] ^= 1 << bit
        path.write_bytes(bytes(data))

    return apply


def _config_number(key: str, value: Any) -> Mutation:
    def apply(folder: Path, outside: Path) -> None:
        path = folder / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(config, dict):
            config[key] = value
            path.write_text(json.dumps(config))

    return apply


def _delete(name: str) -> Mutation:
    def apply(folder: Path, outside: Path) -> None:
        (folder / name).unlink(missing_ok=True)

    return apply


def _rename(name: str, new: str) -> Mutation:
    def apply(folder: Path, outside: Path) -> None:
        if (folder / name).exists():
            (folder / new).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).rename(folder / new)

    return apply


def _link(name: str, hard: bool) -> Mutation:
    """Move the file outside the folder and leave a link to it in its place."""

    def apply(folder: Path, outside: Path) -> None:
        path = folder / name
        if not path.exists() or path.is_symlink() or path.stat().st_nlink > 1:
            return  # linked already
        target = outside / f"{name}.{'hard' if hard else 'sym'}"
        shutil.move(path, target)
        if hard:
            os.link(target, path)
        else:
            path.symlink_to(target)

    return apply


MUTATIONS = st.one_of(
    st.builds(_truncate, st.sampled_from(FILES), st.floats(0, 1)),
    st.builds(_flip_header, st.integers(0, 10**6), st.integers(0, 7)),
    st.builds(_config_number, st.sampled_from(CONFIG_NUMBERS), ODD_VALUES),
    st.builds(_delete, st.sampled_from(FILES)),
    st.builds(_rename, st.sampled_from(FILES), st.sampled_from(NEW_NAMES)),
    st.builds(_link, st.sampled_from(FILES), st.booleans()),
)


def _classify(folder: Path) -> Any:
    import torch

    model = load_classifier(folder)
    tokenizer = load_tokenizer(folder)
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
@example(mutations=[_config_number("num_labels", None)])  # crashed transformers' config once
def test_mutants_are_refused_or_run_to_a_result(
    _tiny_checkpoint_template: Path, mutations: list[Mutation]
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder, outside = Path(scratch) / "ckpt", Path(scratch) / "outside"
        shutil.copytree(_tiny_checkpoint_template, folder)
        outside.mkdir()
        for mutate in mutations:
            mutate(folder, outside)
        try:
            verify_folder("file:///mutant", folder, Settings(home=Path(scratch) / "home"))
        except SlimlineError as exc:
            assert str(exc).startswith("checkpoint file:///mutant: ") and "\n" not in str(exc)
            event("refused")
            return
        event("passed verification")
        logits = _classify(folder)
        assert logits.shape[0] == len(TEXTS)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < MAX_RSS_BYTES

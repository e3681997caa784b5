"""`trim.vocabulary` on a tiny BERT whose vocabulary holds pieces the generated tweets never use."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tasks.compress.technique import TechniqueContext
from tasks.compress.techniques import TECHNIQUES
from tasks.compress.techniques import vocab as vocab_module
from tasks.compress.techniques.onnx_export import OnnxExportConfig, export_onnx
from tasks.compress.techniques.vocab import VocabTrimConfig, trim_vocabulary
from tasks.core.errors import TechniqueError
from tasks.core.inference import OnnxPredictor
from tasks.core.models import ModelRef
from tasks.intake.data import load_split
from tests.factories import LABELS, NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, SUBJECTS
from tests.tiny import make_context

# BERT's layout in miniature: [PAD] first, then unused slots, then the other specials, so that
# trimming moves [UNK]/[CLS]/[SEP]/[MASK] to new ids (as in MiniLM, where [CLS] goes from 101 to 2).
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EMO]"]
LEADING = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EMO]"]
WORDS = POSITIVE_WORDS + NEGATIVE_WORDS + SUBJECTS + NEUTRAL_WORDS
# Pieces the generated dataset never produces: whole words, suffixes, and single characters.
UNUSED = ["rain", "train", "sun", "##shine", "##s", "##ing", "zebra", "piano", "x", "y", "z", "q"]
UNUSED += ["##x", "##y", "##z", "##q", "##a", "##i"]
VOCAB = LEADING + WORDS + UNUSED
SINGLE_CHARACTERS = {t for t in VOCAB if len(t.removeprefix("##")) == 1}
HIDDEN = 32


def make_wide_checkpoint(dest: Path) -> Path:
    """Like tests.factories.make_checkpoint, but with the vocabulary above and [EMO] registered
    as an additional special token."""
    from transformers import (  # type: ignore[attr-defined]  # BertTokenizerFast: a lazy alias in v5
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,
    )

    dest.mkdir(parents=True)
    (dest / "vocab.txt").write_text("".join(f"{t}\n" for t in VOCAB), encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(
        str(dest), do_lower_case=True, model_max_length=128, local_files_only=True
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["[EMO]"]})
    assert len(tokenizer) == len(VOCAB)
    # A generic PretrainedConfig argument, which BertConfig's typed signature does not list.
    labels: dict[str, Any] = {"num_labels": len(LABELS)}
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=HIDDEN * 2,
        max_position_embeddings=128,
        **labels,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    # transformers 4.x also lists the special tokens by id in tokenizer_config.json; those ids
    # must be renumbered too, so the fixture carries them.
    tokenizer_config = json.loads((dest / "tokenizer_config.json").read_text())
    tokenizer_config["added_tokens_decoder"] = {
        str(VOCAB.index(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                              "single_word": False, "special": True}
        for t in SPECIALS
    }  # fmt: skip
    (dest / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return dest


def run_trim(base: Path, context: TechniqueContext, name: str, **config: Any) -> ModelRef:
    out = base / name
    out.mkdir()
    return trim_vocabulary(context.teacher, VocabTrimConfig(**config), out, context)


def vocab_of(folder: Path) -> list[str]:
    return (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()


def embedding(folder: Path) -> torch.Tensor:
    return load_file(str(folder / "model.safetensors"))["bert.embeddings.word_embeddings.weight"]


def train_counts(context: TechniqueContext) -> Counter[str]:
    # Every generated word is a whole vocabulary entry, so whitespace splitting is the tokenization.
    return Counter(w for e in load_split(context.split_dir, "train") for w in e.text.split())


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vocab")


@pytest.fixture(scope="module")
def context(base: Path) -> TechniqueContext:
    return make_context(base / "data", make_wide_checkpoint(base / "hf"))


@pytest.fixture(scope="module")
def trimmed(base: Path, context: TechniqueContext) -> ModelRef:
    return run_trim(base, context, "trimmed")


@pytest.fixture(scope="module")
def in_vocabulary_eval(trimmed: ModelRef, context: TechniqueContext) -> list[str]:
    kept = set(vocab_of(trimmed.path))
    texts = [e.text for e in load_split(context.split_dir, "eval")]
    chosen = [t for t in texts if set(t.split()) <= kept]
    assert chosen, "the generated eval split should share its words with train"
    return chosen


def test_registered_as_data_driven_hf_to_hf():
    spec = TECHNIQUES["trim.vocabulary"]
    assert (spec.accepts, spec.produces, spec.uses_data) == (("hf",), "hf", True)
    assert spec.config is VocabTrimConfig


def test_keeps_exactly_corpus_pieces_specials_and_single_characters_in_original_order(trimmed, context):
    expected_set = set(SPECIALS) | set(train_counts(context)) | SINGLE_CHARACTERS
    expected = [t for t in VOCAB if t in expected_set]
    assert vocab_of(trimmed.path) == expected
    assert "rain" not in expected and "[unused0]" not in expected and "##x" in expected

    rows = embedding(trimmed.path)
    assert tuple(rows.shape) == (len(expected), HIDDEN)
    original = embedding(context.teacher.path)
    torch.testing.assert_close(rows, original[[VOCAB.index(t) for t in expected]], rtol=0, atol=0)

    config = json.loads((trimmed.path / "config.json").read_text())
    assert config["vocab_size"] == len(expected)
    assert config["pad_token_id"] == expected.index("[PAD]") == 0
    report = json.loads((trimmed.path / "technique_report.json").read_text())
    assert report["kept_tokens"] == len(expected)
    assert report["original_vocab_size"] == len(VOCAB)
    assert report["embedding_bytes_before"] - report["embedding_bytes_after"] == (
        (len(VOCAB) - len(expected)) * HIDDEN * 4
    )
    assert report["max_abs_logit_difference"] <= 1e-5


def test_in_vocabulary_text_tokenizes_the_same_and_scores_the_same(trimmed, context, in_vocabulary_eval):
    texts = [*in_vocabulary_eval[:12], "the car xyz", "[EMO] i love it"]
    old_tok = AutoTokenizer.from_pretrained(context.teacher.path)
    new_tok = AutoTokenizer.from_pretrained(trimmed.path)
    new_ids = {t: i for i, t in enumerate(vocab_of(trimmed.path))}
    old_to_new = {VOCAB.index(t): i for t, i in new_ids.items()}
    old = old_tok(texts, padding=True, return_tensors="pt")
    new = new_tok(texts, padding=True, return_tensors="pt")
    for row in range(len(texts)):
        assert old_tok.convert_ids_to_tokens(old["input_ids"][row]) == new_tok.convert_ids_to_tokens(
            new["input_ids"][row]
        )
    assert new["input_ids"].tolist() == [[old_to_new[i] for i in ids] for ids in old["input_ids"].tolist()]
    assert new_tok.tokenize("the car xyz") == ["the", "car", "x", "##y", "##z"]
    # tokenizers' own loader reads the edited tokenizer.json the same way.
    raw = Tokenizer.from_file(str(trimmed.path / "tokenizer.json"))
    assert raw.encode(texts[0]).ids == [i for i in new["input_ids"][0].tolist() if i != new_tok.pad_token_id]

    before = AutoModelForSequenceClassification.from_pretrained(context.teacher.path).eval()
    after = AutoModelForSequenceClassification.from_pretrained(trimmed.path).eval()
    with torch.inference_mode():
        torch.testing.assert_close(after(**new).logits, before(**old).logits, rtol=0, atol=1e-5)


def test_report_counts_in_vocabulary_share_and_changed_tokenizations(base, context):
    counts = train_counts(context)
    # Drop the rarest training words (and the single characters) so some eval texts change.
    threshold = sorted(set(counts.values()))[1]
    model = run_trim(base, context, "rare-dropped", min_count=threshold, keep_single_characters=False)
    kept_words = {w for w, n in counts.items() if n >= threshold}
    assert 0 < len(kept_words) < len(counts)
    assert vocab_of(model.path) == [t for t in VOCAB if t in set(SPECIALS) | kept_words]

    evals = [e.text for e in load_split(context.split_dir, "eval")]
    in_vocabulary = [t for t in evals if set(t.split()) <= kept_words]
    report = json.loads((model.path / "technique_report.json").read_text())
    assert report["eval_texts"] == len(evals)
    assert report["eval_in_vocabulary"] == len(in_vocabulary) > 0
    assert report["eval_in_vocabulary_share"] == pytest.approx(len(in_vocabulary) / len(evals))
    # Every dropped word is one piece that now reads [UNK]: those texts, and only those, change.
    assert report["eval_tokenization_changed"] == len(evals) - len(in_vocabulary) > 0
    dropped = sum(1 for t in evals for w in t.split() if w not in kept_words)
    assert report["eval_unknown_pieces_after"] - report["eval_unknown_pieces_before"] == dropped


def test_out_of_vocabulary_words_still_tokenize(trimmed, base, context):
    tokenizer = AutoTokenizer.from_pretrained(trimmed.path)
    # Dropped words become [UNK]; an unseen word made of kept characters splits into pieces.
    assert tokenizer.tokenize("sunshine rain zax") == ["[UNK]", "[UNK]", "z", "##a", "##x"]
    ids = tokenizer("sunshine rain zax")["input_ids"]
    assert max(ids) < len(vocab_of(trimmed.path))
    assert tokenizer.decode(ids, skip_special_tokens=True) == "zax"

    bare = run_trim(base, context, "no-single-characters", keep_single_characters=False)
    assert AutoTokenizer.from_pretrained(bare.path).tokenize("zax xyz") == ["[UNK]", "[UNK]"]
    assert len(vocab_of(bare.path)) == len(vocab_of(trimmed.path)) - len(SINGLE_CHARACTERS - {"a", "i"})


def test_special_tokens_agree_between_tokenizer_vocab_and_config(trimmed):
    tokenizer = AutoTokenizer.from_pretrained(trimmed.path)
    new_ids = {t: i for i, t in enumerate(vocab_of(trimmed.path))}
    assert [new_ids[t] for t in SPECIALS] == [0, 1, 2, 3, 4, 5]  # moved: [CLS] was 5, now 2
    assert tokenizer.pad_token_id == new_ids["[PAD]"]
    assert tokenizer.cls_token_id == new_ids["[CLS]"] and tokenizer.sep_token_id == new_ids["[SEP]"]
    assert tokenizer.mask_token_id == new_ids["[MASK]"] and tokenizer.unk_token_id == new_ids["[UNK]"]
    config = json.loads((trimmed.path / "config.json").read_text())
    assert config["pad_token_id"] == tokenizer.pad_token_id
    decoder = json.loads((trimmed.path / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {int(i): entry["content"] for i, entry in decoder.items()} == {new_ids[t]: t for t in SPECIALS}
    batch = tokenizer(["i love it", "the [MASK] [EMO] car is ok"], padding=True)["input_ids"]
    assert batch[0][0] == batch[1][0] == new_ids["[CLS]"]
    assert batch[0][4] == new_ids["[SEP]"] and batch[0][-1] == new_ids["[PAD]"]
    assert batch[1][2:4] == [new_ids["[MASK]"], new_ids["[EMO]"]]
    raw = Tokenizer.from_file(str(trimmed.path / "tokenizer.json"))
    assert raw.encode("i love it").ids == batch[0][:5]


def test_trimmed_model_exports_to_onnx_and_matches_pytorch(trimmed, base, context):
    out = base / "onnx"
    out.mkdir()
    exported = export_onnx(trimmed, OnnxExportConfig(), out, context)
    graph = onnx.load(str(out / "model.onnx"))
    shapes = [list(i.dims) for i in graph.graph.initializer]
    assert [len(vocab_of(trimmed.path)), HIDDEN] in shapes and [len(VOCAB), HIDDEN] not in shapes

    texts = ["i love this great car", "sunshine zax and the [MASK]", "ok"]
    tokenizer = AutoTokenizer.from_pretrained(trimmed.path)
    model = AutoModelForSequenceClassification.from_pretrained(trimmed.path).eval()
    with torch.inference_mode():
        expected = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    batch = {k: np.asarray(v) for k, v in tokenizer(texts, padding=True, return_tensors="np").items()}
    np.testing.assert_allclose(OnnxPredictor(exported.path, threads=1).logits(batch), expected, atol=1e-4)


def test_a_wrong_embedding_fails_the_check_and_leaves_no_model(base, context, monkeypatch):
    # Swap the kept rows around: the tokenizer is right, the weights are not.
    monkeypatch.setattr(vocab_module, "select_rows", lambda weight, kept: weight.detach()[kept[::-1]].clone())
    out = base / "broken-rows"
    out.mkdir()
    with pytest.raises(TechniqueError, match=r"logits on in-vocabulary eval texts moved by"):
        trim_vocabulary(context.teacher, VocabTrimConfig(), out, context)
    assert list(out.iterdir()) == []


def test_stale_special_ids_fail_the_tokenizer_check(base, context, monkeypatch):
    # Leave the post-processor's [CLS]/[SEP] ids unrenumbered, a plausible editing slip.
    monkeypatch.setattr(vocab_module, "_remap_processor", lambda processor, new_id: None)
    out = base / "stale-specials"
    out.mkdir()
    with pytest.raises(TechniqueError, match=r"is in-vocabulary but tokenizes differently"):
        trim_vocabulary(context.teacher, VocabTrimConfig(), out, context)
    assert list(out.iterdir()) == []


def test_an_empty_corpus_is_an_error_naming_the_split(base, tmp_path, context):
    empty = make_context(tmp_path / "nocalib", context.teacher.path, calibration=0)
    with pytest.raises(TechniqueError, match=r"split 'calibration' holds no examples"):
        trim_vocabulary(context.teacher, VocabTrimConfig(corpus_splits=("calibration",)), tmp_path, empty)


def test_a_checkpoint_without_a_classifier_head_is_refused(tmp_path, context):
    # Loading it would initialise a random head, which the output would then carry as if trained.
    copy = Path(shutil.copytree(context.teacher.path, tmp_path / "encoder-only"))
    weights = load_file(str(copy / "model.safetensors"))
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("classifier.")}, copy / "model.safetensors"
    )
    out = tmp_path / "out"
    with pytest.raises(TechniqueError, match=r"needs a sequence-classification checkpoint.*classifier"):
        trim_vocabulary(ModelRef(path=copy, format="hf"), VocabTrimConfig(), out, context)
    assert list(out.iterdir()) == []


def test_a_non_wordpiece_tokenizer_is_refused(tmp_path, context):
    copy = Path(shutil.copytree(context.teacher.path, tmp_path / "bpe"))
    spec = json.loads((copy / "tokenizer.json").read_text())
    spec["model"]["type"] = "BPE"
    (copy / "tokenizer.json").write_text(json.dumps(spec))
    model = ModelRef(path=copy, format="hf")
    with pytest.raises(TechniqueError, match=r"supports WordPiece tokenizers .* 'BPE'"):
        trim_vocabulary(model, VocabTrimConfig(), tmp_path / "out", context)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_count", 0),
        ("corpus_splits", ["eval"]),
        ("corpus_splits", []),
        ("corpus_splits", ["train", "train"]),
        ("keep_single_chars", True),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        VocabTrimConfig.model_validate({field: value})

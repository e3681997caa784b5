"""`trim.vocabulary`: drop the word pieces a domain never uses from a WordPiece (BERT-family)
checkpoint, shrinking the input embedding matrix that edge targets pay for in full.

MiniLM's 30,522 × 384 embedding matrix is half of its weights, yet one domain's texts use
a fraction of the vocabulary. The technique keeps the pieces the domain corpus produces, every
special token and (by default) every single character, renumbers them in their original order,
and then proves on the eval split that texts made only of kept pieces tokenize and score exactly
as before. Everything it writes is a plain HF folder: tokenizer files edited as JSON/text,
weights saved with safetensors.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from tasks.compress.technique import TechniqueConfig, TechniqueContext, technique
from tasks.core.errors import TechniqueError
from tasks.core.models import ModelRef, load_classifier, low_rank_layout, write_report

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Kept rows are copied bit for bit, so in-vocabulary logits should agree exactly; the bound
# only absorbs kernel-level nondeterminism, it is not a quality budget.
LOGIT_TOLERANCE = 1e-5
STANDARD_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# config.json fields that hold token ids and must follow the renumbering.
CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")
TOKENIZER_JSON = "tokenizer.json"
VOCAB_TXT = "vocab.txt"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CORPUS_CHUNK = 2048  # texts per tokenizers.encode_batch call: bounded memory on large corpora
BATCH = 32  # texts per forward pass in the equivalence check


class VocabTrimConfig(TechniqueConfig):
    corpus_splits: tuple[Literal["train", "calibration"], ...] = Field(
        ("train",),
        min_length=1,
        description="Splits whose texts are the domain corpus (never eval: eval judges the result).",
    )
    min_count: int = Field(
        1, ge=1, le=1_000_000, description="Keep a word piece seen at least this many times in the corpus."
    )
    keep_single_characters: bool = Field(
        True,
        description="Also keep every one-character piece and its ## form, so unseen words split "
        "into pieces instead of collapsing to [UNK].",
    )

    @field_validator("corpus_splits")
    @classmethod
    def _distinct(cls, splits: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(splits)) != len(splits):
            raise ValueError(f"corpus_splits must not repeat a split, got {list(splits)}")
        return splits


@dataclass(frozen=True)
class VocabPlan:
    """Which ids survive and their new numbers (old ids ascending, so relative order is kept)."""

    tokens: list[str]  # old id -> token (WordPiece vocab and added tokens, dense)
    unk_token: str
    kept: list[int]  # old ids, ascending; new id = position
    corpus_kept: int
    special_kept: int
    single_character_kept: int

    @property
    def old_to_new(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.kept)}


@technique("trim.vocabulary", VocabTrimConfig, accepts=("hf",), produces="hf", uses_data=True)
def trim_vocabulary(
    model: ModelRef, config: VocabTrimConfig, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Keep only the word pieces the domain corpus uses; prove eval logits unchanged on kept text.

    tokenizers counts the pieces and re-reads the edited tokenizer.json, torch slices the
    embedding rows, transformers saves the model (safetensors) and runs both for the proof."""
    from tasks.intake.data import load_split

    spec = _read_json(model.path / TOKENIZER_JSON)
    corpus = _load_texts(context.split_dir, config.corpus_splits, load_split)
    plan = plan_vocabulary(model.path, spec, corpus, config)
    eval_texts = _load_texts(context.split_dir, ("eval",), load_split)
    log.info(
        "trim.vocabulary: keeping %d of %d tokens (%d from the corpus)",
        len(plan.kept),
        len(plan.tokens),
        plan.corpus_kept,
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    # Write into a folder beside the final files and move them in only after the proof passed,
    # so a failed check leaves no model behind, even for callers outside tasks.core.artifacts.run_step.
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=".trim-vocabulary-"))
    try:
        write_tokenizer_files(model.path, staging, spec, plan)
        report = _trim_and_verify(model.path, staging, plan, eval_texts, context.max_length)
        for item in sorted(staging.iterdir()):
            os.replace(item, output_dir / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = {
        "technique": "trim.vocabulary",
        "config": config.model_dump(mode="json"),
        "corpus_texts": len(corpus),
        **report,
    }
    write_report(output_dir, report)
    return ModelRef(path=output_dir, format="hf")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TechniqueError(f"trim.vocabulary: {path.name} is missing from {path.parent}") from None
    except json.JSONDecodeError as exc:
        raise TechniqueError(f"trim.vocabulary: {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TechniqueError(f"trim.vocabulary: {path} does not hold a JSON object")
    return data


def _load_texts(split_dir: Path, splits: Iterable[str], load: Callable[[Path, str], list[Any]]) -> list[str]:
    texts: list[str] = []
    names = list(splits)
    for name in names:
        if not (split_dir / f"{name}.jsonl").exists():
            raise TechniqueError(f"trim.vocabulary: split {name!r} is missing from {split_dir}")
        texts += [example.text for example in load(split_dir, name)]
    if not texts:
        raise TechniqueError(
            f"trim.vocabulary: split {' + '.join(map(repr, names))} holds no examples in {split_dir}"
        )
    return texts


def _wordpiece(spec: Mapping[str, Any]) -> tuple[dict[str, int], str, str]:
    model = spec.get("model") or {}
    if model.get("type") != "WordPiece":
        raise TechniqueError(
            f"trim.vocabulary supports WordPiece tokenizers (BERT family); tokenizer.json has "
            f"model type {model.get('type')!r}"
        )
    return (
        dict(model["vocab"]),
        str(model.get("unk_token", "[UNK]")),
        str(model.get("continuing_subword_prefix", "##")),
    )


def _id_table(spec: Mapping[str, Any]) -> list[str]:
    """Old id -> token over the WordPiece vocab and the added tokens, which must be dense."""
    vocab, _, _ = _wordpiece(spec)
    by_id = {index: token for token, index in vocab.items()}
    for added in spec.get("added_tokens") or []:
        index, content = int(added["id"]), str(added["content"])
        if content in vocab and vocab[content] != index:
            raise TechniqueError(
                f"trim.vocabulary: added token {content!r} has id {index} but vocab id {vocab[content]}"
            )
        by_id[index] = content
    if sorted(by_id) != list(range(len(by_id))):
        raise TechniqueError("trim.vocabulary: tokenizer.json token ids are not 0..n-1 without gaps")
    return [by_id[index] for index in range(len(by_id))]


def _token_strings(value: Any) -> list[str]:
    """Token strings from a special_tokens_map/tokenizer_config value: str, AddedToken dict or list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return [value["content"]]
    if isinstance(value, list):
        return [token for item in value for token in _token_strings(item)]
    return []


def special_tokens(folder: Path, spec: Mapping[str, Any]) -> set[str]:
    """Every token any tokenizer file treats as special, plus all added tokens: they are matched
    before WordPiece runs, so dropping one would change how texts that contain it tokenize."""
    _, unk, _ = _wordpiece(spec)
    found = {*STANDARD_SPECIALS, unk}
    found |= {str(added["content"]) for added in spec.get("added_tokens") or []}
    for name in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):
        if not (folder / name).exists():
            continue
        data = _read_json(folder / name)
        for key, value in data.items():
            if key.endswith("_token") or key in ("additional_special_tokens", "extra_special_tokens"):
                found.update(_token_strings(value))
        for value in (data.get("added_tokens_decoder") or {}).values():
            found.update(_token_strings(value))
    found.update(_processor_tokens(spec.get("post_processor")))
    return found


def _processor_tokens(processor: Mapping[str, Any] | None) -> set[str]:
    if not processor:
        return set()
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        return {tok for entry in processor.get("special_tokens", {}).values() for tok in entry["tokens"]}
    if kind in ("BertProcessing", "RobertaProcessing"):
        return {processor["sep"][0], processor["cls"][0]}
    if kind == "Sequence":
        return {tok for inner in processor.get("processors", []) for tok in _processor_tokens(inner)}
    return set()


def is_single_character(token: str, prefix: str) -> bool:
    body = token[len(prefix) :] if token.startswith(prefix) and token != prefix else token
    return len(body) == 1


def plan_vocabulary(
    folder: Path, spec: Mapping[str, Any], corpus: list[str], config: VocabTrimConfig
) -> VocabPlan:
    """Count word pieces over the corpus with the original tokenizer (tokenizers, no truncation:
    a piece that only shows up past max_length is still part of the domain) and choose the ids."""
    from tokenizers import Tokenizer

    tokens = _id_table(spec)
    _, _, prefix = _wordpiece(spec)
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    counts: Counter[int] = Counter()
    for start in range(0, len(corpus), CORPUS_CHUNK):
        for encoding in tokenizer.encode_batch(
            corpus[start : start + CORPUS_CHUNK], add_special_tokens=False
        ):
            counts.update(encoding.ids)

    index = {token: i for i, token in enumerate(tokens)}
    from_corpus = {i for i, n in counts.items() if n >= config.min_count}
    specials = {index[token] for token in special_tokens(folder, spec) if token in index}
    # Ids config.json points at (pad_token_id, …) stay whatever they name.
    model_config = _read_json(folder / "config.json")
    specials |= {
        model_config[key]
        for key in CONFIG_TOKEN_IDS
        if isinstance(model_config.get(key), int) and 0 <= model_config[key] < len(tokens)
    }
    singles = (
        {i for i, token in enumerate(tokens) if is_single_character(token, prefix)}
        if config.keep_single_characters
        else set()
    )
    return VocabPlan(
        tokens=tokens,
        unk_token=_wordpiece(spec)[1],
        kept=sorted(from_corpus | specials | singles),
        corpus_kept=len(from_corpus),
        special_kept=len(specials),
        single_character_kept=len(singles),
    )


def _remap_processor(processor: dict[str, Any] | None, new_id: Any) -> None:
    """Renumber the special token ids a tokenizers post-processor inserts ([CLS], [SEP], …)."""
    if not processor:
        return
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for entry in processor.get("special_tokens", {}).values():
            entry["ids"] = [new_id(i) for i in entry["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            processor[key] = [processor[key][0], new_id(processor[key][1])]
    elif kind == "Sequence":
        for inner in processor.get("processors", []):
            _remap_processor(inner, new_id)
    elif kind != "ByteLevel":  # ByteLevel carries no ids
        raise TechniqueError(f"trim.vocabulary: unsupported tokenizer post-processor {kind!r}")


def write_tokenizer_files(source: Path, dest: Path, spec: Mapping[str, Any], plan: VocabPlan) -> None:
    """tokenizer.json with the trimmed WordPiece vocab and renumbered special/added/padding ids,
    vocab.txt in the new id order, tokenizer_config.json's added_tokens_decoder renumbered."""
    old_to_new = plan.old_to_new

    def new_id(old: int) -> int:
        if old not in old_to_new:
            raise TechniqueError(f"trim.vocabulary: token id {old} ({plan.tokens[old]!r}) was not kept")
        return old_to_new[old]

    vocab, _, _ = _wordpiece(spec)
    trimmed = copy.deepcopy(dict(spec))
    trimmed["model"]["vocab"] = {
        plan.tokens[old]: new for new, old in enumerate(plan.kept) if plan.tokens[old] in vocab
    }
    for added in trimmed.get("added_tokens") or []:
        added["id"] = new_id(int(added["id"]))
    if trimmed.get("padding"):
        trimmed["padding"]["pad_id"] = new_id(int(trimmed["padding"]["pad_id"]))
    _remap_processor(trimmed.get("post_processor"), new_id)
    (dest / TOKENIZER_JSON).write_text(json.dumps(trimmed, ensure_ascii=False), encoding="utf-8")
    (dest / VOCAB_TXT).write_text("".join(plan.tokens[old] + "\n" for old in plan.kept), encoding="utf-8")

    if (source / TOKENIZER_CONFIG).exists():
        tokenizer_config = _read_json(source / TOKENIZER_CONFIG)
        if "added_tokens_decoder" in tokenizer_config:
            tokenizer_config["added_tokens_decoder"] = {
                str(new_id(int(old))): entry
                for old, entry in tokenizer_config["added_tokens_decoder"].items()
            }
        (dest / TOKENIZER_CONFIG).write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    if (source / SPECIAL_TOKENS_MAP).exists():
        shutil.copyfile(source / SPECIAL_TOKENS_MAP, dest / SPECIAL_TOKENS_MAP)


def select_rows(weight: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """The embedding rows of the kept ids, in new-id order (a copy, not a view)."""
    import torch

    return weight.detach()[torch.tensor(kept, dtype=torch.long)].clone()


def _load_network(path: Path) -> tuple[Any, list[str]]:
    """The classifier in `path` (safetensors, no remote code) and the weights it lacked. A folder
    with projections factorized by lowrank.svd loads through load_classifier, strictly."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if any(low_rank_layout(AutoConfig.from_pretrained(path, trust_remote_code=False))):
        return load_classifier(path), []
    network, info = AutoModelForSequenceClassification.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False, output_loading_info=True
    )
    return network, list(info["missing_keys"])


def _trim_and_verify(
    source: Path, staging: Path, plan: VocabPlan, eval_texts: list[str], max_length: int
) -> dict[str, Any]:
    """Save the trimmed model into `staging` and check it against the original on eval texts
    whose original pieces were all kept. Returns the report's measurements."""
    import torch
    from tokenizers import Tokenizer
    from tqdm import tqdm
    from transformers import AutoTokenizer

    old_to_new = plan.old_to_new
    old_raw, new_raw = (
        Tokenizer.from_file(str(source / TOKENIZER_JSON)),
        Tokenizer.from_file(str(staging / TOKENIZER_JSON)),
    )
    for raw in (old_raw, new_raw):
        raw.no_padding()
        raw.no_truncation()
    unk_old = plan.tokens.index(plan.unk_token) if plan.unk_token in plan.tokens else -1
    before = old_raw.encode_batch(eval_texts)
    after = new_raw.encode_batch(eval_texts)
    in_vocabulary: list[int] = []
    for number, (old, new) in enumerate(zip(before, after, strict=True)):
        if all(i in old_to_new for i in old.ids):
            # Greedy longest-match over a subset that contains every piece it chose before
            # must choose the same pieces again; anything else is a bug in the edit.
            if new.ids != [old_to_new[i] for i in old.ids]:
                raise TechniqueError(
                    f"trim.vocabulary: eval text {number} is in-vocabulary but tokenizes differently "
                    f"after trimming: {old.tokens} -> {new.tokens}"
                )
            in_vocabulary.append(number)
    if not in_vocabulary:
        raise TechniqueError(
            "trim.vocabulary: no eval text is made only of kept pieces, so the equivalence check has "
            "nothing to check; lower min_count or widen corpus_splits"
        )

    network, missing = _load_network(source)
    if missing:
        # A randomly initialised head would be baked into the output as if it were trained.
        raise TechniqueError(
            f"trim.vocabulary needs a sequence-classification checkpoint; {source} lacks {sorted(missing)}"
        )
    network.eval()
    embeddings = network.get_input_embeddings()
    rows_before = int(embeddings.weight.shape[0])
    if rows_before < len(plan.tokens):
        raise TechniqueError(
            f"trim.vocabulary: the model has {rows_before} embedding rows but the tokenizer "
            f"{len(plan.tokens)} ids"
        )
    old_tokenizer: Any = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    new_tokenizer: Any = AutoTokenizer.from_pretrained(staging, trust_remote_code=False)
    # Batches of similar length waste little on padding (the check runs two full forward passes).
    texts = [eval_texts[i] for i in sorted(in_vocabulary, key=lambda i: len(before[i].ids))]
    starts = range(0, len(texts), BATCH)

    def encode(tokenizer: Any, chunk: list[str]) -> Any:
        return tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    reference: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in tqdm(starts, desc="trim.vocabulary: original logits", leave=False):
            reference.append(network(**encode(old_tokenizer, texts[start : start + BATCH])).logits)

    # Swap in the kept rows; padding_idx follows [PAD] so fine-tuning keeps its row frozen.
    pad = network.config.pad_token_id
    new_pad = old_to_new.get(pad) if isinstance(pad, int) else None
    trimmed = torch.nn.Embedding(len(plan.kept), embeddings.embedding_dim, padding_idx=new_pad)
    trimmed.weight = torch.nn.Parameter(select_rows(embeddings.weight, plan.kept))
    network.set_input_embeddings(trimmed)
    network.config.vocab_size = len(plan.kept)
    for key in CONFIG_TOKEN_IDS:
        value = getattr(network.config, key, None)
        if isinstance(value, int) and value in old_to_new:
            setattr(network.config, key, old_to_new[value])
    network.save_pretrained(staging, safe_serialization=True)

    # The check runs on what was written, reloaded the way every later step loads it.
    candidate = _load_network(staging)[0].eval()
    _check_special_ids(new_tokenizer, candidate.config, plan)
    lookup = torch.full((rows_before,), -1, dtype=torch.long)
    lookup[torch.tensor(plan.kept)] = torch.arange(len(plan.kept))
    worst = 0.0
    with torch.inference_mode():
        for number, start in enumerate(tqdm(starts, desc="trim.vocabulary: trimmed logits", leave=False)):
            old_batch = encode(old_tokenizer, texts[start : start + BATCH])
            new_batch = encode(new_tokenizer, texts[start : start + BATCH])
            if not torch.equal(lookup[old_batch["input_ids"]], new_batch["input_ids"]):
                raise TechniqueError(
                    "trim.vocabulary: the saved tokenizer's input_ids differ from the renumbered "
                    "original ids on in-vocabulary eval texts"
                )
            difference = (candidate(**new_batch).logits - reference[number]).abs().max()
            worst = max(worst, float(difference))
    if worst > LOGIT_TOLERANCE:
        raise TechniqueError(
            f"trim.vocabulary: logits on in-vocabulary eval texts moved by {worst:.3g} "
            f"(allowed {LOGIT_TOLERANCE:g}); the trimmed model was not written"
        )

    row_bytes = embeddings.embedding_dim * embeddings.weight.element_size()
    return {
        "original_vocab_size": len(plan.tokens),
        "kept_tokens": len(plan.kept),
        "kept_from_corpus": plan.corpus_kept,
        "kept_special": plan.special_kept,
        "kept_single_characters": plan.single_character_kept,
        "embedding_bytes_before": rows_before * row_bytes,
        "embedding_bytes_after": len(plan.kept) * row_bytes,
        "eval_texts": len(eval_texts),
        "eval_in_vocabulary": len(in_vocabulary),
        "eval_in_vocabulary_share": round(len(in_vocabulary) / len(eval_texts), 6),
        "eval_tokenization_changed": sum(
            old.tokens != new.tokens for old, new in zip(before, after, strict=True)
        ),
        "eval_unknown_pieces_before": sum(old.ids.count(unk_old) for old in before),
        "eval_unknown_pieces_after": sum(new.ids.count(old_to_new.get(unk_old, -1)) for new in after),
        "max_abs_logit_difference": worst,
        "logit_tolerance": LOGIT_TOLERANCE,
    }


def _check_special_ids(tokenizer: Any, model_config: Any, plan: VocabPlan) -> None:
    """[CLS]/[SEP]/[PAD]/… resolve to the same new id in the transformers tokenizer, the vocab
    and config.json."""
    new_index = {plan.tokens[old]: new for new, old in enumerate(plan.kept)}
    for name in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"):
        token = getattr(tokenizer, name, None)
        if token is None:
            continue
        if tokenizer.convert_tokens_to_ids(str(token)) != new_index.get(str(token)):
            raise TechniqueError(
                f"trim.vocabulary: the saved tokenizer maps {name} {token!r} to the wrong id"
            )
    if model_config.pad_token_id is not None and model_config.pad_token_id != tokenizer.pad_token_id:
        raise TechniqueError(
            f"trim.vocabulary: config.json pad_token_id {model_config.pad_token_id} differs from the "
            f"tokenizer's {tokenizer.pad_token_id}"
        )

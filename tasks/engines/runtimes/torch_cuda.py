"""torch-cuda: the classifier behind the registered ONNX as a `torch.export` program, compiled for
the target GPU by Inductor and replayed as CUDA graphs when the engine is staged on the device.

Build (`build`; a GPU worker, or any machine with PyTorch):
- loads the PyTorch folder behind the registered ONNX (safetensors only, no remote code, pruned
  heads sliced out) with SDPA attention: the graph then holds one
  `aten.scaled_dot_product_attention` per layer, which Inductor runs as a fused attention kernel on
  the GPU, where eager attention would write out the [batch, heads, sequence, sequence] scores;
- casts it to the target precision (fp32, fp16, bf16) and exports
  `(input_ids, attention_mask) -> logits` with batch and sequence dynamic, bounded by the target's
  profiles; token types, where the graph takes them, are zeros, as the ONNX engines feed them.
  The export runs on the CPU, so the saved program does not depend on the build machine's GPU;
- writes `program.pt2` (torch.export.save) without example inputs (see Safety);
- where the build machine has a CUDA GPU of the target's compute capability, also compiles the
  program there exactly as `load` does and writes Inductor's cache artifacts beside it
  (`inductor-cache.bin`, torch.compiler.save_cache_artifacts), so that staging on a device with
  the same GPU and PyTorch reuses the compiled kernels; elsewhere nothing is compiled and
  `Built.notes` says so. A device whose PyTorch or GPU differs from the build's misses the cache
  and compiles from the program alone.

Load (`load`; the device): the program is moved to the device
(torch.export.passes.move_to_device_pass rewrites the devices the export baked into the graph),
and on CUDA compiled with torch.compile(mode="reduce-overhead"): Inductor's kernels, replayed as
CUDA graphs, so a batch-1 request is not bound by kernel launches. Inputs are padded up to bucket
shapes (within each profile: its minimum, the powers of two between, its maximum), so that a
bounded set of CUDA graphs is recorded while staging (the warm-up runs every bucket) and none
while serving; padded positions are masked out and padded rows dropped, so the real rows' logits
are those of the unpadded input up to rounding. A shape outside every profile is refused.
device="cpu" runs the exported graph as it is, uncompiled: a functional check, not a deployment.

Versions: programs saved by torch 2.13 load in torch 2.11 and the reverse (schemas 8.20 and 8.17;
the loader checks the major only), with the same logits, so a build adds no runtime requirement to
the target's range. Its notes record the schema it wrote.

AOTInductor packages (a compiled .so per target) are not used. On the GPU machine's image (torch
2.11, CUDA 13) every CUDA package built there crashed while loading: in a fresh process, after CUDA
was initialised, and in the process that built it. The image sets CXX=/opt/gcc/bin/g++, whose
library path has libstdc++.a and no libstdc++.so, so the package's .so carries its own copy of
libstdc++ while PyTorch has loaded the system's libstdc++.so.6; the std::regex in AOTInductor's
model constructor (parse_device_str) then uses locale facets across the two copies and crashes.
Linking libstdc++ statically into a CPU package reproduces the failure here (std::bad_cast at the
same call). Building with a g++ that links libstdc++ shared (CXX=/usr/bin/g++ there) should avoid
it; that is not tried yet. Evidence: bench/results/engines-gpu.json (`aotinductor`,
`aotinductor_toolchain`, `aotinductor_static_libstdcxx_here`).

Safety: the project never unpickles untrusted files. Both loads below run only on an engine folder
whose bundle signature and file digests were verified beforehand, so what they read is the build
worker's own output; even so:
- torch.export.load reads the program as JSON and weights and constants as raw tensor bytes. It
  unpickles only tensor subclasses and script or opaque objects among weights and constants, and
  the example inputs (torch.load with weights_only=True, then, if that fails, without).
  `build` saves no example inputs and the classifier has no such objects; `load` checks the
  archive's payload configs and refuses any archive holding a pickled payload before it calls
  torch.export.load, so that call unpickles nothing.
- torch.compiler.load_cache_artifacts splits the file into cache entries without unpickling them
  and writes them into Inductor's local cache; compiling then unpickles the entries it hits (FX
  graph and AOTAutograd cache entries are pickles) and imports the generated Python and Triton
  code. That is running code the build worker produced, as running any compiled engine is; it is
  acceptable only because the file is covered by the verified signature. An engine folder
  without the file compiles from the program alone, at the cost of staging time.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.core.errors import EngineError, TechniqueError
from tasks.engines.info import EngineInfo
from tasks.engines.runtime import BuildSource, Built
from tasks.engines.target import InputProfile, Range, Target

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RUNTIME = "torch-cuda"
PROGRAM_FILE = "program.pt2"
CACHE_FILE = "inductor-cache.bin"
COMPILE_MODE = "reduce-overhead"
# CUDA graph trees run a new shape once without a graph, record it on the next call, then replay.
WARMUP_CALLS = 3
LEADING_INPUTS = ["input_ids", "attention_mask"]
OPTIONAL_INPUTS = {"token_type_ids"}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def version() -> str | None:
    """The installed PyTorch's version, or None when it is not installed here."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


# --- shapes ------------------------------------------------------------------------------------


def bucket_sizes(span: Range) -> list[int]:
    """Sizes inputs are padded up to within `span`: its minimum, the powers of two between, its maximum."""
    sizes = {span.min, span.max}
    power = 1
    while power < span.max:
        if power > span.min:
            sizes.add(power)
        power *= 2
    return sorted(sizes)


def bucket_shapes(profiles: Sequence[InputProfile]) -> list[tuple[int, int]]:
    """Every (batch, sequence) bucket of every profile: the shapes the warm-up runs."""
    shapes = {
        (batch, sequence)
        for profile in profiles
        for batch in bucket_sizes(profile.batch)
        for sequence in bucket_sizes(profile.sequence)
    }
    return sorted(shapes)


def _describe(profiles: Sequence[InputProfile]) -> str:
    return "; ".join(
        f"batch {p.batch.min}..{p.batch.max} × sequence {p.sequence.min}..{p.sequence.max}" for p in profiles
    )


def padded_shape(profiles: Sequence[InputProfile], batch: int, sequence: int) -> tuple[int, int]:
    """The bucket an input of this shape is padded to; EngineError when no profile accepts it."""
    for profile in profiles:
        if profile.batch.min <= batch <= profile.batch.max and (
            profile.sequence.min <= sequence <= profile.sequence.max
        ):
            return (
                next(b for b in bucket_sizes(profile.batch) if b >= batch),
                next(s for s in bucket_sizes(profile.sequence) if s >= sequence),
            )
    raise EngineError(
        f"input of batch {batch} and sequence {sequence} is outside the engine's profiles "
        f"({_describe(profiles)}); split the batch or truncate the sequence"
    )


def _export_dims(profiles: Sequence[InputProfile]) -> tuple[Range, Range]:
    """One range per dimension covering every profile (the predictor refuses the gaps between)."""
    batch = [p.batch for p in profiles]
    sequence = [p.sequence for p in profiles]
    return (
        Range(min=min(r.min for r in batch), opt=batch[0].opt, max=max(r.max for r in batch)),
        Range(min=min(r.min for r in sequence), opt=sequence[0].opt, max=max(r.max for r in sequence)),
    )


def _example_size(span: Range, avoid: int | None = None) -> int:
    """A size for the export's example input: torch.export specialises a dimension whose example
    is 0 or 1, and may tie two dimensions whose examples are equal, so pick 2 or more, unlike
    `avoid`, where the range allows it."""
    if span.min == span.max:
        return span.min
    candidates = [n for n in (span.opt, span.max, span.min, span.min + 1, span.max - 1) if n >= 2]
    for n in candidates:
        if span.min <= n <= span.max and n != avoid:
            return n
    return span.max


# --- build -------------------------------------------------------------------------------------


def _check_build_inputs(source: BuildSource, target: Target) -> bool:
    """Whether the graph takes token types; EngineError for what this runtime cannot build."""
    if source.torch_model is None:
        raise EngineError(
            "torch-cuda engines are built from the PyTorch model behind the ONNX; this model version "
            "has none (BuildSource.torch_model is unset): register it with its Hugging Face folder, "
            "or build it for an ONNX target (onnxruntime-cpu, tensorrt)"
        )
    if target.runtime != RUNTIME:
        raise EngineError(f"target {target.name} is for {target.runtime}, not {RUNTIME}")
    if target.precision not in DTYPES:
        raise EngineError(
            f"target {target.name}: precision {target.precision} is not built by {RUNTIME}; "
            f"allowed: {', '.join(DTYPES)}"
        )
    extra = source.inputs[len(LEADING_INPUTS) :]
    if source.inputs[: len(LEADING_INPUTS)] != LEADING_INPUTS or not set(extra) <= OPTIONAL_INPUTS:
        raise EngineError(
            f"graph inputs {source.inputs} are not supported by {RUNTIME}; allowed: "
            f"{', '.join(LEADING_INPUTS)}, then optionally {', '.join(sorted(OPTIONAL_INPUTS))}"
        )
    return "token_type_ids" in extra


def classifier_module(model: Any, token_types: bool) -> torch.nn.Module:
    """The module exported: token ids and mask in, logits out."""
    import torch

    class Logits(torch.nn.Module):
        """(input_ids, attention_mask) -> logits; token types, where the model takes them, are zeros."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if token_types else {}
            logits: torch.Tensor = self.model(
                input_ids=input_ids, attention_mask=attention_mask, **extra
            ).logits
            return logits

    return Logits()


def export_program(source: BuildSource, target: Target) -> Any:
    """The classifier as a torch.export ExportedProgram, at the target's precision, with batch and
    sequence dynamic within its profiles (on the CPU)."""
    import torch

    from tasks.core.models import load_classifier

    token_types = _check_build_inputs(source, target)
    assert source.torch_model is not None  # checked above
    try:
        model = load_classifier(source.torch_model, remove_pruned_heads=True, attn_implementation="sdpa")
    except (OSError, ValueError, TechniqueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"{source.torch_model}: cannot be loaded as a classifier ({first})") from None
    positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    batch, sequence = _export_dims(target.profiles)
    if positions and sequence.max > positions:
        raise EngineError(
            f"target {target.name} accepts sequences up to {sequence.max}, but {source.torch_model} "
            f"has {positions} positions; lower the profile's sequence.max"
        )
    model = model.to(getattr(torch, DTYPES[target.precision]))

    batch_example = _example_size(batch)
    sequence_example = _example_size(sequence, avoid=batch_example)
    input_ids = torch.zeros((batch_example, sequence_example), dtype=torch.int64)
    attention_mask = torch.ones_like(input_ids)

    def dim(name: str, span: Range) -> Any:
        return None if span.min == span.max else torch.export.Dim(name, min=span.min, max=span.max)

    shape = {0: dim("batch", batch), 1: dim("sequence", sequence)}
    try:
        with torch.no_grad():
            program = torch.export.export(
                classifier_module(model, token_types),
                (input_ids, attention_mask),
                dynamic_shapes=(shape, shape),
            )
    except Exception as exc:  # torch raises many kinds (UserError, ConstraintViolation, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(
            f"torch.export could not export {source.torch_model} for {target.name}: {first}"
        ) from None
    # Example inputs are saved pickled; the engine needs none (see Safety in the module docstring).
    program.example_inputs = None
    return program


def build(source: BuildSource, target: Target, out_dir: Path) -> Built:
    """Write `program.pt2` (and, on a GPU of the target's kind, Inductor's cache artifacts) into
    `out_dir`."""
    import torch

    started = time.perf_counter()
    program = export_program(source, target)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, out_dir / PROGRAM_FILE)
    torch_version = version() or torch.__version__
    batch, sequence = _export_dims(target.profiles)
    notes = [
        f"exported with torch {torch_version} (program schema {_schema_version()}) at {target.precision}, "
        f"SDPA attention, batch {batch.min}..{batch.max} and sequence {sequence.min}..{sequence.max} "
        f"dynamic, in {time.perf_counter() - started:.1f} s",
        _write_cache_artifacts(out_dir, target),
    ]
    return Built(
        entry=PROGRAM_FILE,
        runtime_version=torch_version,
        notes=notes,
    )


def _schema_version() -> str:
    """The torch.export serialisation schema this PyTorch writes (a release loads the same major)."""
    try:
        from torch._export.serde.schema import SCHEMA_VERSION
    except ImportError:  # a private module: say so rather than fail the build
        return "unknown"
    return ".".join(str(part) for part in SCHEMA_VERSION)


def _write_cache_artifacts(out_dir: Path, target: Target) -> str:
    """Compile the saved program here as `load` does, and keep Inductor's cache artifacts; the note
    says what happened."""
    import torch

    if not torch.cuda.is_available():
        return (
            "no CUDA GPU on the build machine: nothing was compiled; the device compiles the program "
            "when the engine is staged"
        )
    name = torch.cuda.get_device_name(0)
    major, minor = torch.cuda.get_device_capability(0)
    if f"{major}.{minor}" != target.requires.compute_capability:
        return (
            f"the build machine's GPU ({name}, compute capability {major}.{minor}) is not the target's "
            f"({target.requires.compute_capability}): nothing was compiled; the device compiles the "
            "program when the engine is staged"
        )
    started = time.perf_counter()
    _stage(out_dir / PROGRAM_FILE, "cuda", target.profiles, cache_artifacts=None)
    seconds = time.perf_counter() - started
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return f"compiled on {name} in {seconds:.1f} s, but Inductor recorded no cache artifacts to keep"
    (out_dir / CACHE_FILE).write_bytes(saved[0])
    return (
        f"compiled on {name} (torch {version()}) in {seconds:.1f} s, {len(bucket_shapes(target.profiles))} "
        f"bucket shapes; Inductor's cache artifacts kept in {CACHE_FILE} ({len(saved[0])} bytes)"
    )


# --- load --------------------------------------------------------------------------------------


def refuse_pickled_payloads(path: Path) -> None:
    """EngineError unless torch.export.load can read this archive without unpickling anything."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise EngineError(f"{path}: not a torch.export archive ({exc})") from None
    with archive:
        entries = archive.infolist()
        if not any("/models/" in f"/{e.filename}" and e.filename.endswith(".json") for e in entries):
            raise EngineError(f"{path}: not a torch.export archive (no models/*.json)")
        for entry in entries:
            name = entry.filename
            if "data/aotinductor/" in name:
                raise EngineError(
                    f"{path}: holds AOTInductor binaries ({name}), which {RUNTIME} does not load"
                )
            if name.endswith((".pt", ".pkl", ".pickle")) and entry.file_size > 0:
                raise EngineError(f"{path}: holds a pickled payload ({name}); refused, it is never unpickled")
            if name.endswith(("_weights_config.json", "_constants_config.json")):
                try:
                    config = json.loads(archive.read(entry)).get("config", {})
                except ValueError:
                    raise EngineError(f"{path}: {name} is not valid JSON") from None
                for fqn, meta in config.items():
                    target = str(meta.get("path_name", ""))
                    if meta.get("use_pickle") or target.startswith(("custom_obj_", "opaque_obj_")):
                        raise EngineError(
                            f"{path}: {fqn} is stored pickled ({target}); refused, it is never unpickled"
                        )


class ProgramPredictor:
    """A loaded torch-cuda engine: int64 token ids and attention mask to float32 logits."""

    def __init__(
        self,
        forward: Callable[[Any, Any], Any],
        device: str,
        profiles: Sequence[InputProfile],
        compiled: bool,
    ) -> None:
        self.device = device
        self.profiles = list(profiles)
        self.compiled = compiled  # Inductor + CUDA graphs (CUDA), or the exported graph as it is (CPU)
        self._forward = forward

    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        ids = np.asarray(input_ids)
        mask = np.asarray(attention_mask)
        if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[0] < 1:
            raise EngineError(
                "input_ids and attention_mask must be 2-D arrays of one shape [batch, sequence]; "
                f"got {ids.shape} and {mask.shape}"
            )
        if not (np.issubdtype(ids.dtype, np.integer) and np.issubdtype(mask.dtype, np.integer)):
            raise EngineError(
                f"input_ids and attention_mask must be integers; got {ids.dtype} and {mask.dtype}"
            )
        batch, sequence = ids.shape
        padded_batch, padded_sequence = padded_shape(self.profiles, batch, sequence)
        # One host buffer, one copy to the device; padded positions are masked out, padded rows
        # attend to their (padding) tokens so that no row is fully masked.
        packed = np.zeros((2, padded_batch, padded_sequence), dtype=np.int64)
        packed[0, :batch, :sequence] = ids
        packed[1, :batch, :sequence] = mask
        packed[1, batch:, :] = 1
        # Ordinary tensors even when the caller is in inference mode (a server often is): compiled
        # code guards on that, and inference tensors would compile the program again (run_on_device).
        with torch.inference_mode(False):
            on_device = torch.from_numpy(packed).to(self.device)
        logits = self.run_on_device(on_device[0], on_device[1])
        return np.ascontiguousarray(logits[:batch].cpu().numpy())

    def run_on_device(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits (float32, a fresh tensor) for device tensors already at a bucket shape.

        The tensors must not be created under torch.inference_mode: compiled code guards on that,
        so such inputs would compile the program again, outside the warm-up."""
        import torch

        with torch.inference_mode():
            if self.compiled:
                # Each call is a new step for CUDA graph trees: the previous outputs are copied.
                torch.compiler.cudagraph_mark_step_begin()
            logits: torch.Tensor = self._forward(input_ids, attention_mask)
            return logits.to(torch.float32, copy=True)

    def warm_up(self) -> None:
        """Predict at every bucket shape, through the serving path itself, so that compiling and
        CUDA graph recording happen now and not on a request."""
        for batch, sequence in sorted(bucket_shapes(self.profiles), reverse=True):
            ones = np.ones((batch, sequence), dtype=np.int64)
            for _ in range(WARMUP_CALLS):
                self.predict(ones, ones)


def _stage(
    program_path: Path, device: str, profiles: Sequence[InputProfile], cache_artifacts: bytes | None
) -> ProgramPredictor:
    """Load the program onto `device`; on CUDA compile it (after loading cache artifacts) and warm
    up every bucket shape. Used by `load` and, on a build GPU, by `build`."""
    import torch
    from torch.export.passes import move_to_device_pass

    if device.startswith("cuda") and torch.device(device).index is None:
        # The exported graph asserts its inputs' device exactly: "cuda" would not match "cuda:0".
        device = f"cuda:{torch.cuda.current_device()}"
    refuse_pickled_payloads(program_path)
    try:
        program = torch.export.load(program_path)
    except Exception as exc:  # deserialisation raises many kinds (schema version, missing ops)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(
            f"{program_path}: torch {version()} cannot load this program ({first[:300]})"
        ) from None
    if device != "cpu":
        program = move_to_device_pass(program, device)
    module = program.module()
    if not device.startswith("cuda"):
        return ProgramPredictor(module, device, profiles, compiled=False)
    if cache_artifacts is not None:
        loaded = torch.compiler.load_cache_artifacts(cache_artifacts)
        if loaded is None:
            log.warning(
                "%s: Inductor's cache artifacts could not be read; compiling from the program", device
            )
    compiled = torch.compile(module, mode=COMPILE_MODE, dynamic=True)
    predictor = ProgramPredictor(compiled, device, profiles, compiled=True)
    try:
        predictor.warm_up()  # compiling happens here, on the first call of each shape
    except EngineError:
        raise
    except Exception as exc:  # Dynamo, Inductor, Triton and CUDA raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"{program_path}: compiling for {device} failed ({first[:300]})") from exc
    return predictor


def load(engine_dir: Path, info: EngineInfo, device: str | None) -> ProgramPredictor:
    """The engine in `engine_dir` (already verified) on `device` (None: the current CUDA GPU)."""
    import torch

    if info.runtime != RUNTIME:
        raise EngineError(f"{engine_dir}: engine is for {info.runtime}, not {RUNTIME}")
    wanted = device or "cuda"
    try:
        kind = torch.device(wanted).type
    except RuntimeError:
        raise EngineError(f"device {wanted!r} is not a torch device; allowed: cuda, cuda:N, cpu") from None
    if kind not in ("cuda", "cpu"):
        raise EngineError(f"device {wanted!r} is not supported by {RUNTIME}; allowed: cuda, cuda:N, cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise EngineError(
            f"{RUNTIME} engine needs a CUDA GPU and none is available here; "
            "pass device='cpu' for a functional check on the CPU"
        )
    program_path = Path(engine_dir) / info.entry
    if not program_path.is_file():
        raise EngineError(f"{program_path}: missing from the engine folder")
    cache_path = Path(engine_dir) / CACHE_FILE
    cache = cache_path.read_bytes() if kind == "cuda" and cache_path.is_file() else None
    return _stage(program_path, wanted, info.profiles, cache)

"""`tensorrt`: the registered ONNX graph built into a TensorRT engine (a serialized plan) for one GPU
architecture and one TensorRT version.

UNVERIFIED: written against the TensorRT 10 Python API as NVIDIA documents it, and never run in this
project, because no machine the project builds or tests on has TensorRT. What would verify it:
`pytest tests/test_engine_tensorrt.py` on a machine with an NVIDIA GPU, a CUDA build of PyTorch and
TensorRT 10.x (`pip install "tensorrt-cu12>=10,<11"`). Those tests build FP16 and INT8 engines of a
tiny BERT, load them and compare their logits with ONNX Runtime's; elsewhere they skip.

How a build goes (TensorRT 10):
- the ONNX parser fills a weakly typed network (`create_network(0)`: every network is explicit-batch
  in 10, and the precision flags below apply only to weakly typed networks);
- one optimization profile per target profile, `[batch, sequence]` for each graph input;
- `fp16` sets BuilderFlag.FP16; `int8` sets BuilderFlag.INT8 (with FP16 for layers that have no INT8
  kernel) and calibrates with an IInt8EntropyCalibrator2 fed from the calibration split, unless the
  graph already carries Q/DQ scales (explicit quantization, no calibration). The precision flags and
  the calibrator are deprecated in 10.x in favour of strong typing and explicit Q/DQ quantization, and
  removed in TensorRT 11, so this builder refuses TensorRT 11 rather than half-work there;
- the plan `model.plan` is written last, after `timing.cache` (tactic timings, reusable by later
  builds on the same GPU and version) and, for calibrated INT8, `calibration.cache`.

A plan built this way (no version-compatible flag, no hardware-compatibility level) runs only with
the exact TensorRT version and on GPUs of the compute capability that built it, so `Built.requires`
pins both; a device outside them is refused before download.

Device buffers are PyTorch CUDA tensors: PyTorch is already a dependency of every GPU worker (the
torch-cuda runtime), its allocator and streams give TensorRT the raw pointers and stream handle it
takes, and copies are one call; cuda-python would add a package whose version must follow the
driver, with manual malloc/free pairing.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import EngineError
from tasks.engines.info import EngineInfo
from tasks.engines.runtime import BuildSource, Built, Predictor
from tasks.engines.target import Target, VersionRange

log = logging.getLogger(__name__)

PLAN_FILE = "model.plan"
TIMING_CACHE_FILE = "timing.cache"
CALIBRATION_CACHE_FILE = "calibration.cache"
SUPPORTED_MAJOR = 10
# Integer-arithmetic operators that only ONNX Runtime executes (dynamic quantization and the QOperator
# format); the TensorRT ONNX parser supports none of them, nor any com.microsoft contrib operator.
ORT_ONLY_OPS = frozenset(
    {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv"}
)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# The graph inputs a predictor can feed: token ids and mask, and segment ids (all zero, one text).
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CALIBRATION_BATCH = 8
UNVERIFIED_NOTE = (
    "TensorRT builder written against the TensorRT 10 Python API and unverified in this project "
    "(never run here: no TensorRT); tests/test_engine_tensorrt.py verifies it where TensorRT is installed"
)


def version() -> str | None:
    """The installed TensorRT's version, or None when it is not installed here."""
    try:
        return importlib.metadata.version("tensorrt")
    except importlib.metadata.PackageNotFoundError:
        return None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _import_tensorrt(what: str) -> Any:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the package is there but libnvinfer is not
        raise EngineError(
            f"{what} needs TensorRT, which is not installed here (import tensorrt failed: "
            f"{_one_line(exc)}); build it on a GPU worker with TensorRT {SUPPORTED_MAJOR}"
        ) from None
    return tensorrt


def _next_version(text: str) -> str:
    """`10.13.0.35` → `10.13.0.36`: the first version past this exact one."""
    parts = text.split("+")[0].split(".")
    digits = "".join(ch for ch in parts[-1] if ch.isdigit()) or "0"
    return ".".join([*parts[:-1], str(int(digits) + 1)])


def _graph_ops(path: Path) -> set[tuple[str, str]]:
    """(domain, op_type) of every node, subgraphs and local functions included."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError and others
        raise EngineError(f"{path}: not a readable ONNX model ({_one_line(exc)})") from None
    found: set[tuple[str, str]] = set()

    def visit(nodes: Any) -> None:
        for node in nodes:
            found.add((node.domain, node.op_type))
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    visit(attribute.g.node)
                for graph in attribute.graphs:
                    visit(graph.node)

    visit(model.graph.node)
    for function in model.functions:
        visit(function.node)
    return found


def _check_graph(source: BuildSource, target: Target) -> bool:
    """Refuse what TensorRT cannot build from; True when the graph carries Q/DQ scales."""
    unknown = [n for n in source.inputs if n not in KNOWN_INPUTS]
    if unknown or "input_ids" not in source.inputs:
        raise EngineError(
            f"target {target.name}: graph inputs {source.inputs} are not token inputs; "
            f"allowed: input_ids plus any of {', '.join(KNOWN_INPUTS[1:])}"
        )
    ops = _graph_ops(source.onnx)
    ort_only = sorted(
        f"{domain}.{op}" if domain else op
        for domain, op in ops
        if op in ORT_ONLY_OPS or domain == "com.microsoft"
    )
    if ort_only:
        raise EngineError(
            f"target {target.name}: {source.onnx.name} holds ONNX Runtime-only operators "
            f"({', '.join(ort_only)}); TensorRT builds from a floating-point or QDQ "
            "(QuantizeLinear/DequantizeLinear) graph, so build the variant before dynamic quantization "
            "or graph fusion"
        )
    qdq = any(op in QDQ_OPS and domain in ("", "ai.onnx") for domain, op in ops)
    if qdq and target.precision != "int8":
        raise EngineError(
            f"target {target.name}: {source.onnx.name} is quantized (QuantizeLinear/DequantizeLinear) "
            f"but the target's precision is {target.precision}; build it for an int8 target"
        )
    return qdq


def _read_calibration(source: BuildSource, target: Target) -> list[dict[str, np.ndarray]]:
    """Calibration batches of CALIBRATION_BATCH rows for each graph input (a shorter remainder is
    dropped: with dynamic shapes every calibration batch has the calibration profile's one shape)."""
    if source.calibration is None:
        raise EngineError(
            f"target {target.name} builds INT8 by calibration, and the build source has no calibration "
            "data; set dataset.calibration_size > 0 in the recipe"
        )
    path = source.calibration
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise EngineError(f"calibration data {path}: cannot be read ({exc.strerror})") from None
    except ValueError as exc:
        raise EngineError(f"calibration data {path}: not JSON ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise EngineError(f"calibration data {path}: expected an object with input_ids and attention_mask")
    arrays: dict[str, np.ndarray] = {}
    for name in ("input_ids", "attention_mask"):
        lists = data.get(name)
        if not _equal_int_lists(lists):
            raise EngineError(
                f"calibration data {path}: {name} must be a non-empty list of equal-length integer lists"
            )
        arrays[name] = np.asarray(lists, dtype=np.int64)
    if arrays["input_ids"].shape != arrays["attention_mask"].shape:
        raise EngineError(
            f"calibration data {path}: input_ids {arrays['input_ids'].shape} and attention_mask "
            f"{arrays['attention_mask'].shape} differ in shape"
        )
    count, length = arrays["input_ids"].shape
    if length > target.max_sequence:
        raise EngineError(
            f"calibration data {path}: sequences of {length} tokens exceed target {target.name}'s "
            f"largest sequence, {target.max_sequence}"
        )
    arrays["token_type_ids"] = np.zeros_like(arrays["input_ids"])
    size = min(CALIBRATION_BATCH, count)
    return [
        {name: np.ascontiguousarray(arrays[name][start : start + size]) for name in source.inputs}
        for start in range(0, count - size + 1, size)
    ]


def _equal_int_lists(value: object) -> bool:
    if not isinstance(value, list) or not value or not all(isinstance(row, list) and row for row in value):
        return False
    if len({len(row) for row in value}) != 1:
        return False
    return all(isinstance(v, int) and not isinstance(v, bool) for row in value for v in row)


def _torch_cuda(what: str) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise EngineError(
            f"{what} needs PyTorch with CUDA for its device buffers ({_one_line(exc)})"
        ) from None
    if not torch.cuda.is_available():
        raise EngineError(f"{what} needs an NVIDIA GPU, and PyTorch sees no CUDA device here")
    return torch


def _capability(torch: Any, index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"{major}.{minor}"


def _gpus(torch: Any) -> str:
    return ", ".join(
        f"cuda:{i} {torch.cuda.get_device_name(i)} ({_capability(torch, i)})"
        for i in range(torch.cuda.device_count())
    )


def _logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to `logging` and keeps errors for the one-line EngineError
    (the documented way to learn why a build or a deserialization returned nothing)."""

    class _Log(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity == trt.ILogger.Severity.VERBOSE:
                return
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(_one_line(msg))
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Log()


def _last_errors(logger: Any, limit: int = 2) -> str:
    errors: list[str] = logger.errors
    return "; ".join(errors[-limit:]) if errors else "TensorRT logged no error"


def _entropy_calibrator(
    trt: Any, torch: Any, batches: list[dict[str, np.ndarray]], device: int, dtypes: dict[str, Any]
) -> Any:
    """An IInt8EntropyCalibrator2 over `batches`, copied into one set of CUDA buffers per batch."""

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            first = batches[0]
            self.shape = tuple(int(n) for n in next(iter(first.values())).shape)
            self.pending = iter(batches)
            self.buffers = {
                name: torch.empty(
                    array.shape, dtype=_torch_dtype(torch, dtypes[name]), device=f"cuda:{device}"
                )
                for name, array in first.items()
            }
            self.used = 0
            self.cache: bytes | None = None
            self.error: str | None = None

        def get_batch_size(self) -> int:
            # The batch is the first dimension of the explicit shapes; trtexec and Polygraphy
            # return 1 here too (getBatchSize is deprecated with implicit batch, removed in 10).
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.pending, None)
            if batch is None:
                return None
            # The binding swallows exceptions and ends calibration; keep the reason for the build.
            try:
                for name in names:
                    self.buffers[name].copy_(torch.from_numpy(batch[name].astype(dtypes[name], copy=False)))
                torch.cuda.synchronize(device)  # TensorRT reads the buffers on its own stream
            except Exception as exc:
                self.error = _one_line(exc)
                return None
            self.used += 1
            return [int(self.buffers[name].data_ptr()) for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return None  # every build calibrates on its own data; the written cache is its record

        def write_calibration_cache(self, cache: Any) -> None:
            self.cache = bytes(cache)

    return _Calibrator()


def _torch_dtype(torch: Any, numpy_dtype: Any) -> Any:
    return torch.from_numpy(np.empty(0, dtype=numpy_dtype)).dtype


def build(source: BuildSource, target: Target, out_dir: Path) -> Built:
    """Build `source.onnx` for `target` into `out_dir`: model.plan, timing.cache and, for calibrated
    INT8, calibration.cache. Nothing is written unless the build succeeds, and the plan last."""
    if target.runtime != "tensorrt":
        raise EngineError(f"target {target.name} is a {target.runtime} target, not tensorrt")
    # What depends on the graph and data alone is refused first, on any machine, so a model that
    # can never become a TensorRT engine is not sent to a GPU worker to find out.
    qdq = _check_graph(source, target)
    batches = _read_calibration(source, target) if target.precision == "int8" and not qdq else []

    what = f"target {target.name}"
    trt = _import_tensorrt(what)
    trt_version = str(trt.__version__)
    if not trt_version.startswith(f"{SUPPORTED_MAJOR}."):
        raise EngineError(
            f"{what}: TensorRT {trt_version} is installed; this builder is written for TensorRT "
            f"{SUPPORTED_MAJOR} (its precision flags and INT8 calibrator were removed in 11)"
        )
    if not target.requires.runtime_version.admits(trt_version):
        raise EngineError(
            f"{what} requires TensorRT {target.requires.runtime_version}; {trt_version} is installed"
        )
    torch = _torch_cuda(what)
    wanted = target.requires.compute_capability
    matching = [i for i in range(torch.cuda.device_count()) if _capability(torch, i) == wanted]
    if not matching:
        raise EngineError(
            f"{what} runs on compute capability {wanted}, and a plan runs only on the architecture that "
            f"built it; this machine has {_gpus(torch)}"
        )
    device = matching[0]
    with torch.cuda.device(device):  # TensorRT builds on the current CUDA device
        files, notes = _compile(trt, torch, source, target, qdq, batches, device)
    _write(out_dir, files)
    notes.append(
        f"plan pinned to TensorRT {trt_version} and compute capability {wanted} (built on cuda:{device} "
        f"{torch.cuda.get_device_name(device)}; no version or hardware compatibility)"
    )
    return Built(
        entry=PLAN_FILE,
        runtime_version=trt_version,
        requires={
            "compute_capability": wanted,
            "runtime_version": VersionRange(
                minimum=trt_version, below=_next_version(trt_version)
            ).model_dump(),
        },
        notes=notes,
    )


def _compile(
    trt: Any,
    torch: Any,
    source: BuildSource,
    target: Target,
    qdq: bool,
    batches: list[dict[str, np.ndarray]],
    device: int,
) -> tuple[list[tuple[str, Any]], list[str]]:
    """The TensorRT build itself: the files to write, in order, and the build's notes."""
    what = f"target {target.name}"
    logger = _logger(trt)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # pybind raises TypeError when the factory returns null (no usable GPU)
        raise EngineError(f"{what}: TensorRT could not create a builder ({_one_line(exc)})") from None
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source.onnx)):
        errors = [_one_line(parser.get_error(i)) for i in range(parser.num_errors)]
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        raise EngineError(
            f"{what}: the TensorRT ONNX parser refused {source.onnx.name}: "
            f"{'; '.join(errors[:3]) or _last_errors(logger)}{more}"
        )
    graph_inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if set(graph_inputs) != set(source.inputs):
        raise EngineError(
            f"{what}: the parsed network's inputs {sorted(graph_inputs)} are not the source's {source.inputs}"
        )

    config = builder.create_builder_config()
    for index, profile in enumerate(target.profiles):
        shapes = builder.create_optimization_profile()
        low = (profile.batch.min, profile.sequence.min)
        opt = (profile.batch.opt, profile.sequence.opt)
        high = (profile.batch.max, profile.sequence.max)
        for name in source.inputs:
            shapes.set_shape(name, low, opt, high)
        if config.add_optimization_profile(shapes) < 0:
            raise EngineError(f"{what}: TensorRT refused profile {index} ({low}..{high})")

    notes = [UNVERIFIED_NOTE]
    if target.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if target.precision == "fp16":
        notes.append("fp16: BuilderFlag.FP16 on a weakly typed network (deprecated since TensorRT 10.12)")
    calibrator = None
    if target.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if qdq:
            notes.append("int8: explicit quantization from the graph's Q/DQ scales; no calibration")
        else:
            dtypes = {name: trt.nptype(graph_inputs[name].dtype) for name in source.inputs}
            calibrator = _entropy_calibrator(trt, torch, batches, device, dtypes)
            config.int8_calibrator = calibrator
            # With runtime dimensions calibration needs its own profile; it runs at its OPT shape.
            shape = tuple(batches[0][source.inputs[0]].shape)
            calibration_profile = builder.create_optimization_profile()
            for name in source.inputs:
                calibration_profile.set_shape(name, shape, shape, shape)
            if not config.set_calibration_profile(calibration_profile):
                raise EngineError(f"{what}: TensorRT refused the calibration profile {shape}")

    timing_cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        raise EngineError(f"{what}: TensorRT refused a new timing cache ({_last_errors(logger)})")

    log.info("building a TensorRT %s engine for %s on cuda:%d", target.precision, target.name, device)
    plan = builder.build_serialized_network(network, config)
    if calibrator is not None and calibrator.error:
        raise EngineError(f"{what}: calibration failed ({calibrator.error})")
    if plan is None:
        raise EngineError(f"{what}: TensorRT could not build the engine ({_last_errors(logger)})")

    files: list[tuple[str, Any]] = [(TIMING_CACHE_FILE, config.get_timing_cache().serialize())]
    if calibrator is not None:
        if not calibrator.cache:
            raise EngineError(f"{what}: TensorRT built INT8 without writing calibration scales")
        files.append((CALIBRATION_CACHE_FILE, calibrator.cache))
        size, length = calibrator.shape
        notes.append(
            f"int8: implicit quantization, IInt8EntropyCalibrator2 over {calibrator.used} batches of "
            f"{size} calibration sequences of {length} tokens (deprecated since TensorRT 10.1 in favour "
            "of explicit Q/DQ quantization); FP16 allowed where a layer has no INT8 kernel"
        )
    files.append((PLAN_FILE, plan))  # last: a folder with model.plan holds a finished build
    return files, notes


def _write(out_dir: Path, files: list[tuple[str, Any]]) -> None:
    """Each file through a temporary name and a rename, in order, so none is seen half-written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files:
        temporary = out_dir / f".{name}.partial"
        with temporary.open("wb") as handle:
            handle.write(content)  # bytes, or TensorRT's IHostMemory through the buffer protocol
        os.replace(temporary, out_dir / name)


def load(engine_dir: Path, info: EngineInfo, device: str | None) -> Predictor:
    """Deserialize the plan in `engine_dir` on `device` (`cuda` or `cuda:N`; None: cuda:0)."""
    what = f"engine {engine_dir}"
    trt = _import_tensorrt(what)
    torch = _torch_cuda(what)
    name = device or "cuda:0"
    kind, _, number = name.partition(":")
    if kind != "cuda" or (number and not number.isdigit()):
        raise EngineError(f"{what}: device {name!r} is not a CUDA device; allowed: cuda, cuda:N")
    index = int(number or 0)
    if index >= torch.cuda.device_count():
        raise EngineError(f"{what}: no {name} here; found {_gpus(torch) or 'no GPU'}")
    installed = str(trt.__version__)
    if installed != info.runtime_version:
        raise EngineError(
            f"{what} was built with TensorRT {info.runtime_version} and TensorRT {installed} is installed; "
            "a plan built without version compatibility loads only in the version that built it"
        )
    wanted = info.requires.compute_capability
    found = _capability(torch, index)
    if wanted is not None and found != wanted:
        raise EngineError(f"{what} was built for compute capability {wanted}; {name} has {found}")
    try:
        plan = (Path(engine_dir) / info.entry).read_bytes()
    except OSError as exc:
        raise EngineError(f"{what}: {info.entry} cannot be read ({exc.strerror})") from None

    logger = _logger(trt)
    with torch.cuda.device(index):  # the engine and its context live on the current CUDA device
        runtime = trt.Runtime(logger)
        # TensorRT has no compatibility preflight: a null engine, and the logger, are the answer.
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError(
                f"{what}: TensorRT {installed} could not deserialize {info.entry} ({_last_errors(logger)})"
            )
        context = engine.create_execution_context()
    if context is None:
        raise EngineError(f"{what}: TensorRT could not create an execution context ({_last_errors(logger)})")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if set(inputs) != set(info.inputs) or not set(inputs) <= set(KNOWN_INPUTS) or len(outputs) != 1:
        raise EngineError(
            f"{what}: the plan's inputs {inputs} and outputs {outputs} are not engine.json's inputs "
            f"{info.inputs} with one logits output"
        )
    profiles = [
        [tuple(engine.get_tensor_profile_shape(inputs[0], p)[k]) for k in (0, 2)]
        for p in range(engine.num_optimization_profiles)
    ]
    return _TensorRTPredictor(
        torch=torch,
        keep=(logger, runtime, engine),
        context=context,
        index=index,
        inputs={n: trt.nptype(engine.get_tensor_dtype(n)) for n in inputs},
        output=(outputs[0], trt.nptype(engine.get_tensor_dtype(outputs[0]))),
        profiles=profiles,
        device=f"cuda:{index} {torch.cuda.get_device_name(index)}",
    )


class _TensorRTPredictor:
    """One execution context on its own CUDA stream; inputs and logits go through torch buffers."""

    def __init__(
        self,
        *,
        torch: Any,
        keep: tuple[Any, ...],
        context: Any,
        index: int,
        inputs: dict[str, Any],
        output: tuple[str, Any],
        profiles: list[list[tuple[int, ...]]],
        device: str,
    ) -> None:
        self._torch = torch
        self._keep = keep  # the logger and runtime must outlive the engine, the engine its context
        self._context = context
        self._index = index
        self._inputs = inputs
        self._output = output
        self._profiles = profiles
        self._profile = 0
        self._stream = torch.cuda.Stream(device=index)
        self.device = device

    def predict(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise EngineError(
                f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must be one "
                "[batch, sequence] shape"
            )
        shape = tuple(int(n) for n in input_ids.shape)
        profile = next(
            (
                p
                for p, (low, high) in enumerate(self._profiles)
                if all(lo <= n <= hi for lo, n, hi in zip(low, shape, high, strict=True))
            ),
            None,
        )
        if profile is None:
            allowed = ", ".join(f"{low}..{high}" for low, high in self._profiles)
            raise EngineError(f"input shape {shape} is outside the engine's profiles ({allowed})")
        feeds = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids),
        }
        context = self._context
        with torch.cuda.device(self._index), torch.cuda.stream(self._stream):
            handle = self._stream.cuda_stream
            if profile != self._profile:
                if not context.set_optimization_profile_async(profile, handle):
                    raise EngineError(f"TensorRT refused optimization profile {profile}")
                self._profile = profile
            held = []  # device inputs stay referenced until the stream is synchronized
            for name, dtype in self._inputs.items():
                tensor = torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=dtype)).to(
                    f"cuda:{self._index}"
                )
                held.append(tensor)
                if not context.set_input_shape(name, shape):
                    raise EngineError(f"TensorRT refused input shape {shape} for {name}")
                context.set_tensor_address(name, tensor.data_ptr())
            name, dtype = self._output
            out_shape = tuple(int(n) for n in context.get_tensor_shape(name))
            if any(n < 0 for n in out_shape):
                raise EngineError(f"TensorRT left the shape of {name} unresolved: {out_shape}")
            logits = torch.empty(out_shape, dtype=_torch_dtype(torch, dtype), device=f"cuda:{self._index}")
            context.set_tensor_address(name, logits.data_ptr())
            if not context.execute_async_v3(handle):
                raise EngineError(f"TensorRT failed to run the engine on {self.device}")
            self._stream.synchronize()
            del held
        return np.asarray(logits.float().cpu().numpy(), dtype=np.float32)

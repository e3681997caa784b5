"""What this machine can run engines on, read from the machine itself: CPU model and ISA flags,
installed runtime versions, NVIDIA GPUs with their compute capability, driver and CUDA version.

Builds record it as `built_on`, build-time checks time an engine only where the machine meets the
target's requirements, and devices enroll with it. Each runtime is probed without importing
PyTorch unless it is installed, so an edge device with ONNX Runtime alone reads its own.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

from pydantic import BaseModel

from tasks.engines.target import Requirements, Runtime

RUNTIME_PACKAGES: dict[str, str] = {
    "onnxruntime-cpu": "onnxruntime",
    "torch-cuda": "torch",
    "tensorrt": "tensorrt",
}


class Gpu(BaseModel):
    name: str
    compute_capability: str  # e.g. 9.0
    memory_mib: int
    driver: str
    cuda: str | None  # the CUDA version the driver supports


class Capabilities(BaseModel):
    machine: str  # x86_64, aarch64
    cpu_model: str
    cpu_flags: list[str]
    cpu_count: int
    runtimes: dict[str, str]  # runtime name → installed version (absent: not installed)
    gpus: list[Gpu]


def _cpuinfo(text: str) -> tuple[str, list[str]]:
    model: str = platform.processor() or platform.machine()
    flags: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = sorted(set(value.split()))
    return model, flags


def _package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> list[Gpu]:
    """NVIDIA GPUs through NVML (nvidia-ml-py), which needs neither PyTorch nor CUDA toolkits."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda_raw = pynvml.nvmlSystemGetCudaDriverVersion()
        cuda = f"{cuda_raw // 1000}.{(cuda_raw % 1000) // 10}" if cuda_raw else None
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            found.append(
                Gpu(
                    name=str(pynvml.nvmlDeviceGetName(handle)),
                    compute_capability=f"{major}.{minor}",
                    memory_mib=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20,
                    driver=str(driver),
                    cuda=cuda,
                )
            )
        return found
    finally:
        pynvml.nvmlShutdown()


def read_capabilities(cpuinfo: Path = Path("/proc/cpuinfo")) -> Capabilities:
    """This machine's capabilities."""
    import os

    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    model, flags = _cpuinfo(text)
    runtimes = {name: v for name, pkg in RUNTIME_PACKAGES.items() if (v := _package_version(pkg))}
    gpus = _gpus()
    if not gpus:
        runtimes.pop("torch-cuda", None)  # PyTorch without a GPU cannot run a CUDA engine
        runtimes.pop("tensorrt", None)
    return Capabilities(
        machine=platform.machine(),
        cpu_model=model,
        cpu_flags=flags,
        cpu_count=os.cpu_count() or 1,
        runtimes=runtimes,
        gpus=gpus,
    )


def _version_at_least(found: str, minimum: str) -> bool:
    from tasks.engines.target import VersionRange

    return VersionRange(minimum=minimum).admits(found)


def unmet(requires: Requirements, runtime: Runtime, caps: Capabilities) -> list[str]:
    """Why this machine cannot run an engine with these requirements (empty: it can)."""
    reasons = []
    missing = [f for f in requires.cpu_flags if f not in caps.cpu_flags]
    if missing:
        reasons.append(f"CPU lacks {', '.join(missing)}")
    extra = [f for f in requires.cpu_flags_absent if f in caps.cpu_flags]
    if extra:
        reasons.append(f"CPU has {', '.join(extra)}, which the engine's layout was not built for")
    version = caps.runtimes.get(runtime)
    if version is None:
        reasons.append(
            f"{runtime} is not installed" + (" or no GPU is present" if runtime != "onnxruntime-cpu" else "")
        )
    elif not requires.runtime_version.admits(version):
        reasons.append(f"{runtime} {version} is outside {requires.runtime_version}")
    if requires.compute_capability is not None:
        matching = [g for g in caps.gpus if g.compute_capability == requires.compute_capability]
        if not matching:
            have = ", ".join(f"{g.name} ({g.compute_capability})" for g in caps.gpus) or "no NVIDIA GPU"
            reasons.append(f"needs a GPU of compute capability {requires.compute_capability}; found {have}")
        else:
            gpu = matching[0]
            if requires.min_driver and not _version_at_least(gpu.driver, requires.min_driver):
                reasons.append(f"driver {gpu.driver} is older than {requires.min_driver}")
            if requires.cuda and (gpu.cuda is None or not requires.cuda.admits(gpu.cuda)):
                reasons.append(f"CUDA {gpu.cuda or 'unknown'} is outside {requires.cuda}")
    return reasons

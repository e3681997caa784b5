"""Energy counters read around an engine's timing loops: NVML's total-energy counter for a GPU,
RAPL's package counters for a CPU. Only real counters: where none is readable the reading is
absent and the reason says why, never an estimate.

- NVML (`nvmlDeviceGetTotalEnergyConsumption`, millijoules since the driver loaded; Volta and
  later) covers the whole board, idle power included, so a figure is the device's energy while
  it served the loop.
- RAPL (`/sys/class/powercap/intel-rapl:N/energy_uj`, microjoules, wrapping at
  `max_energy_range_uj`) covers each CPU package, every process on it included. Most virtual
  machines expose no RAPL at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

POWERCAP = Path("/sys/class/powercap")


class EnergyCounter(Protocol):
    source: str  # what is read, as the results say it

    def joules(self) -> float: ...


class NvmlCounter:
    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml: Any = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.joules()  # raises where the counter is not supported
        self.source = f"NVML total energy of GPU {index} (whole board)"

    def joules(self) -> float:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)) / 1000


class RaplCounter:
    def __init__(self, domains: list[Path]) -> None:
        self._domains = domains
        self._ranges = [int((d / "max_energy_range_uj").read_text()) for d in domains]
        self._last = [self._read(d) for d in domains]
        self._total = 0.0
        self.source = f"RAPL package energy ({len(domains)} package(s), every process on them)"

    @staticmethod
    def _read(domain: Path) -> int:
        return int((domain / "energy_uj").read_text())

    def joules(self) -> float:
        """Microjoules summed over packages since this counter was made, wraps included."""
        for i, domain in enumerate(self._domains):
            now = self._read(domain)
            self._total += (now - self._last[i]) % self._ranges[i]
            self._last[i] = now
        return self._total / 1e6


def energy_counter(device: str) -> tuple[EnergyCounter | None, str]:
    """The counter for `device` ("cpu", "cuda:N ..."), or None and why there is none."""
    if device.startswith("cuda"):
        index = int(device.split()[0].partition(":")[2] or 0)
        try:
            return NvmlCounter(index), ""
        except Exception as exc:  # no nvidia-ml-py, no driver, or a GPU without the counter
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return None, f"energy not measured: NVML energy counter of GPU {index} not readable ({first})"
    domains = sorted(POWERCAP.glob("intel-rapl:[0-9]*"))
    domains = [d for d in domains if ":" not in d.name.partition(":")[2]]  # packages, not sub-domains
    try:
        if domains:
            return RaplCounter(domains), ""
    except OSError as exc:
        return None, f"energy not measured: RAPL counters present but not readable ({exc.strerror})"
    return None, f"energy not measured: this machine exposes no RAPL counter ({POWERCAP}/intel-rapl:*)"

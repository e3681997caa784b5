"""Energy counters: RAPL's sysfs files read with their wrap-around, and no counter where there is
none (an absence the results state, never an estimate)."""

from pathlib import Path

import pytest

from tasks.engines import energy
from tasks.engines.energy import RaplCounter, energy_counter


def package(root: Path, name: str, uj: int, wraps_at: int) -> Path:
    domain = root / name
    domain.mkdir(parents=True)
    (domain / "energy_uj").write_text(f"{uj}\n")
    (domain / "max_energy_range_uj").write_text(f"{wraps_at}\n")
    return domain


def test_rapl_sums_packages_and_counts_through_a_wrap(tmp_path, monkeypatch):
    first = package(tmp_path, "intel-rapl:0", 999_000_000, wraps_at=1_000_000_000)
    package(tmp_path, "intel-rapl:1", 5_000_000, wraps_at=1_000_000_000)
    package(tmp_path, "intel-rapl:0:0", 1, wraps_at=10)  # a core sub-domain: inside package 0 already
    monkeypatch.setattr(energy, "POWERCAP", tmp_path)
    counter, why_not = energy_counter("cpu")
    assert isinstance(counter, RaplCounter) and why_not == ""
    assert counter.source.startswith("RAPL package energy (2 package(s)")
    assert counter.joules() == 0
    (first / "energy_uj").write_text("3000000\n")  # wrapped: 1 J to the top, then 3 J
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("7000000\n")  # 2 J
    assert counter.joules() == pytest.approx(6.0)


def test_no_counter_is_said_plainly(tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "absent")
    counter, why_not = energy_counter("cpu")
    assert counter is None and why_not.startswith("energy not measured: this machine exposes no RAPL counter")
    gpu, gpu_why_not = energy_counter("cuda:3 Some GPU")
    if gpu is None:  # no NVIDIA driver here: the reason names GPU 3 and NVML
        assert gpu_why_not.startswith("energy not measured: NVML energy counter of GPU 3 not readable")

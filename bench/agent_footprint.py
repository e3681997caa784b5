"""The edge agent's footprint on a CPU device: memory while it serves a real release, and the disk
its Python packages take, without any image (what an edge image must carry at least).

A release of a registered version (default: the demo's candidate, after `make demo`) is bundled
for a fleet, published to a file:// channel, and one real `slimline agent` process installs and
serves it, in a process where importing PyTorch, transformers, MLflow or Airflow fails. Measured:
the agent's resident memory (VmRSS after it serves N requests, and its peak VmHWM, from
/proc/<pid>/status), batch-1 request latency through its HTTP API, and every distribution the
agent process has imported from, with its installed size, against the whole environment's.

    python bench/agent_footprint.py            # run, write bench/results/agent-footprint.json + .png
    python bench/agent_footprint.py --chart    # redraw the chart from the JSON only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "mlflow", "airflow")
# The agent, as `slimline agent`, where importing a heavy package fails; at exit it writes the
# distributions its modules came from (so the list is what the agent used, not what is installed).
AGENT_MAIN = """
import atexit, json, sys
for name in {heavy!r}:
    sys.modules[name] = None
def dump():
    import importlib.metadata as md
    owners = md.packages_distributions()
    used = sorted({{d for m in list(sys.modules) if sys.modules[m] is not None
                    for d in owners.get(m.split('.')[0], [])}})
    open({out!r}, 'w').write(json.dumps(used))
atexit.register(dump)
from tasks.cli import main
sys.exit(main(sys.argv[1:]))
"""
TEXTS = [
    "what a great day at the beach",
    "this update broke everything, again",
    "the meeting moved to thursday",
    "i can't believe how good this is",
]


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def _distribution_bytes(name: str) -> int:
    import importlib.metadata as md

    dist = md.distribution(name)
    total = 0
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def _site_packages_bytes() -> int:
    import sysconfig

    root = Path(sysconfig.get_paths()["purelib"])
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.core.settings import Settings
    from tasks.core.store import open_store
    from tasks.fleet.channel import Channel, DesiredState
    from tasks.fleet.spec import get_fleet
    from tasks.flow.release import bundle_release
    from tasks.release.bundle import RELEASE_JSON, Release
    from tasks.release.keys import load_private_key, public_key_path
    from tests.fleet_fixtures import http, wait_for

    settings = Settings(**({"home": args.home} if args.home else {}))
    fleet = get_fleet(settings.fleets_dir, args.fleet)
    model_version = args.model_version or "minilm-sentiment/candidate"
    bundle = bundle_release(settings, model_version, fleet.name)
    release = Release.model_validate_json((bundle / RELEASE_JSON).read_text(encoding="utf-8"))
    work = Path(tempfile.mkdtemp(prefix="agent-footprint-"))
    (work / "channel").mkdir()
    channel = Channel(open_store((work / "channel").as_uri()), fleet.name)
    channel.publish_release(bundle.parent, release.number)
    now = datetime.now(UTC)
    desired = DesiredState(
        fleet=fleet.name,
        version=1,
        issued_at=now,
        expires_at=now + timedelta(days=1),
        release=release.number,
        targets=fleet.targets,
        health=fleet.health,
        note="agent footprint benchmark",
    )
    channel.publish_desired(desired, load_private_key(settings.signing_key))
    modules_out = work / "distributions.json"
    root = work / "device"
    command = [
        sys.executable,
        "-c",
        AGENT_MAIN.format(heavy=HEAVY, out=str(modules_out)),
        "agent",
        "--fleet",
        fleet.name,
        "--device-id",
        "bench-1",
        "--root",
        str(root),
        "--channel",
        (work / "channel").as_uri(),
        "--trusted-key",
        str(public_key_path(settings.signing_key)),
        "--poll-seconds",
        "0.5",
    ]
    started = time.monotonic()
    log = (work / "agent.log").open("w")
    process = subprocess.Popen(
        command, cwd=REPO, env=dict(os.environ) | {"PYTHONPATH": str(REPO)}, stderr=log
    )
    try:
        port = wait_for(
            lambda: (
                json.loads((root / "agent.json").read_text())["port"]
                if (root / "agent.json").is_file()
                else None
            ),
            120,
            "the agent to listen",
        )
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: http("GET", f"{url}/version")[1].get("release") == release.number, 300, "the release"
        )
        active_seconds = time.monotonic() - started
        version = http("GET", f"{url}/version")[1]
        rss_before = _status_kb(process.pid, "VmRSS")
        latencies = []
        for i in range(args.requests):
            begun = time.perf_counter()
            http("POST", f"{url}/predict", {"texts": [TEXTS[i % len(TEXTS)]]})
            latencies.append((time.perf_counter() - begun) * 1000)
        rss_after, peak = _status_kb(process.pid, "VmRSS"), _status_kb(process.pid, "VmHWM")
    finally:
        process.terminate()
        process.wait(timeout=60)
    used = json.loads(modules_out.read_text())
    sizes = {name: _distribution_bytes(name) for name in used}
    engine_dir = root / "releases" / f"{release.number:06d}" / "bundle" / "engines" / version["target"]
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version": release.model_version,
        "fleet": fleet.name,
        "target": version["target"],
        "engine_mb": round(sum(p.stat().st_size for p in engine_dir.rglob("*") if p.is_file()) / 2**20, 1),
        "seconds_to_active": round(active_seconds, 1),
        "rss_mb_active": round(rss_before / 1024, 1),
        "rss_mb_after_requests": round(rss_after / 1024, 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "requests": args.requests,
        "http_p50_ms": round(statistics.median(latencies), 2),
        "http_p95_ms": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 2),
        "distributions": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        "agent_packages_mb": round(sum(sizes.values()) / 2**20, 1),
        "environment_mb": round(_site_packages_bytes() / 2**20, 1),
        "heavy_blocked": list(HEAVY),
        "machine": os.uname().machine,
        "cpu_count": os.cpu_count(),
    }


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["distributions"]
    top = list(sizes.items())[:12]
    rest = sum(v for _, v in list(sizes.items())[12:])
    labels = [n for n, _ in top] + (["others"] if rest else [])
    values = [v / 2**20 for _, v in top] + ([rest / 2**20] if rest else [])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    left.barh(labels[::-1], values[::-1], color="#4477aa")
    left.set_xlabel("installed MB")
    left.set_title(
        f"packages the agent imports: {results['agent_packages_mb']:.0f} MB "
        f"(whole environment {results['environment_mb']:.0f} MB)"
    )
    right.bar(
        ["active", "after\nrequests", "peak"],
        [results["rss_mb_active"], results["rss_mb_after_requests"], results["peak_rss_mb"]],
        color="#228833",
    )
    right.set_ylabel("resident MB")
    right.set_title("agent memory")
    right.set_xlabel(f"{results['target']}, {results['engine_mb']} MB engine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="slimline home (default $SLIMLINE_HOME or ./.slimline)")
    parser.add_argument(
        "--model-version", help="NAME/VERSION to release (default minilm-sentiment/candidate)"
    )
    parser.add_argument(
        "--fleet", default="staging", help="fleet whose targets are bundled (default staging)"
    )
    parser.add_argument("--requests", type=int, default=200, help="batch-1 /predict requests to serve (200)")
    parser.add_argument("--chart", action="store_true", help="only redraw the chart from the JSON")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "agent-footprint.json"
    results = json.loads(out.read_text()) if args.chart else run(args)
    if not args.chart:
        out.write_text(json.dumps(results, indent=2) + "\n")
    chart(results, RESULTS / "agent-footprint.png")
    print(json.dumps({k: v for k, v in results.items() if k != "distributions"}, indent=2))


if __name__ == "__main__":
    main()

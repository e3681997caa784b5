"""Where the steps run, and what it costs: the real nightly DAG (`airflow dags test`) on the tests'
tiny model and recipe (2 variants, 1 target: 2 variant tasks and 2 engine tasks) with each
`execution` mode, side by side: `inprocess`, `container` (the task image through podman's Docker
API, served by this script on a socket of its own) and `kubernetes` (a pod per step on the local
cluster, `make k8s-up`; left out when it is not up). The modes take turns, each run in a fresh home
(nothing cached), and the figure is the median wall time of the DAG run per mode.

    python bench/execution.py                    # run: bench/results/execution.json + .png
    python bench/execution.py --runs 1 --modes inprocess container
    python bench/execution.py --chart            # redraw the chart from the JSON only

Needs the task image (`make images`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
MODES = ("inprocess", "container", "kubernetes")
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"localhost/slimline-task:{VERSION}"
KUBECONFIG = REPO / ".tools" / "k8s" / "kubeconfig"
STEP_TASKS = 4  # 2 variants + 2 engine builds


def one_run(mode: str, folder: Path, checkpoint: Path, docker_url: str) -> float:
    """One DAG run in a fresh home; its wall time in seconds."""
    from tasks.core.settings import Resources, Settings
    from tasks.flow.orchestration import dags_test
    from tests.tiny import publish, write_tiny_recipe

    home = folder / "home"
    home.mkdir(parents=True)
    small = Resources(cpu="500m", memory="2Gi")  # the local node has 2 CPUs
    settings = Settings(
        home=home,
        execution=mode,
        docker_url=docker_url,
        variant_resources=small,
        engine_resources=small,
    )
    recipe = write_tiny_recipe(folder / "recipe")
    publish(settings, checkpoint, "nightly/tiny")
    run = dags_test(settings, "nightly_compression", {"recipe": str(recipe), "prefix": "nightly"}, echo=False)
    return run.seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.factories import make_checkpoint
    from tests.image_builds import serve_podman_api

    modes = list(args.modes)
    if "kubernetes" in modes:
        if not KUBECONFIG.exists():
            print("kubernetes left out: the local cluster is not up (make k8s-up)", flush=True)
            modes.remove("kubernetes")
        else:
            subprocess.run([str(REPO / "infra" / "k8s" / "load-image.sh"), IMAGE], check=True)
            connection = {
                "conn_type": "kubernetes",
                "extra": {
                    "kube_config_path": str(KUBECONFIG),
                    "in_cluster": False,
                    "xcom_sidecar_container_image": IMAGE,
                },
            }
            os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(connection)
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    with (
        tempfile.TemporaryDirectory(prefix="execution-bench-") as tmp,
        serve_podman_api(Path(tmp)) as docker_url,
    ):
        checkpoint = make_checkpoint(Path(tmp) / "checkpoint")
        for round_ in range(args.runs):
            for mode in modes:  # the modes take turns: the machine's noise falls on all of them
                taken = one_run(mode, Path(tmp) / f"{mode}-{round_}", checkpoint, docker_url)
                seconds[mode].append(taken)
                print(f"round {round_ + 1}: {mode:<10} {taken:6.1f} s", flush=True)
    reference = statistics.median(seconds["inprocess"]) if seconds.get("inprocess") else None
    rows = []
    for mode, runs in seconds.items():
        median = statistics.median(runs)
        rows.append(
            {
                "mode": mode,
                "dag_run_seconds": [round(s, 1) for s in runs],
                "dag_run_seconds_median": round(median, 1),
                "vs_inprocess": round(median / reference, 2) if reference else None,
                "overhead_per_step_task_seconds": (
                    round((median - reference) / STEP_TASKS, 1) if reference and mode != "inprocess" else None
                ),
            }
        )
    return {
        "benchmark": "nightly DAG run per execution mode",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "workload": "tests' tiny BERT (2 layers, hidden 32), tiny recipe: 2 variants, 1 CPU target; "
        f"{STEP_TASKS} step tasks; fresh home per run (no cached artifact)",
        "image": IMAGE,
        "kubernetes": "v1.20.2, one node on 127.0.0.1 (infra/k8s), containerd, image preloaded",
        "runs": args.runs,
        "modes": rows,
    }


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["modes"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = [r["mode"] for r in rows]
    medians = [r["dag_run_seconds_median"] for r in rows]
    ax.bar(names, medians, color=["#888", "#2a7", "#27a"][: len(rows)])
    for index, r in enumerate(rows):
        ax.scatter([index] * len(r["dag_run_seconds"]), r["dag_run_seconds"], color="black", s=10, zorder=3)
        ratio = f" ({r['vs_inprocess']}×)" if r["vs_inprocess"] else ""
        ax.annotate(
            f"{r['dag_run_seconds_median']:.0f} s{ratio}",
            (index, max(r["dag_run_seconds"])),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=9,
        )
    ax.set(
        ylabel="DAG run, seconds (median; dots: runs)", title="nightly DAG on the tiny model, per execution"
    )
    fig.suptitle(results["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="execution modes")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (the median is quoted)")
    parser.add_argument("--chart", action="store_true", help="only redraw the chart from the JSON")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "execution.json"
    if args.chart:
        results = json.loads(out.read_text())
    else:
        results = run(args)
        out.write_text(json.dumps(results, indent=2) + "\n")
    chart(results, RESULTS / "execution.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

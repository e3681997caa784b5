"""CPU engine benchmark: a registered version's ONNX Runtime engines against the registered ONNX
graph as ONNX Runtime loads it by default (optimizing it at every start), side by side.

For each model: session start (load, and for the registered graph its online optimization;
median of several starts), batch-1 latency over the canary requests in interleaved rounds (every
model in each round, order rotating, one intra-op thread each) and throughput at batch 64. The
reference is the registered graph loaded the default way.

    python bench/engines_cpu.py            # run, write bench/results/engines-cpu.json + .png
    python bench/engines_cpu.py --chart    # redraw the chart from the JSON only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = "registered ONNX (optimized at load)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    from tasks.core.models import ONNX_FILE
    from tasks.core.settings import Settings
    from tasks.engines.canary import CANARY_FILE, read_canary
    from tasks.engines.capabilities import read_capabilities
    from tasks.engines.check import canary_requests
    from tasks.engines.info import read_info
    from tasks.engines.runtimes import ort_cpu
    from tasks.flow.engines import version_canary
    from tasks.recipe import load_recipe
    from tasks.registry.engines import engines_of, fetch_engine
    from tasks.registry.versions import fetch_version, get_version, parse_version

    settings = Settings(**({"home": args.home} if args.home else {}))
    ref = get_version(settings, *parse_version(args.model_version))
    recipe = load_recipe(args.recipe or settings.recipe)
    canary = read_canary(version_canary(settings, ref, recipe).path / CANARY_FILE)
    registered = fetch_version(settings, ref).path / ONNX_FILE
    engines = {t: fetch_engine(settings, e) for t, e in sorted(engines_of(settings, ref).items())}
    if not engines:
        raise SystemExit(
            f"{ref.label} has no engines; run: slimline engine build --model-version {ref.label}"
        )

    def start_registered() -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        session = ort.InferenceSession(str(registered), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        class Registered:
            device = "cpu"

            def predict(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
                feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
                return np.asarray(session.run(["logits"], {n: feed[n] for n in names})[0])

        return Registered()

    starters: dict[str, Any] = {REFERENCE: start_registered}
    for target, folder in engines.items():
        info = read_info(folder)
        starters[f"engine {target} ({info.notes[0].split(':')[0] if info.notes else ''})"] = (
            lambda folder=folder, info=info: ort_cpu.load(folder, info, None)
        )

    starts: dict[str, list[float]] = {name: [] for name in starters}
    for _ in range(args.starts):
        for name, start in starters.items():
            began = time.perf_counter()
            start()
            starts[name].append((time.perf_counter() - began) * 1000)
    models = {name: start() for name, start in starters.items()}

    requests = canary_requests(canary, 1)
    names = list(models)
    p50s: dict[str, list[float]] = {n: [] for n in names}
    p95s: dict[str, list[float]] = {n: [] for n in names}
    for name in names:
        for ids, mask in requests[:10]:
            models[name].predict(ids, mask)
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            samples = []
            for i in range(args.requests):
                ids, mask = requests[i % len(requests)]
                began = time.perf_counter_ns()
                models[name].predict(ids, mask)
                samples.append((time.perf_counter_ns() - began) / 1e6)
            p50s[name].append(float(np.percentile(samples, 50)))
            p95s[name].append(float(np.percentile(samples, 95)))

    ids, mask = canary.arrays()
    rows = np.arange(args.batch) % len(ids)
    throughput = {}
    for name in names:
        models[name].predict(ids[rows], mask[rows])
        runs, began = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - began < 2.0:
            models[name].predict(ids[rows], mask[rows])
            runs += 1
        throughput[name] = args.batch * runs / (time.perf_counter() - began)

    reference = canary.reference
    results = []
    for name in names:
        # Each example alone, as the canary's reference was computed.
        logits = np.concatenate([models[name].predict(i, m) for i, m in requests])
        results.append(
            {
                "name": name,
                "start_ms_median": round(statistics.median(starts[name]), 1),
                "start_ms": [round(v, 1) for v in starts[name]],
                "p50_ms": round(statistics.median(p50s[name]), 3),
                "p50_ms_per_round": [round(v, 3) for v in p50s[name]],
                "p95_ms": round(statistics.median(p95s[name]), 3),
                "throughput_per_s": round(throughput[name], 1),
                "agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
                "max_logit_diff": round(float(np.abs(logits - reference).max()), 6),
            }
        )
    base = results[0]
    for row in results:
        row["start_speedup_vs_reference"] = round(base["start_ms_median"] / row["start_ms_median"], 2)
        row["p50_speedup_vs_reference"] = round(base["p50_ms"] / row["p50_ms"], 3)
    caps = read_capabilities()
    return {
        "model_version": ref.label,
        "variant": ref.lineage.get("variant"),
        "reference": REFERENCE,
        "machine": {"cpu": caps.cpu_model, "cores": caps.cpu_count, "onnxruntime": ort.__version__},
        "method": f"{args.starts} starts per model; {args.rounds} interleaved rounds × {args.requests} "
        f"batch-1 canary requests per model, one thread; throughput at batch {args.batch} for ≥2 s",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "models": results,
    }


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    names = [m["name"].replace(" (", "\n(") for m in models]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for axis, key, label in (
        (axes[0], "start_ms_median", "session start, ms (median)"),
        (axes[1], "p50_ms", "batch-1 p50, ms (median of rounds)"),
        (
            axes[2],
            "throughput_per_s",
            f"sequences/s at batch {results['method'].split('batch ')[-1].split()[0]}",
        ),
    ):
        axis.barh(names, [m[key] for m in models], color=["#999"] + ["#2a7"] * (len(models) - 1))
        axis.set_title(label, fontsize=10)
        axis.invert_yaxis()
        axis.tick_params(axis="y", labelsize=8)
    fig.suptitle(
        f"{results['model_version']} ({results['variant']}) on {results['machine']['cpu']}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="slimline home (default $SLIMLINE_HOME or ./.slimline)")
    parser.add_argument("--model-version", default="minilm-sentiment/candidate", help="NAME/VERSION or alias")
    parser.add_argument("--recipe", type=Path, help="recipe whose evaluation split gives the canary set")
    parser.add_argument("--starts", type=int, default=7, help="session starts timed per model")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument("--requests", type=int, default=200, help="batch-1 requests per model per round")
    parser.add_argument("--batch", type=int, default=64, help="throughput batch")
    parser.add_argument("--chart", action="store_true", help="only redraw the chart from the JSON")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "engines-cpu.json"
    if args.chart:
        results = json.loads(out.read_text())
    else:
        results = run(args)
        out.write_text(json.dumps(results, indent=2) + "\n")
    chart(results, RESULTS / "engines-cpu.png")
    for m in results["models"]:
        print(
            f"{m['name']:<48} start {m['start_ms_median']:8.1f} ms ({m['start_speedup_vs_reference']}x)  "
            f"p50 {m['p50_ms']:6.3f} ms ({m['p50_speedup_vs_reference']}x)  p95 {m['p95_ms']:6.3f}  "
            f"{m['throughput_per_s']:8.1f} seq/s  agree {m['agreement']:.3f}",
            file=sys.stdout,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

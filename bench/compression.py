"""Compression benchmark: every variant of a recipe on the demo teacher, side by side.

Accuracy and its paired 95% interval come from the pipeline's own evaluation and gates;
latency is measured again here, with more requests than the pipeline's own side-by-side timing,
by the same code (tasks.gate.timing): all models in one process, interleaved round by round, so
every row sees the same machine conditions. The reference row is ONNX Runtime dynamic
INT8 of the full model (`onnx-int8-dynamic`), the default a team would pick.

    python bench/compression.py            # run, write bench/results/compression.json + .png
    python bench/compression.py --chart    # redraw the chart from the JSON only

A recipe with a `search:` block runs its search first (cached points are reused); its front goes
into the same interleaved timing as the hand-written variants, the trials into the JSON, and the
search's own chart into `<name>-front.png`:

    python bench/compression.py --recipe recipes/minilm-sentiment-search.yaml --name search
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = "onnx-int8-dynamic"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import onnxruntime
    import torch

    from tasks.compress.training import TEACHER_LOGITS_STEP
    from tasks.core.artifacts import load_manifest
    from tasks.core.settings import Settings
    from tasks.core.version import code_digest
    from tasks.demo.runner import demo_checkpoint
    from tasks.demo.teacher import TeacherConfig
    from tasks.flow.pipeline import baseline_model, prepare, publish, run_variant
    from tasks.flow.search import run_search
    from tasks.gate.evaluate import metrics_of
    from tasks.gate.timing import TimedModel, TimingConfig, time_interleaved
    from tasks.intake.data import load_split
    from tasks.recipe import load_recipe

    settings = Settings(**({"home": args.home} if args.home else {}))
    recipe = load_recipe(args.recipe)
    teacher, uri = demo_checkpoint(settings, recipe, TeacherConfig())

    prepared = prepare(settings, args.recipe, uri, run_label=f"bench-{datetime.now(UTC):%Y%m%dT%H%M%S}")
    searched = run_search(settings, prepared)  # nothing for a recipe without `search:`
    outcomes = [run_variant(settings, prepared, v) for v in recipe.variants] + searched.outcomes
    summary = publish(settings, prepared, outcomes, searched.record)

    models = [baseline_model(prepared.checkpoint)]
    models += [TimedModel(name=o.variant, model=o.model, key=o.model_key) for o in outcomes]
    config = TimingConfig.model_validate(
        recipe.timing.model_dump()
        | {"rounds": args.rounds, "requests": -(-args.samples // args.rounds)}
        | ({"threads": args.threads} if args.threads else {})
    )
    texts = [e.text for e in load_split(prepared.split.path, "eval")]
    timing = time_interleaved(models, texts, recipe.dataset.max_length, config)

    produce = {o.variant: o.produce_seconds for o in outcomes}
    step_seconds = {
        o.variant: [[s, t] for s, t in zip(o.steps, o.step_seconds, strict=True)] for o in outcomes
    }
    rows = []
    for row in summary.rows:
        metrics = row.metrics
        rows.append(
            {
                "name": row.name,
                "steps": next((o.steps for o in outcomes if o.variant == row.name), []),
                "runtime": metrics.runtime,
                "accuracy": metrics.accuracy,
                "drop_pts": row.drop.model_dump() if row.drop else None,
                "p50_ms": timing.of(row.name).p50_ms,
                "p95_ms": timing.of(row.name).p95_ms,
                "p50_ms_per_round": timing.of(row.name).p50_ms_per_round,
                "speedup_vs_reference": round(timing.of(REFERENCE).p50_ms / timing.of(row.name).p50_ms, 2),
                "size_mb": round(metrics.size_bytes / 1e6, 2),
                "passed": row.passed,
                "reason": row.reason,
                "produce_seconds": produce.get(row.name),
                "step_seconds": step_seconds.get(row.name, []),
            }
        )
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
        "recipe": recipe.name,
        "recipe_digest": recipe.digest,
        "checkpoint_digest": prepared.checkpoint.digest,
        "eval_examples": metrics_of(prepared.baseline).examples,
        # Per model: the median over rounds of the round p50 and p95 (every round the same texts).
        "latency": {
            "batch": 1,
            "rounds": config.rounds,
            "requests_per_round": config.requests,
            "threads": config.threads,
            "interleaved": True,
        },
        "candidate": summary.candidate_reason,
        "reference": REFERENCE,
        "teacher_finetune_seconds": teacher.manifest.seconds,
        # Computed once over the training split by the first trained step that needs it (its time
        # is inside that step's seconds) and reused by every other.
        "teacher_logits_seconds": [
            m.seconds
            for m in (
                load_manifest(path.parent)
                for path in sorted((settings.artifacts_dir / TEACHER_LOGITS_STEP).glob("*/manifest.json"))
            )
            if m.inputs.get("teacher") == prepared.checkpoint.digest
            and m.code_digest == code_digest("tasks.compress.training")
        ],
        "rows": rows,
        "search": summary.search.model_dump(mode="json") if summary.search else None,
    }


def chart(results: dict[str, Any], path: Path) -> None:
    from tasks.report.charts import ChartPoint, accuracy_latency_chart, search_chart
    from tasks.search.study import SearchRecord

    if results.get("search"):
        record = SearchRecord.model_validate(results["search"])
        search_chart(record, f"{results['recipe']} search", path.with_name(f"{path.stem}-front.png"))

    reference = next(r for r in results["rows"] if r["name"] == results["reference"])
    accuracy_latency_chart(
        [ChartPoint.model_validate(row) for row in results["rows"]],
        results["recipe"],
        reference["p50_ms"],
        path,
        y_label=f"accuracy on {results['eval_examples']} held-out tweets (%)",
        note=f"{results['machine']['cpu']}, {results['machine']['cores']} cores",
    )


def table(results: dict[str, Any]) -> str:
    from tasks.gate.gates import Interval
    from tasks.report.console import signed_interval

    lines = [
        "| variant | accuracy | Δ vs teacher, pts [95% CI] | p50 ms | p95 ms | speed-up vs ref | size MB "
        "| produce s | gate |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results["rows"]:
        delta = "—" if r["drop_pts"] is None else signed_interval(Interval.model_validate(r["drop_pts"]))
        gate = {None: "baseline", True: "pass", False: "fail"}[r["passed"]]
        lines.append(
            f"| {r['name']} | {r['accuracy']:.4f} | {delta} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
            f"{r['speedup_vs_reference']:.2f}× | {r['size_mb']:.1f} | {r['produce_seconds'] or '—'} "
            f"| {gate} |"
        )
    search = results.get("search")
    if search:
        front = set(search["front"])
        timed = [r for r in results["rows"] if r["passed"]]
        for kind, rows in (
            ("search point", [r for r in timed if r["name"] in front]),
            ("hand-written variant", [r for r in timed if r["name"] not in front]),
        ):
            best = max(rows, key=lambda r: r["speedup_vs_reference"], default=None)
            lines.append(
                f"\nfastest passing {kind}: "
                + (f"{best['name']} {best['speedup_vs_reference']:.2f}× reference" if best else "none")
            )
        lines.append(
            f"search: {len(search['trials'])} trials, {search['stopped']}, {search['seconds']:.0f} s"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="slimline home (default $SLIMLINE_HOME or ./.slimline)")
    parser.add_argument(
        "--recipe",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "recipes" / "minilm-sentiment.yaml",
    )
    parser.add_argument(
        "--samples", type=int, default=300, help="batch-1 requests per model, spread over the rounds"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads per model (default: the recipe's timing)"
    )
    parser.add_argument("--chart", action="store_true", help="only redraw the chart from the JSON")
    parser.add_argument(
        "--name", default="compression", help="results file stem: bench/results/NAME.json, NAME.png"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{args.name}.json"
    if args.chart:
        results = json.loads(json_path.read_text())
    else:
        results = run(args)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
    chart(results, RESULTS / f"{args.name}.png")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Search under the gates: the space's config, the steps a point stands for, Optuna's loop with its
constraints and front, and a whole search through the pipeline on a tiny model."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from rich.console import Console

from tasks.core.errors import ConfigError, TechniqueError
from tasks.flow.local import run_local
from tasks.flow.orchestration import dags_test
from tasks.recipe import Step, Variant, load_recipe
from tasks.report.console import print_summary
from tasks.report.html import load_published_summary, report_path
from tasks.search.space import Point, SearchConfig, point_steps, spread_layers
from tasks.search.study import Measured, run_study
from tests.tiny import publish, write_tiny_recipe

SEARCH_TAG = "slimline.search_point"


def point(**changes: object) -> Point:
    values: dict[str, object] = {
        "depth": 3,
        "ffn_keep": 1.0,
        "heads_to_prune": 0,
        "vocab_min_count": 1,
        "lowrank_energy": None,
        "quantization": "int8",
    }
    return Point.model_validate(values | changes)


def test_layers_are_spread_evenly_from_the_first():
    assert spread_layers(3, 6) == [0, 2, 4]
    assert spread_layers(2, 6) == [0, 3]
    assert spread_layers(1, 2) == [0]


def test_a_plain_point_is_distilled_trimmed_and_quantized_without_recovery():
    config = SearchConfig(reference="onnx-int8-dynamic")
    steps = point_steps(point(), config, teacher_layers=6)
    assert [s["technique"] for s in steps] == [
        "distill.student",
        "trim.vocabulary",
        "export.onnx",
        "optimize.ort_fusions",
        "quantize.onnx_dynamic_int8",
    ]
    assert steps[0]["config"]["layers"] == [0, 2, 4]
    # The steps are a valid recipe variant (technique names, configs, model formats in order).
    Variant.model_validate({"name": point().name, "steps": steps})


def test_a_narrowed_point_is_recovered_before_its_vocabulary_is_trimmed():
    config = SearchConfig(reference="onnx-int8-dynamic")
    narrowed = point(
        depth=2, ffn_keep=0.25, heads_to_prune=4, lowrank_energy=0.9, quantization="mixed", vocab_min_count=3
    )
    steps = point_steps(narrowed, config, teacher_layers=6)
    assert [s["technique"] for s in steps] == [
        "distill.student",
        "prune.heads",
        "prune.ffn",
        "lowrank.svd",
        "finetune.recover",
        "trim.vocabulary",
        "export.onnx",
        "optimize.ort_fusions",
        "quantize.mixed_precision",
    ]
    assert steps[2]["config"]["keep_fraction"] == 0.25 and steps[3]["config"]["energy"] == 0.9
    assert steps[5]["config"]["min_count"] == 3
    assert steps[4]["config"] == config.recover.model_dump(mode="json")
    assert narrowed.name == "search-2L-ffn25-h4-r90-v3-mixed"
    Variant.model_validate({"name": narrowed.name, "steps": steps})


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"space": {"depth": [2, 2]}}, "depth must not repeat a value"),
        ({"space": {"ffn_keep": [0.0]}}, "ffn_keep=[0.0]; allowed: shares in (0, 1]"),
        ({"space": {"lowrank_energy": [1.5]}}, "allowed: shares in (0, 1), or null"),
        ({"space": {"quantization": ["int4"]}}, "quantization.0"),
        ({"start": [{"depth": 5}]}, "start[0].depth = 5 is not among space.depth [2, 3]"),
        ({"start": [{"width": 5}]}, "start[0] has unknown dimension(s) width"),
        ({"objectives": ["energy"]}, "objectives.0"),
        (
            {"reference": "no-such-variant"},
            "search.reference 'no-such-variant' is not a variant of the recipe",
        ),
    ],
)
def test_a_bad_search_block_fails_at_load_with_the_field(tmp_path, block, message):
    path = write_tiny_recipe(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    recipe["search"] = {"reference": "onnx-int8-dynamic"} | block
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert message in str(caught.value)
    assert str(caught.value).count("\n") == 0


def synthetic(p: Point) -> Measured:
    """A known landscape: shallower and narrower is faster and smaller but less accurate; the
    1-layer points fail their gates."""
    accuracy = 0.70 + 0.03 * p.depth + 0.02 * p.ffn_keep
    speedup = 6.0 / p.depth / (0.5 + 0.5 * p.ffn_keep)
    size = 2.0 * p.depth * (0.5 + 0.5 * p.ffn_keep) + 4.0 / p.vocab_min_count
    passed = p.depth > 1
    return Measured(
        accuracy=accuracy,
        drop_high=0.2 if passed else 3.0,
        speedup=speedup,
        size_mb=size,
        passed=passed,
        reason="ok" if passed else "FAIL acc drop",
    )


SPACE = {"depth": [1, 2, 3], "ffn_keep": [0.5, 1.0], "vocab_min_count": [1, 4]}


def dominates(a: Measured, b: Measured) -> bool:
    ge = a.accuracy >= b.accuracy and a.speedup >= b.speedup and a.size_mb <= b.size_mb
    return ge and (a.accuracy, a.speedup, -a.size_mb) != (b.accuracy, b.speedup, -b.size_mb)


def test_the_study_keeps_the_feasible_pareto_front_and_measures_each_point_once():
    config = SearchConfig(reference="ref", space=SPACE, trials=24, startup_trials=4, seed=1)
    measured: list[Point] = []

    def measure(p: Point) -> Measured:
        measured.append(p)
        return synthetic(p)

    record = run_study(config, measure)
    # The space has 12 points: a budget of 24 distinct points ends when all 12 are measured, once
    # each; the proposals of points already measured are answered and do not count.
    assert len(measured) == len(set(measured)) == 12
    assert record.stopped == "every point of the space measured (12)"
    repeats = [t for t in record.trials if t.duplicate_of is not None]
    assert len(record.trials) == 12 + len(repeats)
    for t in repeats:
        assert t.duplicate_of is not None and not t.on_front
        assert t.measured == record.trials[t.duplicate_of].measured
    feasible = [t for t in record.trials if t.state == "passed" and t.duplicate_of is None]
    assert all(t.point.depth > 1 for t in feasible)
    assert all(t.state == "failed" for t in record.trials if t.point.depth == 1)
    expected = {
        t.name
        for t in feasible
        if t.measured and not any(o.measured and dominates(o.measured, t.measured) for o in feasible)
    }
    assert set(record.front) == expected and expected
    assert {t.name for t in record.trials if t.on_front} == expected
    speedups = [record.trial(name).measured.speedup for name in record.front]  # type: ignore[union-attr]
    assert speedups == sorted(speedups, reverse=True)
    assert record.objectives == ["accuracy", "latency", "size"]


def test_the_budget_counts_distinct_points_and_repeats_in_a_row_stop_the_search():
    config = SearchConfig(reference="ref", space=SPACE, trials=5, startup_trials=2, seed=3)
    record = run_study(config, synthetic)
    assert sum(t.duplicate_of is None for t in record.trials) == 5
    assert record.stopped == "budget of 5 points"
    # A sampler that has converged keeps proposing what it measured: max_repeats ends the search.
    one = {"depth": [2], "ffn_keep": [0.5, 1.0], "vocab_min_count": [1]}
    start = [{"depth": 2, "ffn_keep": 0.5, "vocab_min_count": 1}] * 4
    config = SearchConfig(reference="ref", space=one, trials=2, start=start, max_repeats=2, seed=0)
    record = run_study(config, synthetic)
    assert [t.duplicate_of for t in record.trials] == [None, 0, 0, 0]
    assert record.stopped == "3 proposals in a row of points already measured"


def test_start_points_go_first_and_failures_and_limits_are_recorded():
    start = {"depth": 2, "ffn_keep": 0.5, "vocab_min_count": 4}
    config = SearchConfig(reference="ref", space=SPACE, trials=10, start=[start], max_size_mb=3.0, seed=0)

    def measure(p: Point) -> Measured:
        if p.ffn_keep == 1.0 and p.depth == 3:
            raise TechniqueError("quantize.mixed_precision: cannot reach agreement 0.998")
        return synthetic(p)

    record = run_study(config, measure)
    first = record.trials[0]
    assert first.point.model_dump(include=set(start)) == start
    # size 2*2*0.75 + 1 = 4.0 MB > the search's 3 MB: infeasible although its gates passed.
    assert first.state == "failed" and first.reason == "FAIL size 4.0 MB > search limit 3 MB"
    errors = [t for t in record.trials if t.state == "error"]
    assert all(t.measured is None and t.reason.startswith("ERROR quantize.mixed_precision") for t in errors)
    for name in record.front:
        trial = record.trial(name)
        assert trial.measured and trial.measured.size_mb <= 3.0 and trial.state == "passed"


def test_the_time_limit_stops_new_trials():
    config = SearchConfig(reference="ref", space=SPACE, trials=50, timeout_minutes=0.0001)

    def slow(p: Point) -> Measured:
        import time

        time.sleep(0.01)
        return synthetic(p)

    record = run_study(config, slow)
    assert 1 <= len(record.trials) < 12
    assert record.stopped.startswith("time limit of 0.0001 min after")


def search_recipe(folder: Path, trials: int = 3) -> Path:
    path = write_tiny_recipe(folder)
    recipe = yaml.safe_load(path.read_text())
    recipe["search"] = {
        "reference": "onnx-int8-dynamic",
        "space": {"depth": [1], "ffn_keep": [0.5, 1.0], "quantization": ["int8"]},
        "student": {"epochs": 1, "train_examples": 80, "transfer_examples": 0, "batch_size": 16},
        "recover": {"epochs": 1, "max_examples": 80, "batch_size": 16},
        "trials": trials,
        "startup_trials": 1,
        "timing": {"rounds": 2, "requests": 10, "warmup": 2},
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_a_search_in_the_nightly_run_registers_its_front_like_any_variant(
    settings, tiny_checkpoint, tmp_path
):
    uri = publish(settings, tiny_checkpoint, "nightly/tiny-search")
    summary = run_local(settings, search_recipe(tmp_path / "recipe"), uri)
    record = summary.search
    assert record is not None and record.stopped == "every point of the space measured (2)"
    measured = [t for t in record.trials if t.duplicate_of is None]
    assert sorted(t.name for t in measured) == [
        "search-1L-ffn100-h0-rfull-v1-int8",
        "search-1L-ffn50-h0-rfull-v1-int8",
    ]
    for trial in measured:
        assert trial.measured is not None and trial.measured.speedup > 0 and trial.measured.size_mb > 0
    # Every measured point has its child run; the front's passing points are rows and versions.
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    runs = client.search_runs(
        [client.get_run(summary.parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'",
    )
    searched = {r.data.tags[SEARCH_TAG] for r in runs if SEARCH_TAG in r.data.tags}
    assert searched == {t.name for t in measured}
    rows = {r.name: r for r in summary.rows}
    assert record.front and all(rows[name].version for name in record.front if rows[name].passed)
    assert {"baseline", "onnx-fp32", "onnx-int8-dynamic", *record.front} == set(rows)
    assert summary.timing is not None and {*record.front} <= {m.name for m in summary.timing.models}
    # The release report and the terminal show the trials, the front and the comparison.
    html = report_path(settings, summary).read_text()
    assert "<h2>Search under the gates</h2>" in html and "data:image/png;base64," in html
    assert all(name in html for name in record.front) and "fastest search point: " in html
    out = Console(file=io.StringIO(), width=250)
    print_summary(summary, out)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    trials = f"search: {len(record.trials)} trials, every point of the space measured (2), front "
    assert trials in text and "fastest hand-written variant: " in text


def test_the_nightly_dag_searches_and_registers_the_front(settings, tiny_checkpoint, tmp_path):
    recipe = search_recipe(tmp_path / "recipe", trials=2)
    uri = publish(settings, tiny_checkpoint, "nightly/tiny-search-dag")
    result = dags_test(settings, "nightly_compression", {"recipe": str(recipe), "checkpoints": [uri]})
    assert result.state == "success"
    assert "search" in [t.label for t in result.tasks]
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    versions = client.search_model_versions("name = 'tiny-sentiment'")
    parent = versions[0].tags["slimline.parent_run_id"]
    summary = load_published_summary(settings, parent)
    assert summary.search is not None and summary.search.front
    registered = {v.tags["slimline.variant"] for v in versions}
    passing = {r.name for r in summary.rows if r.passed}
    assert {name for name in summary.search.front if name in passing} <= registered
    assert any(name.startswith("search-") for name in registered)


def test_a_search_deeper_than_the_teacher_fails_in_one_line(settings, tiny_checkpoint, tmp_path):
    path = search_recipe(tmp_path / "recipe")
    recipe = yaml.safe_load(path.read_text())
    recipe["search"]["space"]["depth"] = [2]
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    with pytest.raises(ConfigError, match=r"search.space.depth \[2\] is not below the teacher's 2 layers"):
        run_local(settings, path, publish(settings, tiny_checkpoint, "nightly/tiny-deep"))


def test_points_of_the_space_have_distinct_names():
    config = SearchConfig(
        reference="r",
        space={
            "depth": [2, 3],
            "ffn_keep": [0.25, 0.5, 1.0],
            "heads_to_prune": [0, 4],
            "vocab_min_count": [1, 2],
            "lowrank_energy": [None, 0.9],
            "quantization": ["int8", "mixed"],
        },
    )
    space = config.space.model_dump()
    names = {
        Point(**dict(zip(space, values, strict=True))).name for values in itertools.product(*space.values())
    }
    assert len(names) == 2 * 3 * 2 * 2 * 2 * 2


def test_the_demo_search_trains_the_demo_recipes_student_with_a_larger_budget():
    root = Path(__file__).resolve().parent.parent / "recipes"
    demo = load_recipe(root / "minilm-sentiment.yaml")
    search = load_recipe(root / "minilm-sentiment-search.yaml")
    assert search.search is not None and search.dataset == demo.dataset
    written = demo.variant("distilled-3L-ffn-vocab-int8")
    assert search.variant("distilled-3L-ffn-vocab-int8").steps == written.steps
    # The first start point is that variant's shape with the smaller vocabulary; its student and
    # recovery differ from the nightly ones only in how many tweets they train on.
    first = Point(**search.search.start[0])
    steps = [Step.model_validate(s) for s in point_steps(first, search.search, 6)]
    assert [s.technique for s in steps] == [s.technique for s in written.steps]
    for mine, nightly in zip(steps, written.steps, strict=True):
        changed = {k for k, v in mine.config.items() if nightly.config.get(k) != v}
        assert changed <= {"transfer_examples", "max_examples", "min_count"}, (mine.technique, changed)
    assert steps[0].config["transfer_examples"] == 20000
    assert steps[2].config["max_examples"] == 16000


def test_a_hand_written_variant_may_not_take_the_search_prefix(tmp_path):
    path = write_tiny_recipe(tmp_path, [{"name": "search-mine", "steps": [{"technique": "export.onnx"}]}])
    recipe = yaml.safe_load(path.read_text())
    recipe["search"] = {"reference": "onnx-int8-dynamic"}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(
        ConfigError, match=r"variant name\(s\) search-mine start with 'search-', which names the"
    ):
        load_recipe(path)

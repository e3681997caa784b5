"""Recipes validate at load time and say which field, which value and what is allowed."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.core.errors import ConfigError
from tasks.recipe import load_recipe, parse_recipe

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "minilm-sentiment.yaml"


def demo_data() -> dict[str, Any]:
    return yaml.safe_load(DEMO.read_text())


def test_demo_recipe_loads_with_defaults_filled_in():
    recipe = load_recipe(DEMO)
    assert recipe.name == "minilm-sentiment"
    assert [v.name for v in recipe.variants][:2] == ["onnx-int8-dynamic", "fused-int8-dynamic"]
    quantize = recipe.variant("onnx-int8-dynamic").steps[1]
    assert quantize.config == {"per_channel": False, "reduce_range": False, "weight_type": "qint8"}


def test_digest_ignores_layout_but_not_content():
    data = demo_data()
    assert parse_recipe(data, "a").digest == load_recipe(DEMO).digest
    data["gates"]["max_accuracy_drop"] = 0.5
    assert parse_recipe(data, "b").digest != load_recipe(DEMO).digest


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["variants"][0]["steps"][1]["config"].update(per_chanel=True),
            "variants.0.steps.1: quantize.onnx_dynamic_int8: per_chanel = True: "
            "Extra inputs are not permitted",
        ),
        (
            lambda d: d["variants"][0]["steps"][1].update(technique="quantize.magic"),
            "unknown technique 'quantize.magic'; allowed: ",
        ),
        (
            lambda d: d["variants"][0]["steps"][0]["config"].update(opset=9),
            "opset = 9: Input should be greater than or equal to 14",
        ),
        (
            lambda d: d["gates"].update(max_accuracy_drop=-1),
            "gates.max_accuracy_drop = -1: Input should be greater than or equal to 0",
        ),
        (
            lambda d: d["variants"][1].update(steps=[{"technique": "quantize.onnx_dynamic_int8"}]),
            "step 0 (quantize.onnx_dynamic_int8) needs a onnx model but receives hf",
        ),
        (
            lambda d: d["variants"].append(d["variants"][0]),
            "variant names must be unique; repeated: onnx-int8-dynamic",
        ),
        (
            lambda d: d["timing"].update(rounds=0),
            "timing.rounds = 0: Input should be greater than or equal to 1",
        ),
        (lambda d: d["dataset"].pop("labels"), "dataset.labels: field required"),
        (
            lambda d: d["targets"][0].update(runtime="onnxruntime"),
            "targets.0.runtime = 'onnxruntime': Extra inputs are not permitted",
        ),
        (
            lambda d: d["targets"][0].update(max_size_mb=0),
            "targets.0.max_size_mb = 0: Input should be greater than 0",
        ),
        (
            lambda d: d["timing"].update(requests=d["dataset"]["eval_size"] + 1),
            "timing.requests = 2001 exceeds dataset.eval_size = 2000; each request is a distinct "
            "evaluation text, so allowed: at most 2000",
        ),
        (lambda d: d.update(colour="blue"), "colour = 'blue': Extra inputs are not permitted"),
    ],
)
def test_bad_recipe_names_field_value_and_allowed(mutate, expected):
    data = demo_data()
    mutate(data)
    with pytest.raises(ConfigError) as caught:
        parse_recipe(data, "bad.yaml")
    message = str(caught.value)
    assert message.startswith("recipe bad.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_recipe(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_recipe(scalar)

"""The `slimline` command: help for every command, one-line errors with distinct exit codes."""

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.cli import main
from tests.tiny import publish, write_tiny_recipe

COMMANDS = [
    [],
    ["demo"],
    ["run"],
    ["nightly"],
    ["checkpoints"],
    ["checkpoints", "list"],
    ["checkpoints", "verify"],
    ["recipe", "check"],
    ["techniques"],
    ["gate"],
    ["gate", "check"],
    ["report"],
    ["keys"],
    ["keys", "generate"],
    ["release"],
    ["release", "verify"],
    ["agent"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "slimline")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as caught:
        main([*command, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: slimline")
    assert len(out.splitlines()) > 3


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("slimline")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "checkpoints" in out


def test_bad_recipe_is_one_line_and_exit_2(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: Bad Name\n")
    assert main(["recipe", "check", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"slimline: error: recipe {recipe}: name = 'Bad Name'")
    assert "\n" not in err


def test_list_verify_and_run(settings, tiny_checkpoint, tmp_path, capsys):
    home = ["--home", str(settings.home)]
    uri = publish(settings, tiny_checkpoint, "nightly/tiny")
    assert main([*home, "checkpoints", "list", "--prefix", "nightly", "--digests"]) == 0
    listed = capsys.readouterr().out
    assert uri in listed and "sha256:" in listed

    assert main([*home, "checkpoints", "verify", uri]) == 0
    assert capsys.readouterr().out.startswith(f"ok {uri} sha256:")

    recipe = write_tiny_recipe(tmp_path / "recipe")
    assert main([*home, "recipe", "check", str(recipe)]) == 0
    assert "2 variants" in capsys.readouterr().out

    assert main([*home, "run", "--checkpoint", uri, "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    for name in ("baseline", "onnx-fp32", "onnx-int8-dynamic", "new versions v1, v2"):
        assert name in out


def test_refused_checkpoint_exit_4(settings, tiny_checkpoint, capsys):
    config = tiny_checkpoint / "config.json"
    config.write_text(
        config.read_text().replace('"model_type"', '"auto_map": {"AutoModel": "x.Y"}, "model_type"')
    )
    uri = publish(settings, tiny_checkpoint, "nightly/remote-code")
    assert main(["--home", str(settings.home), "checkpoints", "verify", uri]) == 4
    err = capsys.readouterr().err.strip()
    assert err == (
        f"slimline: error: checkpoint {uri}: config.json asks for remote code (auto_map); "
        "slimline never runs code from a checkpoint"
    )


def test_techniques_lists_configs(capsys):
    assert main(["techniques"]) == 0
    out = capsys.readouterr().out
    assert "export.onnx  (hf -> onnx)" in out
    assert "per_channel = False" in out

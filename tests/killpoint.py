"""Run the `slimline` command with one function replaced by a SIGKILL of this process, so a real run
crashes exactly when it reaches that point (the function itself never runs):

    python -m tests.killpoint MODULE:FUNCTION [slimline arguments...]

The function is looked up as an attribute of its module when called, so the callers must reach it
through the module (`tracking.set_alias`, a technique's `from onnxruntime.quantization import ...`).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Any

from tasks.cli import main


def arm(target: str) -> None:
    """Replace MODULE:FUNCTION by a SIGKILL of this process."""
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    if not callable(getattr(module, name, None)):
        raise SystemExit(f"killpoint: {target} is not a function")

    def kill(*args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(module, name, kill)


if __name__ == "__main__":
    arm(sys.argv[1])
    sys.exit(main(sys.argv[2:]))

"""Run the `slimline` command with one function replaced by a SIGKILL of this process, so a real run
crashes exactly when it reaches that point (the function itself never runs):

    python -m tests.killpoint MODULE:FUNCTION [slimline arguments...]

FUNCTION may be dotted (`Class.method`). It is looked up as an attribute when called, so the callers
must reach it through its owner (`tracking.set_alias`, a technique's `from onnxruntime.quantization
import ...` inside its run, a method of a client).
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
    module_name, _, path = target.partition(":")
    *owners, name = path.split(".")
    owner: Any = importlib.import_module(module_name)
    for attribute in owners:
        owner = getattr(owner, attribute)
    if not callable(getattr(owner, name, None)):
        raise SystemExit(f"killpoint: {target} is not a function")

    def kill(*args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(owner, name, kill)


if __name__ == "__main__":
    arm(sys.argv[1])
    sys.exit(main(sys.argv[2:]))

"""Run the `slimline` command with one function replaced by a SIGKILL of this process, so a real run
crashes exactly when it reaches that point (the function itself never runs):

    python -m tests.killpoint MODULE:FUNCTION [slimline arguments...]

FUNCTION may be dotted (`Class.method`); `MODULE:FUNCTION@N` lets the first N-1 calls run and kills
at the Nth (a function a process also calls at start-up). It is looked up as an attribute when
called, so the callers must reach it through its owner (`tracking.set_alias`, a technique's
`from onnxruntime.quantization import ...` inside its run, a method of a client).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Any

from tasks.cli import main


def arm(target: str) -> None:
    """Replace MODULE:FUNCTION by a SIGKILL of this process (MODULE:FUNCTION@N: at the Nth call)."""
    target, _, nth = target.partition("@")
    module_name, _, path = target.partition(":")
    *owners, name = path.split(".")
    owner: Any = importlib.import_module(module_name)
    for attribute in owners:
        owner = getattr(owner, attribute)
    if not callable(getattr(owner, name, None)):
        raise SystemExit(f"killpoint: {target} is not a function")

    original = getattr(owner, name)
    calls = [0]

    def kill(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] < int(nth or 1):
            return original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(owner, name, kill)


if __name__ == "__main__":
    arm(sys.argv[1])
    sys.exit(main(sys.argv[2:]))

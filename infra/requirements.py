"""Print the pip requirements of one image, read from pyproject.toml (the one list of versions):
`task` every dependency, `agent` only what the edge agent imports (ONNX Runtime, tokenizers and the
verification stack; no PyTorch, transformers, MLflow or Airflow).

    python requirements.py pyproject.toml task|agent > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib

# The distributions `slimline agent` imports directly (bench/agent_footprint.py lists what they pull in).
AGENT = {
    "onnxruntime",
    "tokenizers",
    "numpy",
    "pydantic",
    "pydantic-settings",
    "pyyaml",
    "boto3",
    "model-signing",
    "pyopenssl",
}


def name_of(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    if match is None:
        raise SystemExit(f"requirements.py: cannot read a name from {requirement!r}")
    return match.group(0).lower().replace("_", "-")


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[2] not in ("task", "agent"):
        raise SystemExit("usage: python requirements.py pyproject.toml task|agent")
    with open(sys.argv[1], "rb") as file:
        requirements = tomllib.load(file)["project"]["dependencies"]
    if sys.argv[2] == "agent":
        requirements = [r for r in requirements if name_of(r) in AGENT]
        missing = AGENT - {name_of(r) for r in requirements}
        if missing:
            raise SystemExit(f"requirements.py: pyproject.toml lists no {', '.join(sorted(missing))}")
    print("\n".join(requirements))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

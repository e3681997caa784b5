"""The base of every config model: strict, so a typo or an unknown field fails at load time."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

SLUG = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def format_errors(exc: ValidationError) -> str:
    """One line: each failing field as `path = value: message`."""
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"]) or "(root)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            parts.append(f"{loc}: field required")
        elif isinstance(error["input"], dict | list):
            parts.append(f"{loc}: {message}")
        else:
            parts.append(f"{loc} = {error['input']!r}: {message}"[:400])
    return "; ".join(parts)

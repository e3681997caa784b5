"""The base of every config model: strict, so a typo or an unknown field fails at load time."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

SLUG = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

"""The rich console every terminal table is printed on."""

from __future__ import annotations

import sys

from rich.console import Console


def console() -> Console:
    # Off a terminal rich assumes 80 columns, which folds the table; logs and CI are wider.
    return Console(width=None if sys.stdout.isatty() else 160)

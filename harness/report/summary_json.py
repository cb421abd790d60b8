"""summary.json: the contract CI and later tools read."""

from __future__ import annotations

import json
from typing import Any


def render_summary_json(summary: dict[str, Any]) -> str:
    """summary.json text for a summary built by ``analysis.summary.summarize``."""
    return json.dumps(summary, indent=2, default=str) + "\n"

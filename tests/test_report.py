"""report.html from committed recordings, without running anything."""

from __future__ import annotations

import html

from harness.analysis import inside
from harness.analysis.summary import summarize
from harness.analysis.verdict import diagnose
from harness.recording import Recording
from harness.report.html import render_html
from tests.conftest import DATA


def test_the_run_section_shows_the_apps_interpreter_not_only_the_harness():
    rec = Recording.load(DATA / "diagnose_db_slow")
    page = render_html(rec, summarize(rec), diagnose(rec))
    python, versions = inside.app_runtime(rec)
    row = f"Python {python}, " + ", ".join(f"{k} {v}" for k, v in versions.items())
    assert "fastapi" in versions and html.escape(row) in page
    assert html.escape("the harness's packages") in page  # the harness's own, beside, named as such


def test_a_run_without_agent_streams_says_so():
    rec = Recording.load(DATA / "smoke_run")  # made before the agent
    assert inside.app_runtime(rec) is None
    assert "not seen (no agent stream)" in render_html(rec, summarize(rec))

"""report.html from committed recordings, without running anything."""

from __future__ import annotations

import html
import re

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


def test_the_progress_line_names_the_step_and_says_when_it_drains():
    from harness.records import Progress
    from harness.report.terminal import format_progress

    plain = format_progress(Progress(12.1, 20.0, 950.0, 12.34, 11_000, 3, None))
    assert plain.startswith("[ 12.1/20 s]") and "950 req/s" in plain and "12.3 ms" in plain
    drained = format_progress(Progress(24.1, 23.0, 10.0, 5.0, 100, 0, None))
    assert "23 s + draining 1.1 s" in drained and "24.1/23" not in drained
    step = format_progress(Progress(25.0, 27.0, None, None, 5_000, 0, None, "step 3 · 54 req/s offered", 0.4, 4.0,
                                    60.0))
    assert step.startswith("[step 3 · 54 req/s offered    0.4/4 s · 25/60 s budget]")
    assert "— req/s" in step and "p99        — ms" in step and "0 req/s" not in step and "0.0 ms" not in step


def test_the_report_shows_no_empty_panel_and_shades_a_searchs_stages():
    from harness.report.plots import _stage_spans, inside_panels, timeline_panels

    smoke, blocking, db = (Recording.load(DATA / n) for n in ("smoke_run", "diagnose_blocking", "diagnose_db"))
    assert "errors" not in timeline_panels(smoke) and _stage_spans(smoke) == []  # a plain run: no stages
    assert "pools" not in inside_panels(blocking) and "pools" in inside_panels(db)  # its pool unused, and used
    phases = [phase for *_, phase, _ in _stage_spans(db)]
    assert phases[0] == "calibrate" and "step" in phases and phases[-1] == "hold"
    page = render_html(blocking, summarize(blocking, diagnose(blocking).verdict), diagnose(blocking))
    assert "<pre>" not in page and "<th>app.workers</th>" in page  # the scenario as a table, not JSON
    assert "the app&#x27;s interpreter" in page and "fastapi " in page


def test_a_one_stage_run_has_no_knee_plot():
    rec = Recording.load(DATA / "smoke_run")
    d = diagnose(rec)
    assert len(d.stages) < 2 and "Load stages and the knee" not in render_html(rec, summarize(rec, d.verdict), d)


def test_the_readmes_report_screenshots_are_committed():
    from tests.conftest import ROOT

    shots = re.findall(r"\]\((docs/[\w.-]+\.png)\)", (ROOT / "README.md").read_text())
    assert len(shots) >= 2 and all((ROOT / s).stat().st_size > 50_000 for s in shots)


def test_the_words_name_app_paths_relative_and_no_python_reprs():
    from harness.report.terminal import format_summary

    rec = Recording.load(DATA / "diagnose_blocking")
    d = diagnose(rec)
    summary = summarize(rec, d.verdict)
    text = " ".join([d.verdict.summary, d.verdict.recommendation, *d.verdict.evidence])
    assert "sample_app/main.py:" in text and rec.scenario.app.app_dir + "/" not in text, text
    assert d.verdict.call_site.file.startswith("/")  # summary.json keeps the absolute path for tools
    page = render_html(rec, summary, d)
    assert "users None" not in page and "None req/s" not in page
    summary["errors"]["by_kind"] = {"timeout": 470, "5xx": 3}
    table = format_summary(summary, "/runs/x", width=200)
    assert "timeout 470, 5xx 3" in table and "{" not in table and "/runs/x/report.html" in table

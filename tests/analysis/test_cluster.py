"""A --cluster run's validity, from a committed recording of two load nodes on this machine."""

from __future__ import annotations

import dataclasses

import pytest

from harness.analysis import detectors
from harness.analysis.detectors import DRIVER_BUSY
from harness.analysis.verdict import context, diagnose
from harness.recording import Recording
from harness.records import DriverSecond
from tests.conftest import DATA


@pytest.mark.parametrize("cpu,fires", [(DRIVER_BUSY * 1.02, True), (DRIVER_BUSY * 0.98, False)])
def test_a_load_node_whose_driver_is_at_its_core_is_named(cpu, fires):
    """A --cluster run (two load nodes, a driver each): the harness cannot sample another node's drivers,
    so each driver's own CPU figure decides, and the finding names its node."""
    rec = Recording.load(DATA / "run_cluster")
    node = next(n for n in rec.run.cluster["nodes"] if 1 in n["drivers"])
    busy = dataclasses.replace(rec, driver_records=tuple(
        dataclasses.replace(r, cpu=cpu) if isinstance(r, DriverSecond) and r.driver == 1 else r
        for r in rec.driver_records))
    assert not detectors.detect_load_generator(context(rec))
    found = detectors.detect_load_generator(context(busy))
    assert bool(found) is fires
    if fires:
        assert f"driver 1 on load node {node['node']} ({node['host']})" in found[0].rule
        assert diagnose(busy).verdict.bottleneck == "load-generator-saturated"


def test_the_summary_lists_the_load_nodes_with_their_clocks():
    from harness.analysis.summary import summarize
    from harness.report.terminal import format_summary

    rec = Recording.load(DATA / "run_cluster")
    summary = summarize(rec)
    assert [n["drivers"] for n in summary["cluster"]["nodes"]] == [[0], [1]]
    text = " ".join(format_summary(summary, str(rec.path)).replace("│", " ").split())
    assert "load nodes #0 vm drivers 0 clock +0.09 ± 0.54 ms" in text

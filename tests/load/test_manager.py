from __future__ import annotations

import json
from collections import Counter

import httptools
import pytest

from harness.config import build_scenario
from harness.load.manager import default_drivers, request_bytes, shard_plans, weighted_cycle
from harness.records import ShardPlan


def test_weighted_cycle_is_exact_and_interleaved():
    cycle = weighted_cycle([3, 1])
    assert Counter(cycle) == {0: 3, 1: 1}
    assert weighted_cycle([2, 2]) == [0, 1]
    spread = weighted_cycle([5, 3, 2])
    assert Counter(spread) == {0: 5, 1: 3, 2: 2} and spread[:2] != [0, 0]


def test_closed_shards_partition_users():
    s = build_scenario({"load": {"users": 10, "ramp_up": "10s", "loops": 3}, "requests": [{"path": "/"}]})
    plans = shard_plans(s, "127.0.0.1", 8000, 0.0, 3)
    offsets = sorted(o for p in plans for o in p.user_offsets)
    assert offsets == pytest.approx([float(i) for i in range(10)])
    assert all(p.loops == 3 for p in plans)
    assert [ShardPlan.from_json(json.loads(json.dumps(p.to_json()))) for p in plans] == plans  # the wire contract
    assert len(shard_plans(s, "127.0.0.1", 8000, 0.0, 50)) == 10  # never more drivers than users


def test_open_shards_split_rate():
    s = build_scenario(
        {"load": {"model": "open", "rate": 90, "duration": "2s", "connections": 30}, "requests": [{"path": "/"}]}
    )
    plans = shard_plans(s, "127.0.0.1", 8000, 0.0, 3)
    assert [p.points[0][1] for p in plans] == pytest.approx([30, 30, 30])
    assert [p.connections for p in plans] == [10, 10, 10]


def test_request_bytes_parse_as_http():
    s = build_scenario(
        {
            "load": {"users": 1, "loops": 1},
            "requests": [{"path": "/items?q=1", "method": "POST", "json": {"a": "é"}, "headers": {"X-Id": "7"}}],
        }
    )
    wire = request_bytes(s.requests[0], "127.0.0.1", 9).encode("latin-1")
    seen = {}

    class P:
        def on_url(self, url): seen["url"] = url
        def on_header(self, k, v): seen[k.decode().lower()] = v.decode()
        def on_body(self, b): seen["body"] = b

    parser = httptools.HttpRequestParser(P())
    parser.feed_data(wire)
    assert parser.get_method() == b"POST" and seen["url"] == b"/items?q=1"
    assert seen["x-id"] == "7" and seen["host"] == "127.0.0.1:9"
    assert json.loads(seen["body"]) == {"a": "é"} and int(seen["content-length"]) == len(seen["body"])


def test_default_drivers():
    assert default_drivers(2) == 1 and default_drivers(16) == 4

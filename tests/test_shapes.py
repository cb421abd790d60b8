from __future__ import annotations

import pytest

from harness.config import LoadConfig, LoadStep
from harness.shapes import ClosedShape, OpenShape, open_shape


def test_closed_ramp_is_jmeter_thread_group():
    shape = ClosedShape(users=10_000, ramp_up_s=100.0)
    assert shape.start_offset(0) == 0.0
    assert shape.start_offset(100) == pytest.approx(1.0)
    assert shape.start_offset(9_999) == pytest.approx(99.99)
    assert shape.at(-1) == 0
    assert shape.at(0) == 1
    assert shape.at(50.0) == 5_001
    assert shape.at(1_000) == 10_000


def test_closed_without_ramp_starts_everyone():
    assert ClosedShape(users=7, ramp_up_s=0).at(0) == 7
    assert ClosedShape(users=7, ramp_up_s=0).start_offset(6) == 0


def test_open_constant_and_ramp():
    const = open_shape(LoadConfig(model="open", rate=100, duration_s=10))
    assert const.at(0) == 100 and const.at(9.99) == 100 and const.at(10) == 0
    assert const.expected_requests() == pytest.approx(1000)
    ramp = open_shape(LoadConfig(model="open", rate=100, ramp_s=10, duration_s=20))
    assert ramp.at(5) == pytest.approx(50)
    assert ramp.at(15) == pytest.approx(100)
    assert ramp.expected_requests() == pytest.approx(500 + 1000)


def test_open_stages_are_held_steps():
    shape = open_shape(LoadConfig(model="open", stages=(LoadStep(2, 10), LoadStep(3, 40))))
    assert shape.duration_s == 5
    assert [shape.at(t) for t in (0, 1.99, 2.0, 4.99)] == [10, 10, 40, 40]
    assert shape.expected_requests() == pytest.approx(20 + 120)


def test_scaled_shards_add_up():
    shape = OpenShape(((0.0, 90.0), (4.0, 90.0)))
    shards = [shape.scaled(1 / 3) for _ in range(3)]
    assert sum(s.expected_requests() for s in shards) == pytest.approx(shape.expected_requests())

"""The agent's stack taking: what the signal handler grabs resolves to what the frames said."""

from __future__ import annotations

import asyncio
import sys

from harness.agent import stacks


def frames_of(frame) -> list:  # type: ignore[no-untyped-def]
    """The stack as the interpreter reports it, innermost first."""
    out = []
    while frame is not None:
        out.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    return out


def test_resolve_gives_each_frames_file_line_and_function():
    def nested(depth: int) -> tuple:
        if depth:
            return nested(depth - 1)
        frame = sys._getframe()
        return stacks.grab(frame), frames_of(frame)

    raw, expected = nested(5)
    assert stacks.resolve(raw) == expected
    assert stacks.resolve(raw) == expected  # from the cache the first call filled
    assert [f[2] for f in expected[:6]] == ["nested"] * 6


def test_resolve_inside_a_coroutine_and_after_the_frame_moved_on():
    async def handler() -> tuple:
        frame = sys._getframe()
        taken = stacks.grab(frame), frames_of(frame)
        await asyncio.sleep(0)  # the frame runs on; what was grabbed still names the line it was at
        return taken

    raw, expected = asyncio.run(handler())
    assert stacks.resolve(raw) == expected


def test_agent_frames_are_left_out():
    frame = sys._getframe()
    raw, expected = stacks.grab(frame), frames_of(frame)
    agent_code = stacks.app_site.__code__  # any code object of the agent's package
    assert stacks.resolve([agent_code, 0] + raw) == stacks.resolve(raw) == expected


def test_grab_stops_at_the_depth_asked_for():
    def nested(depth: int) -> list:
        return nested(depth - 1) if depth else stacks.grab(sys._getframe(), 4)

    raw = nested(10)
    assert [f[2] for f in stacks.resolve(raw)] == ["nested"] * 4


def test_category_is_decided_by_the_innermost_frame_that_says_something():
    site = "/usr/lib/python3/site-packages"
    enum = (f"{sys.prefix}/lib/python3.11/enum.py", 1, "__call__")  # standard library: decides nothing
    logging = (f"{sys.prefix}/lib/python3.11/logging/__init__.py", 2, "emit")
    app = ("/srv/app/main.py", 3, "handler")
    assert stacks.category([enum, logging, app]) == "logging"
    assert stacks.category([enum, logging, app]) == "logging"  # again: nothing kept between calls changes it
    assert stacks.category([enum, app, logging]) == "app-code"
    assert stacks.category([(f"{site}/fastapi/routing.py", 4, "serialize_response"), app]) == "json-serialization"
    assert stacks.category([(f"{site}/fastapi/routing.py", 5, "run_endpoint_function"), app]) == "framework"
    assert stacks.category([(f"{site}/sqlalchemy/engine/base.py", 6, "execute"), app]) == "db"
    assert stacks.category([enum]) == "framework"


def test_classify_names_the_category_and_the_innermost_app_frames_line():
    def two_places() -> list:
        frame = sys._getframe()
        first = stacks.grab(frame), frames_of(frame)
        second = stacks.grab(frame), frames_of(frame)  # the same code objects, another line
        return [first, second]

    for raw, expected in two_places():
        path, line, func = expected[0]  # this test's own file: app code
        assert stacks.classify(raw) == ("app-code", f"app-code|{path}:{line} {func}")
        assert stacks.category(expected) == "app-code"
    agent_code = stacks.app_site.__code__
    assert stacks.classify([agent_code, 0] + raw) == stacks.classify(raw)  # the agent's frames left out


def test_classify_inside_a_library_names_the_app_frame_that_called_it():
    import json

    seen = []

    class Probe:
        def __repr__(self) -> str:
            frame = sys._getframe(1)  # json's encoder, called from the app frame below
            seen.append((stacks.grab(frame), frames_of(frame)))
            return "probe"

    def handler() -> str:
        return json.dumps([Probe()], default=repr)

    handler()
    raw, expected = seen[0]
    app = next(f for f in expected if f[2] == "handler")
    assert stacks.classify(raw) == ("json-serialization", f"json-serialization|{app[0]}:{app[1]} handler")


def test_classify_calls_a_stack_parked_in_the_selector_idle():
    import selectors

    idle_code = (
        selectors.EpollSelector.select.__code__
        if hasattr(selectors, "EpollSelector")
        else selectors.SelectSelector.select.__code__
    )
    raw = [idle_code, 0] + stacks.grab(sys._getframe())
    assert stacks.classify(raw) == ("idle", None)

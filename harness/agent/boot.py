"""The factory the launcher boots instead of the user's app: import it, wrap it, start the agent.

``uvicorn --factory fastapi_harness_agent.boot:create_app`` (or gunicorn's
``fastapi_harness_agent.boot:create_app()``) with the options as JSON in the
``FASTAPI_HARNESS_AGENT`` environment variable: target, factory, run_dir (or sink), stall_ms, hot_hz.
``attach`` is the same for an app that wraps itself.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
from typing import Any

from .core import Agent
from .middleware import AgentMiddleware
from .profiling import ProfileControl

ENV = "FASTAPI_HARNESS_AGENT"


def load_target(target: str, factory: bool) -> Any:
    """The user's ASGI app named by ``module:attribute`` (called when it is a factory)."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if factory:
        obj = obj()
    if not callable(obj):
        raise TypeError(
            f"fastapi-harness: {target} is not an ASGI application (it is a {type(obj).__name__}); "
            "point [app] target at the FastAPI() object, or set factory = true if it names a function returning one"
        )
    return obj


def create_app() -> Any:
    options = json.loads(os.environ[ENV])
    # where streams go; overridable so a test can make writing fail on purpose
    options["stream_dir"] = os.environ.get("FASTAPI_HARNESS_AGENT_STREAM_DIR") or options.get("run_dir")
    return _wrap(load_target(options["target"], bool(options.get("factory"))), options)


def attach(app: Any, sink: str, stall_ms: float = 25.0, hot_hz: float = 50.0, app_dir: str = "") -> Any:
    """``app`` with the agent inside, streaming to the harness's sink (``tcp://HOST:PORT/TOKEN``, as
    ``fastapi-harness run --url … --agent-sink PORT`` prints it): ``app = attach(app, sink=…)``.
    ``app_dir``: the folder of the app's own code (default: the current one)."""
    return _wrap(app, {"sink": sink, "stall_ms": stall_ms, "hot_hz": hot_hz,
                       "app_dir": os.path.abspath(app_dir or os.getcwd())})


def _wrap(app: Any, options: dict) -> Any:
    agent = Agent(options)
    if not options.get("sink"):  # the harness asks for profiles through a file in the run directory
        agent.profiler = ProfileControl(agent)
    atexit.register(agent.stop)
    return AgentMiddleware(app, agent)

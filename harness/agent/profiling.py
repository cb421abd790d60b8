"""Profile on command: the harness writes ``agent-control.json`` {"id", "seconds"} in the run directory.

Each worker then profiles a window of that many seconds with whatever the app has:
pyinstrument on the loop thread (wall clock; HTML and JSON) and yappi on the wall clock
across threads with coroutine awareness (a table of functions by total wall time, so time
spent awaiting a pool shows up). With the ``tracemalloc`` option, tracemalloc traces the
window too (from its start: allocations made before are not seen), and the app lines whose
live memory grew most between its two snapshots go into the profile record. Rendering happens
on the agent's thread, not the loop.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional

CONTROL = "agent-control.json"
CHECK_S = 1.0  # how often the control file is looked for: each look is a syscall, and a GIL hand-off
YAPPI_TOP = 40
GREW_TOP = 10  # allocation sites kept from the tracemalloc diff


class ProfileControl:
    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.control = os.path.join(agent.options.get("run_dir") or ".", CONTROL)
        self.done_id = 0
        self.next_check = 0.0
        self.window: Optional[Dict[str, Any]] = None
        self.pyinstrument: Any = None
        self.session: Any = None
        self.ready = threading.Event()
        self.snapshot: Any = None  # tracemalloc's, at the window's start
        self.types: Optional[Dict[str, int]] = None  # live objects per type, at the window's start

    def poll(self) -> None:
        """Called on every tick of the agent's thread: start or finish a profile window."""
        if self.window is not None:
            if time.monotonic() >= self.window["end"]:
                self._finish()
            return
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + CHECK_S
        try:
            with open(self.control) as f:
                cmd = json.load(f)
        except (OSError, ValueError):
            return
        if int(cmd.get("id", 0)) > self.done_id:
            self._begin(int(cmd["id"]), float(cmd.get("seconds", 5)))

    def _begin(self, ident: int, seconds: float) -> None:
        self.window = {"id": ident, "end": time.monotonic() + seconds, "seconds": seconds, "errors": []}
        self.ready.clear()
        missing = []
        try:
            from pyinstrument import Profiler

            self.pyinstrument = Profiler(interval=0.001, async_mode="disabled")
            self.agent.loop.call_soon_threadsafe(self._start_on_loop)
        except ImportError:
            missing.append("pyinstrument")
        except Exception as e:  # a broken install: the agent's thread must go on
            self.window["errors"].append(f"no pyinstrument profile: {type(e).__name__}: {e}")
        try:
            import yappi

            yappi.set_clock_type("wall")
            yappi.start(builtins=False, profile_threads=True)
        except ImportError:
            missing.append("yappi")
        except Exception as e:  # a broken install: the agent's thread must go on
            self.window["errors"].append(f"no yappi profile: {type(e).__name__}: {e}")
        if missing:
            python = sys.executable or "python"
            self.window["errors"].append(
                f"no {'profile' if len(missing) == 2 else missing[0] + ' profile'}: {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not installed in {python} — "
                f"`{python} -m pip install pyinstrument yappi`")
        if self.agent.options.get("tracemalloc"):
            import tracemalloc

            if not tracemalloc.is_tracing():
                tracemalloc.start(1)
                self.snapshot = tracemalloc.take_snapshot()
            self.types = type_counts()

    def _start_on_loop(self) -> None:
        self.pyinstrument.start()

    def _stop_on_loop(self) -> None:
        try:
            self.session = self.pyinstrument.stop()
        finally:
            self.ready.set()

    def _finish(self) -> None:
        window, self.window = self.window, None
        assert window is not None
        self.done_id = window["id"]
        run_dir = self.agent.options.get("run_dir") or "."
        stem = os.path.join(run_dir, f"profile-{self.agent.pid}-{window['id']}")
        files: List[str] = []
        if self.pyinstrument is not None:
            self.agent.loop.call_soon_threadsafe(self._stop_on_loop)
            if self.ready.wait(5.0) and self.session is not None:
                from pyinstrument.renderers import HTMLRenderer, JSONRenderer

                for ext, renderer in (("html", HTMLRenderer()), ("json", JSONRenderer())):
                    with open(f"{stem}-pyinstrument.{ext}", "w") as f:
                        f.write(renderer.render(self.session))
                    files.append(f"{stem}-pyinstrument.{ext}")
            else:
                window["errors"].append("pyinstrument did not stop within 5 s (the loop was blocked)")
            self.pyinstrument = self.session = None
        try:
            import yappi

            yappi.stop()
            rows = sorted(yappi.get_func_stats(), key=lambda s: s.ttot, reverse=True)[:YAPPI_TOP]
            table = [{"function": s.name, "file": s.module, "line": s.lineno, "calls": s.ncall,
                      "total_s": round(s.ttot, 6), "self_s": round(s.tsub, 6)} for s in rows]
            yappi.clear_stats()
            with open(f"{stem}-yappi.json", "w") as f:
                json.dump(table, f, indent=1)
            with open(f"{stem}-yappi.txt", "w") as f:
                f.write(f"{'total s':>10} {'self s':>10} {'calls':>8}  function\n")
                for r in table:
                    f.write(
                        f"{r['total_s']:10.4f} {r['self_s']:10.4f} {r['calls']:8d}  {r['function']} "
                        f"({r['file']}:{r['line']})\n"
                    )
            files += [f"{stem}-yappi.json", f"{stem}-yappi.txt"]
        except ImportError:
            pass
        self.agent.emit({"type": "profile", "id": window["id"], "seconds": window["seconds"],
                         "files": [os.path.basename(p) for p in files], "errors": window["errors"],
                         "grew": self._grew(), "grew_types": self._grew_types()})

    def _grew_types(self) -> List[List[Any]]:
        """[type, objects] of the types whose live (GC-tracked) objects grew most in the window."""
        if self.types is None:
            return []
        before, self.types = self.types, None
        after = type_counts()
        grown = sorted(((n - before.get(name, 0), name) for name, n in after.items()), reverse=True)
        return [[name, n] for n, name in grown[:GREW_TOP] if n > 0]

    def _grew(self) -> List[List[Any]]:
        """[file, line, bytes, blocks] of the allocation sites whose live memory grew most in the window."""
        if self.snapshot is None:
            return []
        import tracemalloc

        try:
            diff = tracemalloc.take_snapshot().compare_to(self.snapshot, "lineno")
        finally:
            tracemalloc.stop()
            self.snapshot = None
        out = []
        for stat in diff:  # largest change first (either way)
            if len(out) >= GREW_TOP:
                break
            if stat.size_diff <= 0:
                continue
            frame = stat.traceback[0]
            if "fastapi_harness_agent" not in frame.filename and "tracemalloc" not in frame.filename:
                out.append([frame.filename, frame.lineno, stat.size_diff, stat.count_diff])
        return out


def type_counts() -> Dict[str, int]:
    """Live GC-tracked objects per type ("module.Qualname"): one pass over the heap, on the agent's
    thread, twice a profile window and only with ``[agent] tracemalloc`` (it holds the GIL meanwhile)."""
    by_type = collections.Counter(map(type, gc.get_objects()))  # counted in C; named once per type
    counts: Dict[str, int] = {}
    for t, n in by_type.items():
        name = f"{t.__module__}.{t.__qualname__}"
        counts[name] = counts.get(name, 0) + n
    return counts

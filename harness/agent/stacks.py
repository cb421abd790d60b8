"""Reading and classifying stacks: which frame is the app's, what kind of work a sample is."""

from __future__ import annotations

import dis
import os
import sysconfig
from typing import Callable, Dict, List, Optional, Tuple

Frame = Tuple[str, int, str]  # (file, line, function)

# each root as configured and as resolved, so frames' file names match without resolving them
_LIBRARY_ROOTS = tuple({
    form + os.sep
    for p in {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    if p
    for form in (os.path.normpath(p), os.path.realpath(p))
})
_AGENT_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

# innermost-first: the first frame that matches one of these decides the category
_JSON_FUNCS = {"serialize_response", "_prepare_response_content", "serialize", "jsonable_encoder", "render",
               "model_dump", "model_dump_json", "dump_json", "dump_python", "to_jsonable_python", "dict", "json"}
_IDLE_FILES = ("selectors.py", os.sep + "asyncio" + os.sep + "runners.py", os.sep + "uvloop" + os.sep + "__init__.py")
_IDLE_FUNCS = {"run_forever", "run_until_complete", "_run_once", "select", "poll"}
_FRAMEWORK_PARTS = tuple(os.sep + p + os.sep for p in (
    "asyncio", "uvloop", "uvicorn", "starlette", "fastapi", "anyio", "h11", "httptools", "gunicorn",
    "concurrent", "sniffio", "websockets", "wsproto",
))


_library_cache: Dict[str, bool] = {}
_app_dir = ""  # the app's own directory, when the launcher says (its files are the app's whatever else holds)


def set_app_dir(path: Optional[str]) -> None:
    """Files under ``path`` (not installed packages in it) are the app's own code."""
    global _app_dir
    _app_dir = os.path.normpath(path) + os.sep if path else ""
    _library_cache.clear()


def _in_app_dir(path: str) -> bool:
    return bool(_app_dir) and path.startswith(_app_dir) and "-packages" + os.sep not in path


def is_library(path: str) -> bool:
    """True for the standard library, installed packages and the agent itself (cached per file).

    By name only: resolving a path (``os.path.realpath``) makes a syscall per component, and
    each syscall hands the GIL back to a busy loop thread and waits to get it again.
    """
    known = _library_cache.get(path)
    if known is None:
        known = not _in_app_dir(path) and (path.startswith(("<", _AGENT_DIR) + _LIBRARY_ROOTS)
                                           or "site-packages" in path or "dist-packages" in path)
        if len(_library_cache) < 10_000:
            _library_cache[path] = known
    return known


MAX_DEPTH = 128
HOT_DEPTH = 12  # a hotspot sample's innermost frames (a stall sample keeps MAX_DEPTH)


def grab(frame, depth: int = MAX_DEPTH) -> list:  # type: ignore[no-untyped-def]
    """The stack from the innermost frame outwards as it is taken in a signal handler, on the
    loop: code object and last instruction of each frame, flat (``resolve`` makes frames of it).

    A SIGPROF sample runs cold, between two requests' worth of the app's own code, so line
    tables and file names are read later, on the agent's thread, once per distinct frame
    position. Each ``f_back`` makes CPython build a frame object for a frame that had none
    (3.11 and later), so hotspot samples stop at ``HOT_DEPTH``. Measured costs:
    benchmarks/agent_overhead.md.
    """
    out: list = []
    append = out.append
    for _ in range(depth):
        if frame is None:
            break
        append(frame.f_code)
        append(frame.f_lasti)
        frame = frame.f_back
    return out


_frames: Dict[int, Tuple[object, Dict[int, Optional[Frame]]]] = {}  # id(code) → (code, {lasti: frame})


def resolve(raw: list) -> List[Frame]:
    """Frames (file, line, function) of a ``grab``, without the agent's own frames.

    The agent's frames (its GC callback, its middleware) sit on top of whatever the app was
    doing; dropping them attributes the sample to the app's frame below. Frames are cached
    per code object and instruction (the cache holds the code objects, so an id is never
    reused while cached); it starts afresh when it grows past 50,000 positions.
    """
    out: List[Frame] = []
    for i in range(0, len(raw), 2):
        frame = _position(raw[i], raw[i + 1])
        if frame is not None:
            out.append(frame)
    return out


def _position(code, lasti: int) -> Optional[Frame]:  # type: ignore[no-untyped-def]
    """(file, line, function) of one frame of a ``grab``, None for the agent's own; cached."""
    entry = _frames.get(id(code))
    if entry is None:
        if len(_frames) > 50_000:
            _frames.clear()
        entry = _frames[id(code)] = (code, {})
    by_lasti = entry[1]
    if lasti in by_lasti:
        return by_lasti[lasti]
    frame = by_lasti[lasti] = (None if code.co_filename.startswith(_AGENT_DIR)
                               else (code.co_filename, _line(code, lasti), code.co_name))
    return frame


def _line(code, lasti: int) -> int:  # type: ignore[no-untyped-def]
    """The line of the instruction at byte offset ``lasti``, as ``frame.f_lineno`` would say."""
    line = code.co_firstlineno
    if lasti < 0:
        return line
    co_lines = getattr(code, "co_lines", None)
    if co_lines is not None:  # Python 3.10 and later
        for start, end, number in co_lines():
            if start <= lasti < end:
                return number if number is not None else line
        return line
    for offset, number in dis.findlinestarts(code):  # before 3.10
        if offset > lasti:
            break
        line = number
    return line


def app_site(stack: List[Frame]) -> Optional[Frame]:
    """The innermost frame of the application's own code, or None."""
    for f in stack:
        if not is_library(f[0]):
            return f
    return None


def is_idle(stack: List[Frame]) -> bool:
    """True when the loop thread is parked in the selector with nothing of the app's running."""
    if not stack:
        return True
    path, _, func = stack[0]
    return func in _IDLE_FUNCS or path.endswith(_IDLE_FILES)


def category(stack: List[Frame], library: Callable[[str], bool] = is_library) -> str:
    """What a running stack is doing: json-serialization, logging, validation, db, framework, app-code, idle.

    ``library`` says which files are not the app's (the harness passes its own rule when it classifies
    stacks taken from outside the app's interpreter, by py-spy)."""
    if is_idle(stack):
        return "idle"
    for path, _, func in stack:
        cat = _frame_category(path, func, library)
        if cat is not None:
            return cat
    return "framework"


def _frame_category(path: str, func: str, library: Callable[[str], bool] = is_library) -> Optional[str]:
    """The category one frame decides, or None when it decides nothing (look further out)."""
    p = path.replace("\\", "/")
    if _in_app_dir(path):
        return "app-code"  # the app's own files, whatever their directories are called
    if "/logging/" in p:
        return "logging"
    if "/json/" in p or "orjson" in p or "ujson" in p or p.endswith("fastapi/encoders.py"):
        return "json-serialization"
    if ("/fastapi/" in p or "/starlette/responses" in p or "/pydantic/" in p) and func in _JSON_FUNCS:
        return "json-serialization"
    if "/pydantic" in p:
        return "validation"
    if any(s in p for s in ("/sqlalchemy/", "/asyncpg/", "/aiosqlite/", "/sqlite3/", "/psycopg")):
        return "db"
    if not library(path):
        return "app-code"
    if any(s in p for s in _FRAMEWORK_PARTS):
        return "framework"
    return None


_by_codes: Dict[Tuple[int, ...], Tuple[str, int, list]] = {}  # ids of a stack's code objects → see classify


def classify(raw: list) -> Tuple[str, Optional[str]]:
    """A hotspot sample's category, and ``category|file:line function`` of the frame that best
    names where it was (the innermost app frame, else the innermost frame; None when idle).

    Both follow from the stack's code objects but for that frame's line, so they are cached
    per stack of code objects (which the cache holds, so their ids stay theirs): a sample the
    agent's thread has seen the like of costs a lookup and one frame's line, not a walk of
    its frames. (Keyed by positions too, as ``resolve`` is, about half the samples of /fast
    missed the cache.)
    """
    codes = raw[::2]
    key = tuple(map(id, codes))
    known = _by_codes.get(key)
    if known is None:
        known = _classify_codes(codes)
        if len(_by_codes) >= 10_000:
            _by_codes.clear()
        _by_codes[key] = known
    cat, i = known[0], known[1]
    if i < 0:
        return cat, None
    path, line, func = _position(codes[i], raw[2 * i + 1])  # type: ignore[misc]  # never the agent's
    return cat, f"{cat}|{path}:{line} {func}"


def _classify_codes(codes: list) -> Tuple[str, int, list]:
    """(category, index in ``codes`` of the naming frame or -1 when idle, the codes themselves)."""
    kept = [i for i, code in enumerate(codes) if not code.co_filename.startswith(_AGENT_DIR)]
    stack = [(codes[i].co_filename, 0, codes[i].co_name) for i in kept]
    cat = category(stack)
    if cat == "idle":
        return cat, -1, codes
    site = app_site(stack)
    return cat, kept[stack.index(site) if site else 0], codes

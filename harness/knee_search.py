"""Diagnose mode's load search: calibrate, step the load until something gives, hold at the knee.

The step decisions reuse the analysis's own knee rule (``past_knee``) on each step's seconds,
so what stops the search is exactly what the report will call the knee.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from harness.analysis.knee import MIN_REQUESTS_FOR_P99, past_knee
from harness.analysis.stages import Stage, stage_from_seconds
from harness.config import LoadConfig, Scenario, parse_duration
from harness.errors import ConfigError
from harness.recording import merge_seconds

if TYPE_CHECKING:
    from harness.session import Session


@dataclass(frozen=True)
class DiagnoseOptions:
    """Bounds and pacing of diagnose mode's load search."""

    max_rate: float = 100_000.0
    max_users: int = 10_000
    max_time_s: float = 60.0
    step_s: float = 4.0
    factor: float = 1.5
    hold_s: float = 4.0  # the profile window at the knee
    calibrate_s: float = 3.0
    closed: bool = False  # step virtual users instead of the arrival rate
    refine: bool = False  # after the knee, bisect between the last level held and the first that broke
    refine_to: float = 0.05  # ... until they are this close (of the level held)

    @classmethod
    def from_flags(cls, max_rate: float, max_time: str, step: str, max_users: int = 10_000,
                   closed: bool = False, refine: bool = False) -> DiagnoseOptions:
        """The options the command line gives, checked (a ConfigError names the flag)."""
        try:
            max_time_s, step_s = parse_duration(max_time), parse_duration(step)
        except ValueError as e:
            raise ConfigError(f"--max-time/--step: {e}") from None
        if max_time_s <= 0 or step_s <= 0 or max_rate <= 0 or max_users < 1:
            raise ConfigError("--max-time, --step, --max-rate and --max-users must be positive")
        return cls(max_rate=max_rate, max_users=max_users, max_time_s=max_time_s, step_s=step_s, closed=closed,
                   refine=refine)


class KneeSearch:
    """Diagnose mode's load plan: calibrate, step the load ×factor until something gives, then hold
    at the knee and profile."""

    mode = "diagnose"

    def __init__(self, opts: DiagnoseOptions, say: Callable[[str], None] = lambda line: None):
        self.opts, self.say = opts, say

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.opts)

    def __call__(self, session: Session) -> None:
        search_knee(session, session.scenario, self.opts, self.say)


COLLAPSE_SHARE = 0.05  # calibration answered fewer than this many responses per user-second: the app collapsed


def search_knee(session: Session, scenario: Scenario, opts: DiagnoseOptions, say: Callable[[str], None]) -> None:
    """Calibrate, step the load ×factor until something gives, then hold at the knee and profile.

    How the search ended is an event (``search-ended``: knee, max-time, max-rate, max-users or
    collapse), so the verdict can tell a budget that ran out from a load the app held.
    """
    load = scenario.load
    closed = opts.closed
    # the hold's load outlasts the profile window by a second
    hold_len = opts.hold_s + 1 if session.agent_on and opts.hold_s > 0 else 0.0
    deadline = opts.max_time_s - 1.0  # drivers stopped then abort what is in flight a second later
    session.budget_s = opts.max_time_s
    if load.model == "open":
        # the scenario names a rate: start there (a calibration burst would also run leaks dry before the first step)
        level: float = min(load.stages[0].rate if load.stages else load.rate, opts.max_rate)
    else:
        users = min(load.users, opts.max_users)
        start = session.next_start()
        records = session.drive(_with_load(scenario, model="closed", users=users, duration_s=opts.calibrate_s), start,
                                step=f"calibration · {users} users")
        session.event("stage", phase="calibrate", t_start=start, t_end=start + opts.calibrate_s, users=users)
        calib = stage_from_seconds(0, start, start + opts.calibrate_s, None, users, merge_seconds(records))
        capacity = calib.achieved_rps if calib else 0.0
        answered = calib.requests if calib else 0
        if answered < COLLAPSE_SHARE * users * opts.calibrate_s:
            # stepping up from 1 req/s would only measure a broken app at loads it no longer sees
            say(f"calibration: {users} users → {answered} responses in {opts.calibrate_s:.0f} s: the app collapsed "
                f"at this load; profiling it there instead of stepping")
            session.event("search-ended", why="collapse", users=users)
            _hold(session, scenario, opts, users, True, hold_len, deadline, say)
            return
        say(f"calibration: {users} users → {capacity:,.0f} req/s")
        level = max(1.0, users / 4) if closed else max(1.0, min(capacity * 0.4, opts.max_rate))
    baseline = 0.0
    slo = scenario.slo
    hold = stepped = level
    ended = "max-time"
    for index in range(1, 100):
        if session.now() + opts.step_s + hold_len > opts.max_time_s:
            say(f"stopping: the next step would pass --max-time {opts.max_time_s:.0f}s")
            break
        stage = _drive_step(session, scenario, opts, level, deadline, "step", index)
        if stage is None:
            break
        # the hold profiles at the last level stepped (not at one never tried), offering no more than
        # the server answered: a rate it cannot keep up with would only queue, and time out, all
        # window long (one it answers with errors, fast, is profiled as it was)
        stepped = level
        hold = level if closed else min(level, max(1.0, stage.answered_rps))
        tail = stage.p99_ms if stage.requests >= MIN_REQUESTS_FOR_P99 else stage.p90_ms
        baseline = baseline or tail or 1.0
        why = past_knee(stage, baseline, slo.p99_ms, slo.error_rate)
        knee = f"  ← knee: {why}" if why else ""
        say(f"step {index}: {_level(level, closed)} → {stage.achieved_rps:,.0f} req/s ok, p99 "
            f"{_p99(stage.p99_ms, stage.requests)}, errors {stage.error_rate:.1%}{knee}")
        if why:
            ended = "knee"
            if opts.refine and index > 1:
                _refine(session, scenario, opts, level / opts.factor, level, baseline, hold_len, deadline, say)
            break
        nxt = level * opts.factor
        if (closed and nxt > opts.max_users) or (not closed and nxt > opts.max_rate):
            ended = "max-users" if closed else "max-rate"
            say(f"stopping: the next step would pass --{ended}")
            break
        level = nxt
    session.event("search-ended", why=ended, offered_rps=None if closed else round(stepped, 2),
                  users=int(stepped) if closed else None)
    outran = f" (what the last step answered; {stepped:,.0f} offered outran it)" if hold < 0.95 * stepped else ""
    _hold(session, scenario, opts, hold, closed, hold_len, deadline, say, outran)


def _drive_step(session: Session, scenario: Scenario, opts: DiagnoseOptions, level: float, deadline: float,
                phase: str, index: int) -> Stage | None:
    """One step of ``opts.step_s`` at ``level``, marked as a stage event of ``phase``; its stage."""
    start = session.next_start()
    step, offered, users_ = _at_level(scenario, level, opts.closed, opts.step_s)
    records = session.drive(step, start, deadline=deadline, step=f"{phase} {index} · {_level(level, opts.closed)}")
    session.event("stage", phase=phase, t_start=start, t_end=start + opts.step_s, offered_rps=offered, users=users_)
    return stage_from_seconds(index, start, start + opts.step_s, offered, users_, merge_seconds(records))


def _refine(session: Session, scenario: Scenario, opts: DiagnoseOptions, good: float, bad: float, baseline: float,
            hold_len: float, deadline: float, say: Callable[[str], None]) -> None:
    """Bisect between ``good`` (a level the app held) and ``bad`` (one past the knee) until they are
    within ``opts.refine_to`` of each other or the budget would be passed, so a capacity is measured
    rather than read off the ×factor grid; the result is an event (``capacity``): the most req/s
    achieved at a level held, the level held and the first that broke. These steps are not stages of
    the analysis (the knee and the verdict are the search's); they feed compare's capacities."""
    closed, slo = opts.closed, session.scenario.slo
    held_rps: float | None = None
    refined = 0
    while (bad - good) / good > opts.refine_to and not (closed and bad - good <= 1):
        if session.now() + opts.step_s + hold_len > opts.max_time_s:
            say(f"refining stopped by --max-time {opts.max_time_s:.0f}s")
            break
        level = round((good + bad) / 2) if closed else (good + bad) / 2
        stage = _drive_step(session, scenario, opts, level, deadline, "refine", refined + 1)
        if stage is None:
            break
        refined += 1
        why = past_knee(stage, baseline, slo.p99_ms, slo.error_rate)
        say(f"refine {refined}: {_level(level, closed)} → {stage.achieved_rps:,.0f} req/s ok, p99 "
            f"{_p99(stage.p99_ms, stage.requests)}" + (f"  ← past the knee: {why}" if why else "  held"))
        if why:
            bad = level
        else:
            good, held_rps = level, max(held_rps or 0.0, stage.achieved_rps)
    session.event("capacity", offered_rps=None if closed else round(good, 2), users=int(good) if closed else None,
                  achieved_rps=round(held_rps, 2) if held_rps else None, broke_at=round(bad, 2))


def _hold(session: Session, scenario: Scenario, opts: DiagnoseOptions, level: float, closed: bool, hold_len: float,
          deadline: float, say: Callable[[str], None], why: str = "") -> None:
    """Hold the load at ``level`` while every worker profiles itself (nothing to do without the agent)."""
    if not hold_len:
        return
    start = session.next_start()
    say(f"holding at {_level(level, closed)}{why} for {opts.hold_s:.0f} s to profile the workers")
    session.request_profile(opts.hold_s)
    hold_load, offered, users_ = _at_level(scenario, level, closed, hold_len)
    session.drive(hold_load, start, deadline=deadline, step=f"hold · {_level(level, closed)}")
    session.event("stage", phase="hold", t_start=start, t_end=start + hold_len, offered_rps=offered, users=users_)


def _p99(ms: float, requests: int) -> str:
    """A percentile in words: "none answered" when nothing was (a 0 ms p99 of no request is no figure)."""
    return f"{ms:,.1f} ms" if requests else "— (none answered)"


def _level(level: float, closed: bool) -> str:
    return f"{int(level)} users" if closed else f"{level:,.0f} req/s offered"


def _at_level(
    scenario: Scenario, level: float, closed: bool, seconds: float
) -> tuple[Scenario, float | None, int | None]:
    """The scenario loaded at ``level`` (users when closed, req/s offered when open) for ``seconds``,
    and the level as a stage records it: (scenario, offered_rps, users)."""
    if closed:
        return _with_load(scenario, model="closed", users=int(level), duration_s=seconds), None, int(level)
    return _with_load(scenario, model="open", rate=level, duration_s=seconds), round(level, 2), None


def _with_load(scenario: Scenario, **load: Any) -> Scenario:
    """The scenario with a fresh load section (timeout and drivers kept)."""
    base = scenario.load
    return dataclasses.replace(scenario, load=LoadConfig(timeout_s=base.timeout_s, drivers=base.drivers,
                                                         connections=base.connections, think_time_s=base.think_time_s
                                                         if load.get("model") == "closed" else 0.0, **load))

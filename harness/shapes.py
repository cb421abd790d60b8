"""Load shapes: pure functions of elapsed seconds, no clock and no I/O.

``ClosedShape`` says when each virtual user starts (JMeter thread-group ramp-up);
``OpenShape`` says the arrival rate at any instant (piecewise linear, steps allowed).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.config import LoadConfig


@dataclass(frozen=True)
class ClosedShape:
    users: int
    ramp_up_s: float
    duration_s: float = 0.0  # 0: ends when every user has run its loops

    def start_offset(self, user: int) -> float:
        """Seconds after the start at which user ``user`` (0-based) begins, as JMeter ramps threads."""
        return user * self.ramp_up_s / self.users if self.users else 0.0

    def at(self, elapsed: float) -> int:
        """How many users have started by ``elapsed`` seconds."""
        if elapsed < 0:
            return 0
        if self.ramp_up_s <= 0:
            return self.users
        return min(self.users, int(elapsed * self.users / self.ramp_up_s) + 1)


@dataclass(frozen=True)
class OpenShape:
    points: tuple[tuple[float, float], ...]  # (elapsed, rate) corners; equal times make a step

    @property
    def duration_s(self) -> float:
        return self.points[-1][0] if self.points else 0.0

    def at(self, elapsed: float) -> float:
        """Arrival rate (req/s) at ``elapsed`` seconds; 0 outside the shape."""
        pts = self.points
        if not pts or elapsed < 0 or elapsed >= pts[-1][0]:
            return 0.0
        for (t0, r0), (t1, r1) in zip(pts, pts[1:]):
            if t0 <= elapsed < t1:
                return r0 + (r1 - r0) * (elapsed - t0) / (t1 - t0)
        return 0.0  # before the first corner (a shape shifted to start later)

    def scaled(self, factor: float) -> "OpenShape":
        """The same shape with every rate multiplied (a driver's shard of the load)."""
        return OpenShape(tuple((t, r * factor) for t, r in self.points))

    def expected_requests(self) -> float:
        """The integral of the rate: how many arrivals the shape offers."""
        return sum((t1 - t0) * (r0 + r1) / 2 for (t0, r0), (t1, r1) in zip(self.points, self.points[1:]))


def open_shape(load: LoadConfig) -> OpenShape:
    """The open-model shape a load section describes: held stages, or ramp-then-hold."""
    if load.stages:
        pts: list[tuple[float, float]] = []
        t = 0.0
        for s in load.stages:
            pts += [(t, s.rate), (t + s.duration_s, s.rate)]
            t += s.duration_s
        return OpenShape(tuple(pts))
    if load.ramp_s > 0:
        return OpenShape(((0.0, 0.0), (load.ramp_s, load.rate), (load.duration_s, load.rate)))
    return OpenShape(((0.0, load.rate), (load.duration_s, load.rate)))


def closed_shape(load: LoadConfig) -> ClosedShape:
    """The closed-model shape a load section describes."""
    return ClosedShape(load.users, load.ramp_up_s, load.duration_s)

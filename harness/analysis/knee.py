"""The knee of the load curve, and the Universal Scalability Law fitted to the stages.

Knee: the first stage where achieved throughput stops following the offered load, or where
latency leaves its baseline for good (a stage of a few requests needs more than one slow one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.analysis.stages import Stage

FOLLOW = 0.90  # achieved below this share of offered: throughput stopped following
LATENCY_RISE = 3.0  # p99 this many times its baseline ...
LATENCY_FLOOR_MS = 25.0  # ... and this much above it, in ms
MIN_REQUESTS_FOR_P99 = 200  # below this, a stage's p99 is one or two requests: judge by p90


@dataclass(frozen=True)
class Knee:
    stage: int  # index of the first stage past the knee
    t_s: float
    offered_rps: float | None
    users: int | None
    last_good_rps: float | None  # achieved throughput of the last stage before it
    reason: str
    baseline_p99_ms: float
    p99_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Usl:
    """X(N) = λN / (1 + σ(N−1) + κN(N−1))."""

    lam: float
    sigma: float
    kappa: float
    peak_n: float | None
    peak_x: float | None
    points: int

    def to_dict(self) -> dict[str, Any]:
        return {"lambda": round(float(self.lam), 3), "sigma": round(float(self.sigma), 5),
                "kappa": round(float(self.kappa), 7),
                "peak_concurrency": round(float(self.peak_n), 1) if self.peak_n else None,
                "peak_rps": round(float(self.peak_x), 1) if self.peak_x else None, "stages": self.points}


def _tail(s: Stage) -> float:
    return s.p99_ms if s.requests >= MIN_REQUESTS_FOR_P99 else s.p90_ms


def past_knee(stage: Stage, baseline_ms: float, slo_p99_ms: float = 0.0, slo_errors: float = 0.0) -> str | None:
    """Why ``stage`` is past the knee, or None when it held."""
    if stage.offered_rps and stage.achieved_rps < FOLLOW * stage.offered_rps:
        share = stage.achieved_rps / stage.offered_rps
        return f"achieved {stage.achieved_rps:.0f} req/s of {stage.offered_rps:.0f} offered ({share:.0%})"
    tail = _tail(stage)
    if tail >= LATENCY_RISE * baseline_ms and tail - baseline_ms >= LATENCY_FLOOR_MS:
        return f"p99 {tail:.1f} ms against a baseline of {baseline_ms:.1f} ms"
    if slo_p99_ms and tail > slo_p99_ms and stage.requests >= 20:
        return f"p99 {tail:.1f} ms breaks the SLO of {slo_p99_ms:.0f} ms"
    limit = max(slo_errors, 0.01)
    if stage.error_rate > limit and stage.errors >= 5:
        return f"error rate {stage.error_rate:.1%} above {limit:.0%}"
    return None


def find_knee(stages: list[Stage], slo_p99_ms: float = 0.0, slo_errors: float = 0.0) -> Knee | None:
    """The first stage past the knee, or None when every stage held."""
    if not stages:
        return None
    baseline = min(_tail(s) for s in stages[: max(1, min(2, len(stages) - 1))]) or 1.0
    for i, s in enumerate(stages):
        why = past_knee(s, baseline, slo_p99_ms, slo_errors)
        if why:
            return Knee(stage=s.index, t_s=s.t_start, offered_rps=s.offered_rps, users=s.users,
                        last_good_rps=stages[i - 1].achieved_rps if i else None, reason=why,
                        baseline_p99_ms=round(baseline, 2), p99_ms=round(_tail(s), 2))
    return None


def fit_usl(stages: list[Stage]) -> Usl | None:
    """Least-squares USL fit over (concurrency, throughput) of ≥ 4 stages; None when it cannot fit."""
    pts = [(s.concurrency, s.achieved_rps) for s in stages if s.concurrency > 0 and s.achieved_rps > 0]
    if len(pts) < 4:
        return None
    import numpy as np

    n = np.array([p[0] for p in pts])
    x = np.array([p[1] for p in pts])
    # N/X = a + b(N−1) + cN(N−1), linear in a = 1/λ, b = σ/λ, c = κ/λ
    design = np.column_stack([np.ones_like(n), n - 1, n * (n - 1)])
    (a, b, c), *_ = np.linalg.lstsq(design, n / x, rcond=None)
    if a <= 0:
        return None
    lam, sigma, kappa = 1 / a, max(b / a, 0.0), max(c / a, 0.0)
    peak_n = ((1 - sigma) / kappa) ** 0.5 if kappa > 0 and sigma < 1 else None
    peak_x = lam * peak_n / (1 + sigma * (peak_n - 1) + kappa * peak_n * (peak_n - 1)) if peak_n else None
    return Usl(lam, sigma, kappa, peak_n, peak_x, len(pts))

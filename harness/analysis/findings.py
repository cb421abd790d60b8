"""What analysis concludes: ``Finding`` (one detector's claim) and ``Verdict`` (the first bottleneck).

Both are frozen records with ``to_json``/``from_json``: the verdict is summary.json's
``verdict`` object, and ``diff`` and ``compare`` read it back.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

# validity verdicts: the run proves nothing about the app
INVALID = ("client-errors", "load-generator-saturated", "host-contended")


_LIBRARY_PREFIX = re.compile(r"/[^\s:`'\"()]*/(?:site-packages|dist-packages|lib/python3\.\d+)/")


def readable_paths(text: str, app_dir: str | None) -> str:
    """``text`` with the app's files relative to its directory (``sample_app/main.py:89``) and library
    frames as ``package/module.py:line``; summary.json's ``call_site.file`` stays absolute."""
    if app_dir and app_dir not in ("", "/"):
        text = text.replace(app_dir.rstrip("/") + "/", "")
    return _LIBRARY_PREFIX.sub("", text)


@dataclass(frozen=True)
class CallSite:
    """The innermost frame of the app's own code (file, line, function)."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Finding:
    kind: str
    onset_t: float | None
    rule: str
    recommendation: str
    confidence: float
    evidence: tuple[str, ...] = ()
    summary: str = ""
    call_site: CallSite | None = None
    hotspot: str | None = None
    share: float | None = None
    onset_offered_rps: float | None = None
    onset_users: int | None = None
    cause: str | None = None  # server-errors: the failure's known cause, which outranks any resource before the knee

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["evidence"] = list(self.evidence)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Finding:
        site = d.get("call_site")
        return cls(**{**d, "evidence": tuple(d.get("evidence", ())), "call_site": CallSite(**site) if site else None})


@dataclass(frozen=True)
class Onset:
    t_s: float | None
    offered_rps: float | None
    users: int | None


@dataclass(frozen=True)
class Secondary:
    bottleneck: str
    summary: str


@dataclass(frozen=True)
class Verdict:
    """The first bottleneck (``bottleneck`` is a kind of DESIGN.md's vocabulary), its evidence and fix."""

    bottleneck: str
    summary: str
    recommendation: str
    confidence: float
    onset: Onset | None = None
    call_site: CallSite | None = None
    hotspot: str | None = None
    evidence: tuple[str, ...] = ()
    secondary: tuple[Secondary, ...] = ()
    knee: Mapping[str, Any] | None = None  # Knee.to_dict() plus "usl"
    findings: tuple[Finding, ...] = ()

    @property
    def invalid(self) -> bool:
        """The run proves nothing about the app (exit code 3)."""
        return self.bottleneck in INVALID

    def to_json(self) -> dict[str, Any]:
        return {
            "bottleneck": self.bottleneck, "summary": self.summary,
            "onset": asdict(self.onset) if self.onset else None,
            "call_site": asdict(self.call_site) if self.call_site else None, "hotspot": self.hotspot,
            "evidence": list(self.evidence), "recommendation": self.recommendation, "confidence": self.confidence,
            "secondary": [asdict(s) for s in self.secondary], "knee": self.knee,
            "findings": [f.to_json() for f in self.findings],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Verdict:
        onset, site = d.get("onset"), d.get("call_site")
        return cls(
            bottleneck=d["bottleneck"], summary=d["summary"], recommendation=d.get("recommendation", ""),
            confidence=float(d.get("confidence", 0.0)), onset=Onset(**onset) if onset else None,
            call_site=CallSite(**site) if site else None, hotspot=d.get("hotspot"),
            evidence=tuple(d.get("evidence", ())), secondary=tuple(Secondary(**s) for s in d.get("secondary", ())),
            knee=d.get("knee"), findings=tuple(Finding.from_json(f) for f in d.get("findings", ())),
        )

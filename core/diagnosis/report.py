"""The self-test's typed results, their stable JSON document and their readable list.

The JSON shape is a contract for scripts and support: ``format`` and ``format_version`` name it,
check names are fixed (``CHECK_NAMES``), and a field is only ever added, never renamed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from morag_worker.core.wording import sentence

__all__ = [
    "CHECK_NAMES",
    "FORMAT",
    "FORMAT_VERSION",
    "CheckName",
    "CheckResult",
    "Outcome",
    "SelfTestReport",
    "render_text",
]

FORMAT = "morag-worker-self-test"
FORMAT_VERSION = 1


class Outcome(StrEnum):
    PASSED = "passed"
    WARNING = "warning"  # works, but a person should know something
    FAILED = "failed"  # this part will not work until the advice is followed
    SKIPPED = "skipped"  # not applicable here, or an earlier check failed


class CheckName(StrEnum):
    KEYCHAIN = "keychain"
    HUB = "hub"
    BROKER = "broker"
    CONVERSION = "conversion"
    TRANSCRIPTION = "transcription"
    GPU = "gpu"


CHECK_NAMES: tuple[CheckName, ...] = tuple(CheckName)

TITLES: Mapping[CheckName, str] = {
    CheckName.KEYCHAIN: "API key and keychain",
    CheckName.HUB: "Hub",
    CheckName.BROKER: "Broker login",
    CheckName.CONVERSION: "Document conversion",
    CheckName.TRANSCRIPTION: "Transcription",
    CheckName.GPU: "GPU",
}


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: ``summary`` says what was found, ``advice`` what a person can do."""

    name: CheckName
    outcome: Outcome
    summary: str
    advice: str = ""
    seconds: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return TITLES[self.name]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name.value,
            "title": self.title,
            "outcome": self.outcome.value,
            "summary": sentence(self.summary),
            "advice": sentence(self.advice) if self.advice else "",
            "seconds": round(self.seconds, 3),
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class SelfTestReport:
    app_version: str
    hub_url: str
    checks: Sequence[CheckResult]

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.outcome is Outcome.FAILED]

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings and skips do not make a machine unusable)."""
        return not self.failed

    def counts(self) -> dict[str, int]:
        return {o.value: sum(1 for c in self.checks if c.outcome is o) for o in Outcome}

    def get(self, name: CheckName) -> CheckResult:
        return next(c for c in self.checks if c.name is name)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "app_version": self.app_version,
            "hub_url": self.hub_url,
            "ok": self.ok,
            "counts": self.counts(),
            "checks": [c.to_json() for c in self.checks],
        }


def render_text(report: SelfTestReport) -> str:
    """The report as a list a person reads in a terminal, one check per entry, advice indented."""
    width = max(len(o.value) for o in Outcome)
    lines = [f"MoRAG Worker {report.app_version} self-test against {report.hub_url}:", ""]
    for check in report.checks:
        lines.append(f"  {check.outcome.value.upper():<{width}}  {check.title}: {sentence(check.summary)}")
        if check.advice:
            lines.append(f"  {'':<{width}}  {sentence(check.advice)}")
    counts = report.counts()
    tally = ", ".join(f"{counts[o.value]} {o.value}" for o in Outcome)
    verdict = "Everything needed works." if report.ok else "Something needs fixing (see FAILED above)."
    lines += ["", f"{sentence(tally)} {verdict}"]
    return "\n".join(lines) + "\n"

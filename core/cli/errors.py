"""Exit codes, the one error type a verb raises to end with a clear line on stderr, and ``sentence``,
which makes every such line read as a sentence."""

from __future__ import annotations

import re
from enum import IntEnum

__all__ = ["CliError", "ExitCode", "sentence"]


class ExitCode(IntEnum):
    OK = 0
    TASK_FAILED = 1
    USAGE = 2
    CONFIG = 3
    KEY_REJECTED = 4
    HUB_UNREACHABLE = 5
    BROKER_UNREACHABLE = 6
    WORKER_CRASHED = 7  # --no-gui: the worker child kept failing and the retries ran out
    NO_WORKER = 8  # submit --wait: no online worker consumes the task's queue (the task stays queued)
    INTERRUPTED = 130


class CliError(Exception):
    """Ends a verb with ``message`` on stderr and ``code`` as the exit status."""

    def __init__(self, message: str, code: ExitCode = ExitCode.CONFIG) -> None:
        super().__init__(message)
        self.code = code


# A lower-case word that starts the text or follows a full stop; abbreviations are left alone.
_SENTENCE_START = re.compile(r"(?:^|(?<=[.!?] ))([a-z][a-z']*)(?=[\s,;:)]|$)")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "approx.", "cf.")
_END = (".", "!", "?", "…")


def sentence(text: str) -> str:
    """``text`` as a sentence: a capital first letter and a full stop at the end.

    A sentence that follows a full stop inside ``text`` starts with a capital too. Only plain words
    are capitalised: a first word such as ``--expires-days``, ``redis-server`` or ``gpu_index`` names
    something that is spelled exactly so. Text of several lines (an error followed by a program's
    output) keeps its end as it is.
    """
    text = text.strip()
    if not text:
        return text

    def capital(match: re.Match[str]) -> str:
        before = text[: match.start()].rstrip()
        if before.endswith(_ABBREVIATIONS):
            return match.group(0)
        word = match.group(1)
        return word[0].upper() + word[1:]

    first_line, newline, rest = text.partition("\n")
    first_line = _SENTENCE_START.sub(capital, first_line)
    if not newline and not first_line.endswith(_END):
        first_line += "."
    return first_line + newline + rest

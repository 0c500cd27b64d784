"""Messages for people: every error line, status and dialog text is a sentence.

One place decides what a sentence looks like, so the CLI, the supervisor's status texts and the
dialogs agree: a capital first letter, a full stop at the end, a capital after a full stop.
"""

from __future__ import annotations

import re

__all__ = ["capitalised", "error_words", "sentence"]


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


def capitalised(text: str) -> str:
    """``text`` with a capital first letter and nothing added: a sentence that goes on after it."""
    text = text.strip()
    return text[:1].upper() + text[1:] if text else text


# What a failure means, by the name of its exception class or one of its bases, most specific
# first; a person never reads "ReadTimeout" or "PdfStreamError".
_ERROR_WORDS: tuple[tuple[str, str], ...] = (
    ("ConnectTimeout", "the connection timed out"),
    ("ReadTimeout", "no answer came in time"),
    ("Timeout", "no answer came in time"),
    ("TimeoutError", "no answer came in time"),
    ("SSLError", "the secure connection failed"),
    ("ProxyError", "the proxy refused the connection"),
    ("ConnectionRefusedError", "the connection was refused"),
    ("ConnectionError", "no connection could be made"),
    ("ChunkedEncodingError", "the connection broke off"),
    ("PdfStreamError", "the PDF data ends too early or is garbled"),
    ("PdfReadError", "the PDF cannot be read"),
    ("UnicodeDecodeError", "the text is not in a known encoding"),
    ("BadZipFile", "the file's archive structure is broken"),
    ("MemoryError", "there was not enough memory"),
    ("OSError", "the system reported an error"),
)


def error_words(exc: BaseException) -> str:
    """What ``exc`` means in words ("no answer came in time"), never its class name.

    Matched by the names of its class and bases, so no third-party module is imported here.
    """
    names = [cls.__name__ for cls in type(exc).__mro__]
    for name, words in _ERROR_WORDS:
        if name in names:
            return words
    return "an unexpected error occurred"

"""Removing secrets from text bound for a diagnostics bundle, in every form they are likely to take.

``core.logging.redact`` already removes registered secrets, key-shaped runs, URL passwords and
Bearer headers; a bundle also holds raw files (settings, logs written by other programs), where a
key may appear percent-encoded, in base64 (an ``Authorization: Basic`` header, at any byte offset),
or as hex. ``Scrubber`` removes all of those forms of each secret it was given, then calls ``redact``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from morag_worker.core.logging import REDACTED, redact, register_secret

__all__ = ["Scrubber", "secret_forms"]

_MIN_FORM = 8  # shorter fragments would remove ordinary text


def _base64_fragments(raw: bytes) -> set[str]:
    """The parts of ``raw``'s base64 text that are the same wherever ``raw`` sits in a longer input:
    for each of the three byte offsets, the 4-character groups made only of ``raw``'s bytes."""
    found: set[str] = set()
    for offset in range(3):
        total = offset + len(raw)
        start = 4 if offset else 0
        end = (total // 3) * 4
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * offset + raw).decode("ascii")
            fragment = text[start:end]
            if len(fragment) >= _MIN_FORM:
                found.add(fragment)
    return found


def secret_forms(secret: str) -> set[str]:
    """``secret`` as itself, percent-encoded (as needed, or every byte), in base64 (at any offset),
    in hex, and its SHA-256."""
    raw = secret.encode("utf-8")
    every_byte = "".join(f"%{byte:02X}" for byte in raw)  # percent-encoding of every byte, any case
    forms = {secret, quote(secret, safe=""), quote_plus(secret), every_byte, every_byte.lower()}
    forms |= {raw.hex(), raw.hex().upper()}
    forms |= _base64_fragments(raw)
    forms.add(hashlib.sha256(raw).hexdigest())
    return {form for form in forms if len(form) >= _MIN_FORM}


class Scrubber:
    """Removes the given secrets (in all their forms) and anything key-shaped from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._forms: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if not secret or len(secret) < _MIN_FORM:
            return
        register_secret(secret)
        self._forms = sorted(set(self._forms) | secret_forms(secret), key=len, reverse=True)

    def text(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return redact(text)

    def data(self, raw: bytes) -> str:
        """Bytes from a file of unknown encoding, as scrubbed text (undecodable bytes become U+FFFD)."""
        return self.text(raw.decode("utf-8", "replace"))

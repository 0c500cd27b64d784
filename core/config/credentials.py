"""Credentials: the one module that touches ``keyring``, API-key files and ``MORAG_API_KEY``.

The user's API key is kept in the OS keychain (service ``morag-worker``, account = the hub URL
in ``normalise_hub_url`` form). Where there is no keychain, the person may choose, knowingly, to
keep it only for this session (in memory) or in a file only they can read (``KeyFile``: mode
0600 in the config folder, written atomically); the headless worker reads that file too.

The backend ``keyring`` picked is checked before use: plaintext and other non-recommended
backends (``keyrings.alt``), the fail and null backends and an empty chainer are refused, so the
key never lands in a plaintext file unless the person asked for that. Every keychain failure
becomes one ``KeychainUnavailable`` with a message and advice a person can act on. The key itself
is never logged nor put in an error message.

Keychain calls block (D-Bus, unlock prompts): the GUI runs them through its background helper,
never on the GUI thread. A ``CredentialStore`` is safe to share between threads.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import keyring
import keyring.errors
import structlog
from keyring.backend import KeyringBackend
from keyring.backends.chainer import ChainerBackend

from morag_worker.core.config.atomic_file import write_atomically
from morag_worker.core.config.settings import SettingsStore, normalise_hub_url
from morag_worker.core.logging import redact, register_secret

__all__ = [
    "API_KEY_ENV",
    "MAX_SECRET_CHARS",
    "SERVICE_NAME",
    "ApiKeyFileError",
    "CredentialError",
    "CredentialStore",
    "InvalidApiKey",
    "KEY_FILE_NAME",
    "KeyFile",
    "KeyPlace",
    "KeySource",
    "KeychainProblem",
    "KeychainUnavailable",
    "NoApiKey",
    "ResolvedKey",
    "key_file_path",
    "read_api_key_file",
    "resolve_api_key",
]

SERVICE_NAME = "morag-worker"
API_KEY_ENV = "MORAG_API_KEY"
# Windows Credential Manager blobs hold at most 2560 bytes of UTF-16, 1280 code units; keyring
# then fails with "The stub received bad data". Enforced everywhere so a key that works on one
# machine works on all. A MoRAG key is 43 characters.
MAX_SECRET_CHARS = 1200
_MAX_KEY_FILE_BYTES = 64 * 1024

log = structlog.get_logger(__name__)

# Backends keyring ships for the platforms' own keychains: (module, class) -> human name.
_SYSTEM_KEYCHAINS: dict[tuple[str, str], str] = {
    ("keyring.backends.SecretService", "Keyring"): "Secret Service (GNOME Keyring or compatible)",
    ("keyring.backends.libsecret", "Keyring"): "Secret Service (libsecret)",
    ("keyring.backends.Windows", "WinVaultKeyring"): "Windows Credential Manager",
    ("keyring.backends.macOS", "Keyring"): "macOS Keychain",
    ("keyring.backends.kwallet", "DBusKeyring"): "KWallet",
    ("keyring.backends.kwallet", "DBusKeyringKWallet4"): "KWallet",
}
_NO_KEYCHAIN_MODULES = ("keyring.backends.fail", "keyring.backends.null")
_ALT_PREFIX = "keyrings.alt"


class CredentialError(Exception):
    """Base of the errors this module raises; each has a message and advice for a person.

    Attributes:
        message: What went wrong.
        advice: What the user can do next.
    """

    def __init__(self, message: str, advice: str = "") -> None:
        self.message = message
        self.advice = advice
        super().__init__(f"{message}. {advice}" if advice else message)


class KeychainProblem(StrEnum):
    """Why the keychain cannot be used, for a front end that wants to offer the right fix."""

    NO_KEYCHAIN = "no_keychain"
    PLAINTEXT_REFUSED = "plaintext_refused"
    LOCKED = "locked"
    FAILED = "failed"


class KeychainUnavailable(CredentialError):
    """The keychain is missing, locked, refused (plaintext) or failed; nothing was stored or read."""

    def __init__(self, message: str, advice: str, problem: KeychainProblem) -> None:
        super().__init__(message, advice)
        self.problem = problem


class InvalidApiKey(CredentialError, ValueError):
    """A key that cannot be an API key: empty, with whitespace, or longer than the keychain allows."""


class ApiKeyFileError(CredentialError):
    """An ``--api-key-file`` that is missing, unreadable, readable by others or not the user's."""


class NoApiKey(CredentialError):
    """No API key was given by file, environment or keychain."""


class KeyPlace(StrEnum):
    """Where ``CredentialStore.set`` keeps a key: the keychain, or a choice made without one."""

    KEYCHAIN = "keychain"
    FILE = "file"  # a 0600 file in the config folder, chosen knowingly
    SESSION = "session"  # memory only: gone when the app quits


KEY_FILE_NAME = "api-keys.json"


def key_file_path(config_dir: Path | None) -> Path:
    """The key file of the config folder (``--config-dir`` or the platform's; nothing is created)."""
    return SettingsStore(config_dir).config_dir / KEY_FILE_NAME


class KeyFile:
    """API keys by hub in a JSON file only its owner may read; for a computer without a keychain.

    Written atomically with mode 0600 (folder 0700); refused when readable by others or not the
    user's, like ``--api-key-file``. Keys read are registered for redaction.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read_all(self) -> dict[str, str]:
        """Every stored key by hub; empty when there is no file.

        Raises:
            ApiKeyFileError: The file is unsafe or unreadable, or not what this module writes.
        """
        if not self.path.exists():
            return {}
        shown = str(self.path)
        try:
            with open(self.path, "rb") as handle:
                _check_key_file(shown, os.fstat(handle.fileno()))
                raw = handle.read(_MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise ApiKeyFileError(
                f"cannot read the key file {shown} ({exc.strerror})", "enter the API key again"
            ) from exc
        try:
            keys = json.loads(raw.decode("utf-8"))["keys"]
            if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
                raise ValueError("keys")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ApiKeyFileError(
                f"the key file {shown} is damaged", "delete it and enter the API key again"
            ) from exc
        for key in keys.values():
            register_secret(key)
        return {str(hub): key for hub, key in keys.items()}

    def get(self, account: str) -> str | None:
        return self.read_all().get(account)

    def set(self, account: str, api_key: str) -> None:
        keys = self.read_all()
        keys[account] = api_key
        self._write(keys)
        log.info("credentials.stored_in_file", account=account, path=str(self.path))

    def delete(self, account: str) -> bool:
        keys = self.read_all()
        if keys.pop(account, None) is None:
            return False
        if keys:
            self._write(keys)
        else:
            self.path.unlink(missing_ok=True)
        log.info("credentials.deleted_from_file", account=account, path=str(self.path))
        return True

    def _write(self, keys: dict[str, str]) -> None:
        payload = json.dumps({"version": 1, "keys": keys}, indent=2, sort_keys=True) + "\n"
        try:
            write_atomically(self.path, payload, mode=0o600, folder_mode=0o700)
        except OSError as exc:
            raise ApiKeyFileError(
                f"cannot write the key file {self.path} ({exc.strerror})",
                "check that the folder is writable and the disk is not full",
            ) from exc


class KeySource(StrEnum):
    """Where a resolved API key came from."""

    FILE = "file"
    ENV = "env"
    KEYCHAIN = "keychain"


@dataclass(frozen=True)
class ResolvedKey:
    """An API key and its source; the key is left out of ``repr``."""

    key: str = field(repr=False)
    source: KeySource


_OTHER_SOURCES = (
    f"or set {API_KEY_ENV}, or use --api-key-file PATH (mode 0600), or `morag-worker login "
    "--keep-key-in-file`"
)
_HEADLESS_ADVICE = f"run inside dbus-run-session with gnome-keyring-daemon --unlock, {_OTHER_SOURCES}"


def _fallback_advice(platform: str) -> str:
    if platform == "win32":
        return f"check that Windows Credential Manager works for this user, {_OTHER_SOURCES}"
    if platform == "darwin":
        return f"check that the login Keychain is unlocked, {_OTHER_SOURCES}"
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return f"there is no D-Bus session here (headless?): {_HEADLESS_ADVICE}"
    return (
        f"start or unlock a Secret Service (GNOME Keyring, KWallet, KeePassXC); headless: {_HEADLESS_ADVICE}"
    )


def _describe(backend: KeyringBackend) -> str:
    cls = type(backend)
    known = _SYSTEM_KEYCHAINS.get((cls.__module__, cls.__name__))
    if known:
        return known
    file_path = getattr(backend, "file_path", None)
    if isinstance(file_path, str | os.PathLike):
        return f"plaintext file ({os.fspath(file_path)})"
    return f"{cls.__module__}.{cls.__qualname__}"


def _priority(backend: KeyringBackend) -> float | None:
    try:
        return float(backend.priority)
    except Exception:  # a backend's priority raises when it is not viable here
        return None


class _Kind(StrEnum):
    KEYCHAIN = "keychain"
    PLAINTEXT = "plaintext"
    NONE = "none"


def _kind(backend: KeyringBackend) -> _Kind:
    cls = type(backend)
    priority = _priority(backend)
    if cls.__module__ in _NO_KEYCHAIN_MODULES or priority is None:
        return _Kind.NONE
    if (cls.__module__, cls.__name__) in _SYSTEM_KEYCHAINS:
        return _Kind.KEYCHAIN
    # keyrings.alt, and any backend keyring itself does not recommend (priority < 1), such as
    # file backends, counts as plaintext.
    if cls.__module__.startswith(_ALT_PREFIX) or priority < 1:
        return _Kind.PLAINTEXT
    return _Kind.KEYCHAIN


class CredentialStore:
    """The API key per hub in the OS keychain, through a checked ``keyring`` backend.

    Args:
        backend: The keyring backend to use; None means the one ``keyring`` picks (looked up on
            first use, not here). A ``ChainerBackend`` is unwrapped to its best usable backend,
            so the key is read from and written to exactly one place.
        allow_plaintext: Accept a plaintext or otherwise non-recommended backend. Off by
            default: the fail/null backends are refused whatever this says.
        key_file: Where ``KeyPlace.FILE`` keeps keys (``key_file_path``); None: no file is read
            or written.

    A key is looked up in this session's memory, then the keychain, then the key file.
    """

    def __init__(
        self,
        backend: KeyringBackend | None = None,
        *,
        allow_plaintext: bool = False,
        key_file: Path | None = None,
    ) -> None:
        self._requested = backend
        self._file = KeyFile(key_file) if key_file is not None else None
        self._session: dict[str, str] = {}
        self._allow_plaintext = allow_plaintext
        self._lock = threading.Lock()
        self._resolved: tuple[KeyringBackend | None, KeychainUnavailable | None] | None = None

    # -- backend selection -------------------------------------------------------------------

    def _resolve(self) -> tuple[KeyringBackend | None, KeychainUnavailable | None]:
        with self._lock:
            if self._resolved is None:
                self._resolved = self._pick()
            return self._resolved

    def _pick(self) -> tuple[KeyringBackend | None, KeychainUnavailable | None]:
        picked = self._requested
        if picked is None:
            try:
                picked = keyring.get_keyring()
            except Exception as exc:  # a bad PYTHON_KEYRING_BACKEND or keyringrc.cfg
                return None, KeychainUnavailable(
                    f"keyring could not load its backend ({exc.__class__.__name__}: {exc})",
                    f"check PYTHON_KEYRING_BACKEND and keyringrc.cfg, {_OTHER_SOURCES}",
                    KeychainProblem.NO_KEYCHAIN,
                )
        candidates = list(picked.backends) if isinstance(picked, ChainerBackend) else [picked]
        kinds = [(candidate, _kind(candidate)) for candidate in candidates]
        usable = [_Kind.KEYCHAIN, _Kind.PLAINTEXT] if self._allow_plaintext else [_Kind.KEYCHAIN]
        for candidate, kind in kinds:
            if kind in usable:
                if kind is _Kind.PLAINTEXT:
                    log.warning("credentials.plaintext_backend_allowed", backend=_describe(candidate))
                log.debug("credentials.backend", backend=_describe(candidate))
                return candidate, None
        for candidate, kind in kinds:
            if kind is _Kind.PLAINTEXT:
                return candidate, KeychainUnavailable(
                    f"keyring would store the API key in a {_describe(candidate)}, which is not a "
                    "keychain; refused",
                    "uninstall keyrings.alt or set PYTHON_KEYRING_BACKEND to a system keychain, "
                    + _OTHER_SOURCES,
                    KeychainProblem.PLAINTEXT_REFUSED,
                )
        return None, KeychainUnavailable(
            "no keychain is available to store the API key",
            _fallback_advice(sys.platform),
            KeychainProblem.NO_KEYCHAIN,
        )

    def _backend(self) -> KeyringBackend:
        backend, error = self._resolve()
        if error is not None:
            log.warning("credentials.unavailable", problem=error.problem.value, reason=error.message)
            raise error
        assert backend is not None
        return backend

    @property
    def backend_description(self) -> str:
        """A human name of where keys are kept, e.g. ``"Windows Credential Manager"``.

        For a refused backend the name says so, e.g. ``"plaintext file (...) (refused)"``.
        Looking it up may block on D-Bus the first time.
        """
        backend, error = self._resolve()
        if backend is None:
            return "no keychain"
        return _describe(backend) + (" (refused)" if error is not None else "")

    # -- operations --------------------------------------------------------------------------

    def get(self, hub_url: str) -> str | None:
        """The stored API key for ``hub_url``, or None when there is none.

        Raises:
            InvalidHubUrl: ``hub_url`` is not a valid hub URL.
            KeychainUnavailable: The keychain is missing, locked, refused or failed.
        """
        account = normalise_hub_url(hub_url)
        found = self._lookup(account)
        log.debug("credentials.read", account=account, place=found[0].value if found else None)
        return found[1] if found is not None else None

    def place(self, hub_url: str) -> KeyPlace | None:
        """Where the key for ``hub_url`` is kept, or None when there is none (raises as ``get``)."""
        found = self._lookup(normalise_hub_url(hub_url))
        return found[0] if found is not None else None

    def _lookup(self, account: str) -> tuple[KeyPlace, str] | None:
        """This session's memory, then the keychain, then the key file.

        A keychain that cannot be used is an error only when the file holds no key either.
        """
        session = self._session.get(account)
        if session is not None:
            return KeyPlace.SESSION, session
        in_file = self._file.get(account) if self._file is not None else None
        try:
            backend = self._backend()
            try:
                key = backend.get_password(SERVICE_NAME, account)
            except Exception as exc:
                raise self._wrap(exc, backend, "read the API key from") from exc
        except KeychainUnavailable:
            if in_file is not None:
                return KeyPlace.FILE, in_file
            raise
        if key is not None:
            register_secret(key)
            return KeyPlace.KEYCHAIN, key
        return (KeyPlace.FILE, in_file) if in_file is not None else None

    def set(self, hub_url: str, api_key: str, place: KeyPlace = KeyPlace.KEYCHAIN) -> None:
        """Store ``api_key`` for ``hub_url`` in ``place``, replacing any earlier one.

        ``KeyPlace.SESSION`` keeps it in memory until the process ends; ``KeyPlace.FILE`` in the
        key file (only when the person chose it: there is no keychain). Either way the key in
        the other places is removed, so one place answers.

        Raises:
            InvalidHubUrl: ``hub_url`` is not a valid hub URL.
            InvalidApiKey: The key is empty, has whitespace or is longer than MAX_SECRET_CHARS.
            KeychainUnavailable: The keychain is missing, locked, refused or failed.
        """
        account = normalise_hub_url(hub_url)
        _check_key(api_key)
        register_secret(api_key)
        if place is not KeyPlace.KEYCHAIN:
            self._set_elsewhere(account, api_key, place)
            return
        self._session.pop(account, None)
        if self._file is not None:
            self._file.delete(account)
        backend = self._backend()
        try:
            backend.set_password(SERVICE_NAME, account, api_key)
        except Exception as exc:
            raise self._wrap(exc, backend, "store the API key in") from exc
        log.info("credentials.stored", account=account, backend=_describe(backend))

    def _set_elsewhere(self, account: str, api_key: str, place: KeyPlace) -> None:
        if place is KeyPlace.FILE:
            if self._file is None:
                raise ApiKeyFileError("no key file is configured", "keep the key for this session only")
            self._file.set(account, api_key)
            self._session.pop(account, None)
        else:
            self._session[account] = api_key
            log.info("credentials.kept_for_session", account=account)

    def delete(self, hub_url: str) -> bool:
        """Remove the key stored for ``hub_url`` from every place; False when there was none.

        Raises:
            InvalidHubUrl: ``hub_url`` is not a valid hub URL.
            KeychainUnavailable: The keychain is missing, locked, refused or failed, and no
                other place held a key.
        """
        account = normalise_hub_url(hub_url)
        removed = self._session.pop(account, None) is not None
        if self._file is not None:
            removed = self._file.delete(account) or removed
        try:
            backend = self._backend()
            in_keychain = backend.get_password(SERVICE_NAME, account) is not None
        except KeychainUnavailable:
            if removed:
                return True
            raise
        except Exception as exc:
            raise self._wrap(exc, backend, "read the API key from") from exc
        if not in_keychain:
            return removed
        try:
            backend.delete_password(SERVICE_NAME, account)
        except Exception as exc:
            raise self._wrap(exc, backend, "delete the API key from") from exc
        log.info("credentials.deleted", account=account, backend=_describe(backend))
        return True

    @staticmethod
    def _wrap(exc: Exception, backend: KeyringBackend, doing: str) -> KeychainUnavailable:
        # A backend's message could echo what it was given; keys were registered before the call.
        detail = redact(f"{exc.__class__.__name__}: {exc}")
        where = _describe(backend)
        if isinstance(exc, keyring.errors.KeyringLocked):
            error = KeychainUnavailable(
                f"could not {doing} the {where}: it is locked ({detail})",
                "unlock it (log in to the desktop session, or gnome-keyring-daemon --unlock) and retry, "
                + _OTHER_SOURCES,
                KeychainProblem.LOCKED,
            )
        elif isinstance(exc, keyring.errors.NoKeyringError):
            error = KeychainUnavailable(
                f"could not {doing} the keychain: none is available ({detail})",
                _fallback_advice(sys.platform),
                KeychainProblem.NO_KEYCHAIN,
            )
        else:
            error = KeychainUnavailable(
                f"could not {doing} the {where} ({detail})",
                _fallback_advice(sys.platform),
                KeychainProblem.FAILED,
            )
        log.warning("credentials.keychain_error", problem=error.problem.value, error=error.message)
        return error


def _check_key(api_key: str) -> str:
    if not isinstance(api_key, str) or not api_key:
        raise InvalidApiKey("the API key is empty", "paste the key the hub gave you")
    if any(ch.isspace() or not ch.isprintable() for ch in api_key):
        raise InvalidApiKey(
            "the API key contains spaces, line breaks or control characters",
            "paste the key alone, without quotes or surrounding text",
        )
    units = len(api_key.encode("utf-16-le")) // 2
    if units > MAX_SECRET_CHARS:
        raise InvalidApiKey(
            f"the API key is {units} characters long; the keychain stores at most {MAX_SECRET_CHARS} "
            "(Windows Credential Manager's limit)",
            "MoRAG keys are 43 characters: check that you pasted the key and nothing else",
        )
    return api_key


def _check_key_file(shown: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ApiKeyFileError(f"API key file {shown} is not a regular file", "point to a file")
    if sys.platform == "win32":
        return
    if info.st_uid != os.geteuid():
        raise ApiKeyFileError(
            f"API key file {shown} belongs to another user (uid {info.st_uid})",
            "use a file you own, with mode 0600",
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ApiKeyFileError(
            f"API key file {shown} is readable by others (mode {mode:04o})", f"run: chmod 600 {shown}"
        )


def read_api_key_file(path: str | os.PathLike[str]) -> str:
    """Read an API key from a file that only its owner can read (``--api-key-file``).

    On POSIX the file must belong to the current user and grant nothing to group or others
    (mode 0600 or 0400). On Windows the mode bits mean nothing (access is governed by ACLs,
    which are not checked here), so only the content is checked. Surrounding whitespace is
    stripped.

    Raises:
        ApiKeyFileError: The file is missing, unreadable, not a regular file, readable by
            others, owned by someone else, or does not hold exactly one key.
    """
    shown = os.fspath(path)
    # O_NONBLOCK: opening a FIFO must not hang; it is refused below as not a regular file.
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    )
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise ApiKeyFileError(f"API key file {shown} does not exist", "check the path") from exc
    except OSError as exc:
        raise ApiKeyFileError(
            f"cannot open API key file {shown} ({exc.strerror})", "check the path and its permissions"
        ) from exc
    try:
        _check_key_file(shown, os.fstat(fd))
        raw = b""
        while len(raw) <= _MAX_KEY_FILE_BYTES and (chunk := os.read(fd, _MAX_KEY_FILE_BYTES + 1)):
            raw += chunk
    finally:
        os.close(fd)
    if len(raw) > _MAX_KEY_FILE_BYTES:
        raise ApiKeyFileError(f"API key file {shown} is too large to hold a key", "put only the key in it")
    try:
        key = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ApiKeyFileError(f"API key file {shown} is not UTF-8 text", "put only the key in it") from exc
    try:
        _check_key(key)
    except InvalidApiKey as exc:
        raise ApiKeyFileError(f"API key file {shown}: {exc.message}", "put only the key in it") from exc
    register_secret(key)
    return key


def resolve_api_key(
    *,
    env: Mapping[str, str],
    api_key_file: str | os.PathLike[str] | None,
    store: CredentialStore | None,
    hub_url: str,
) -> ResolvedKey:
    """Find the API key to use: ``--api-key-file``, then ``MORAG_API_KEY``, then the keychain.

    Args:
        env: The environment (``os.environ`` in production).
        api_key_file: The ``--api-key-file`` path, when given.
        store: The keychain; None skips it.
        hub_url: The hub whose key is wanted (the keychain account).

    Raises:
        ApiKeyFileError: ``api_key_file`` was given but cannot be used (no fall-through).
        InvalidApiKey: ``MORAG_API_KEY`` is set but is not a plausible key.
        KeychainUnavailable: Only the keychain was left and it cannot be used.
        NoApiKey: No source holds a key.
    """
    if api_key_file is not None:
        resolved = ResolvedKey(read_api_key_file(api_key_file), KeySource.FILE)
    elif env_key := env.get(API_KEY_ENV, "").strip():
        register_secret(env_key)
        try:
            resolved = ResolvedKey(_check_key(env_key), KeySource.ENV)
        except InvalidApiKey as exc:
            raise InvalidApiKey(f"{API_KEY_ENV}: {exc.message}", exc.advice) from exc
    else:
        stored = store.get(hub_url) if store is not None else None
        if stored is None:
            raise NoApiKey(
                f"no API key for {normalise_hub_url(hub_url)}",
                f"run `morag-worker login`, {_OTHER_SOURCES}",
            )
        resolved = ResolvedKey(stored, KeySource.KEYCHAIN)
    log.info("credentials.resolved", source=resolved.source.value, hub=normalise_hub_url(hub_url))
    return resolved

"""Builds the argument parser and runs the chosen headless verb.

Verbs import their modules lazily so ``--help`` and ``--version`` stay fast and need nothing but
the standard library and this package.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from morag_worker import DISPLAY_NAME, __version__
from morag_worker.core.cli.errors import CliError, ExitCode

__all__ = ["build_parser", "dispatch"]

# verb -> module under morag_worker.core.cli that has run(args) -> int
_VERBS = {
    "login": "login:run_login",
    "logout": "login:run_logout",
    "demo": "demo",
    "keys": "keys",
    "hub": "hub",
    "submit": "submit",
    "self-test": "checkup:run_self_test_command",
    "diagnostics": "checkup:run_diagnostics",
}


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


@dataclass(frozen=True)
class _Kind:
    """How a hub bound is read: ``parse`` turns the text into the value or raises ValueError."""

    metavar: str
    parse: Callable[[str], float]


_COUNT = _Kind("N", lambda text: _non_negative(int(text)))
_SECONDS = _Kind("SECONDS", _positive_seconds)


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError(value)
    return value


HUB_BOUNDS: tuple[tuple[str, _Kind, float, str], ...] = (
    ("max-json-kb", _COUNT, 1024, "body cap of non-upload routes, in KiB"),
    (
        "max-result-mb",
        _COUNT,
        80,
        "answer 413 instead of reading a stored task result larger than this, in MiB",
    ),
    ("header-timeout", _SECONDS, 10, "close a connection whose request headers are not complete in time"),
    ("body-timeout", _SECONDS, 30, "answer 408 when a request body stalls this long"),
    (
        "min-body-rate-kb",
        _COUNT,
        16,
        "after --body-timeout, answer 408 to a body arriving slower than this, in KiB/s",
    ),
    ("max-in-flight", _COUNT, 512, "answer 503 beyond this many requests in progress"),
    ("max-connections-per-address", _COUNT, 256, "refuse connections from an address holding this many"),
    ("redis-max-connections", _COUNT, 64, "the hub's Redis connection pool"),
    ("redis-pool-timeout", _SECONDS, 5, "wait this long for a pooled Redis connection, then answer 503"),
    ("rate-window", _COUNT, 60, "the rate limits' window, in seconds"),
    ("auth-failures-per-address", _COUNT, 300, "failed authentications an address may make per window"),
    ("auth-failures-per-key", _COUNT, 60, "failed authentications with one presented key per window"),
    ("tasks-per-key", _COUNT, 6000, "tasks one key may create per window"),
    ("tasks-per-address", _COUNT, 12000, "tasks one address may create per window"),
)


def _from_env_or_option(kind: _Kind, option: str, env: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return kind.parse(text)
        except (ValueError, argparse.ArgumentTypeError):
            wanted = "a number of seconds above 0" if kind is _SECONDS else "a whole number, 0 or more"
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted} (from --{option} or {env})") from None

    parse.__name__ = option
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="morag-worker",
        description=f"{DISPLAY_NAME}: contribute your GPU to a MoRAG server. "
        "Without a command the tray app starts; --no-gui runs the same worker headless.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--no-gui", action="store_true", help="run the worker headless")
    _add_common(parser, suppress=False)
    parser.add_argument(
        "--retries",
        type=int,
        default=6,
        metavar="N",
        help="with --no-gui: give up after N failed start attempts in a row (0: keep trying)",
    )
    # The same options are accepted after a command too (``morag-worker login --hub URL``).
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    login = sub.add_parser(
        "login", parents=[common], help="check an API key against the hub and keep it in the keychain"
    )
    login.add_argument(
        "--keep-key-in-file",
        action="store_true",
        help="where there is no keychain: keep the key in a file only you can read (mode 0600) in the "
        "config folder; anyone with access to your account can read it",
    )
    sub.add_parser("logout", parents=[common], help="remove the API key from the keychain and the key file")
    demo = sub.add_parser(
        "demo", parents=[common], help="run the whole loop on this machine with the bundled samples"
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo's temporary folder")
    demo.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the results")
    demo.add_argument(
        "--samples", type=Path, metavar="DIR", help="submit the files in DIR instead of the bundled samples"
    )

    # The server-side verbs need the admin Redis connection; it is never guessed.
    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument(
        "--redis-url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="the admin Redis connection, without a password (default: REDIS_URL, which is required "
        "when this is not given and is where a password belongs)",
    )
    server_side = [common, admin]
    keys = sub.add_parser(
        "keys", parents=server_side, help="server side: manage API keys (needs REDIS_URL or --redis-url)"
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = keys_sub.add_parser("create", parents=server_side, help="create a key; prints it once on stdout")
    create.add_argument("--user", required=True, help="user id")
    create.add_argument("--description", default="")
    create.add_argument("--expires-days", type=int)
    create.add_argument(
        "--role",
        choices=("user", "server"),
        default="user",
        help="user (default): the user's own workers only; server: may also submit local tasks "
        "(the server's own workers) through the hub",
    )
    listing = keys_sub.add_parser("list", parents=server_side, help="list a user's keys (hashes, never keys)")
    listing.add_argument("--user", required=True)
    revoke = keys_sub.add_parser(
        "revoke", parents=server_side, help="revoke a key, given as the key or its hash"
    )
    revoke.add_argument("key_or_hash", help="the key, '-' to read it from stdin, or its hash")
    keys_sub.add_parser("sweep", parents=server_side, help="remove expired keys and their broker access")

    hub = sub.add_parser(
        "hub", parents=server_side, help="server side: run the HTTP hub (needs REDIS_URL or --redis-url)"
    )
    hub.add_argument("--host", default="127.0.0.1")
    hub.add_argument("--port", type=int, default=8700)
    hub.add_argument("--storage", type=Path, default=Path("hub-storage"))
    hub.add_argument("--public-url", help="URL workers use to reach this hub")
    hub.add_argument("--worker-broker-url", help="broker URL told to workers (no credentials)")
    hub.add_argument(
        "--worker-version",
        metavar="VERSION",
        help="the current worker release, advertised in queue-info so that older workers say an "
        "update is available (env MORAG_HUB_WORKER_VERSION; default: this hub's own version)",
    )
    hub.add_argument("--max-upload-mb", type=int, default=2048)
    hub.add_argument(
        "--models-dir",
        type=Path,
        metavar="DIR",
        help="serve the model folders under DIR (DIR/NAME/...) to workers at /api/v1/models/NAME, "
        "so that workers without internet fetch a speech model from the hub (default: none)",
    )
    hub.add_argument(
        "--maintenance-interval",
        type=_positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how often to re-provision lost ACL users, sweep expired keys and restore stranded "
        "tasks (default: 60)",
    )
    hub.add_argument(
        "--watchdog-interval",
        type=_positive_seconds,
        default=15.0,
        metavar="SECONDS",
        help="how often to restore the tasks of workers that died, between maintenance rounds (default: 15)",
    )
    hub.add_argument(
        "--visibility-timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="restore a task a worker took longer ago than this (default: the workers' own, from "
        "CELERY_VISIBILITY_TIMEOUT or the task time limits)",
    )

    bounds = hub.add_argument_group(
        "bounds",
        "what one client may cost the hub (0 turns a limit off); each also reads MORAG_HUB_<NAME>, "
        "e.g. MORAG_HUB_MAX_IN_FLIGHT, and the option wins over the environment",
    )
    for option, kind, default, help_text in HUB_BOUNDS:
        env = "MORAG_HUB_" + option.upper().replace("-", "_")
        bounds.add_argument(
            f"--{option}",
            type=_from_env_or_option(kind, option, env),
            default=os.environ.get(env, str(default)),
            metavar=kind.metavar,
            help=f"{help_text} (default: {default}; {env})",
        )

    submit = sub.add_parser("submit", parents=[common], help="send a file or URL to your queue")
    submit.add_argument("source", help="a file path or an http(s) URL")
    submit.add_argument("--wait", action="store_true", help="follow progress, print the result")
    submit.add_argument("--json", action="store_true", help="print the whole result object")
    submit.add_argument("--content-type")
    submit.add_argument("--worker-type", choices=("gpu", "cpu"), default="gpu", help="queue kind")
    submit.add_argument(
        "--local", action="store_true", help="use the server's own workers (needs a key with --role server)"
    )
    submit.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait at most")
    submit.add_argument(
        "--keep-waiting",
        action="store_true",
        help="with --wait: wait even when none of your workers is online for the task's queue",
    )
    _add_checkup(sub, common)
    return parser


def _add_checkup(sub: Any, common: argparse.ArgumentParser) -> None:
    """``self-test`` and ``diagnostics``: what a contributor runs when something does not work."""
    selftest = sub.add_parser(
        "self-test",
        parents=[common],
        help="check the keychain, the hub, the broker login, conversion, transcription and the GPU",
    )
    selftest.add_argument("--json", action="store_true", help="print the results as a JSON document")
    diagnostics = sub.add_parser(
        "diagnostics",
        parents=[common],
        help="write versions, settings, recent logs, self-test results and GPU facts to a zip, "
        "secrets removed",
    )
    diagnostics.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE.zip", help="the zip to write"
    )
    diagnostics.add_argument("--no-self-test", action="store_true", help="leave the self-test out (faster)")
    diagnostics.add_argument(
        "--log-kb", type=int, default=256, metavar="N", help="the last N KiB of each log file (default: 256)"
    )


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options every verb takes; on sub-commands they default to "not given" (SUPPRESS)."""
    unset: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config-dir", type=Path, default=unset, help="settings folder (default: per-user)")
    parser.add_argument("--hub", default=unset, help="hub URL (default: MAIN_SERVER_URL or the settings)")
    parser.add_argument(
        "--api-key-file", type=Path, default=unset, help="read the API key from this 0600 file"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if suppress else 0,
        help="more log output",
    )
    parser.add_argument("--log-format", choices=("console", "json"), default=unset, help="log renderer")


def dispatch(args: argparse.Namespace) -> int:
    """Run the verb in ``args``; CliError and KeyboardInterrupt are turned into exit codes."""
    module_name = _VERBS.get(args.command or "")
    if args.no_gui and args.command is None:
        module_name = "headless"
    if module_name is None:
        raise CliError("no command given", ExitCode.USAGE)
    module_path, _, function = module_name.partition(":")
    module = importlib.import_module(f"{__package__}.{module_path}")
    code: int = getattr(module, function or "run")(args)
    return code

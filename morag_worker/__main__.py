"""The ``morag-worker`` entry point: parse arguments, configure logging, then pick a front end.

No toolkit is imported before the arguments are parsed, so ``--help``, ``--version`` and every
headless verb work without a display; the tray app is not started where there is no display.
"""

from __future__ import annotations

import logging
import os
import sys

from morag_worker.core.cli import CliError, ExitCode, build_parser, dispatch
from morag_worker.core.cli.display import NO_DISPLAY_MESSAGE, has_display
from morag_worker.core.logging import configure_logging, redact
from morag_worker.core.wording import sentence


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_verbs = args.command in ("keys", "submit", "demo", "login", "logout", "self-test", "diagnostics")
    level = logging.DEBUG if args.verbose > 1 else logging.INFO
    if quiet_verbs and not args.verbose:
        level = logging.WARNING
    configure_logging(renderer=args.log_format, level=level)
    try:
        if args.command is None and not args.no_gui:
            return _run_gui(args)
        return dispatch(args)
    except CliError as exc:
        print(f"morag-worker: {sentence(redact(str(exc)))}", file=sys.stderr)
        return int(exc.code)
    except KeyboardInterrupt:
        print("morag-worker: Interrupted.", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


def _run_gui(args: object) -> int:
    if not has_display(os.environ):
        raise CliError(NO_DISPLAY_MESSAGE, ExitCode.USAGE)
    try:
        from morag_worker.gui.entry import run
    except ImportError as exc:
        raise CliError(
            f"the tray app is not available ({exc.name or exc}); install the 'gui' extra "
            "(pip install 'morag-worker[gui]') or run headless with --no-gui",
            ExitCode.CONFIG,
        ) from None
    code: int = run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The command line (DESIGN §9): argument parsing and the headless verbs, without Qt."""

from morag_worker.core.cli.errors import CliError, ExitCode
from morag_worker.core.cli.parser import build_parser, dispatch

__all__ = ["CliError", "ExitCode", "build_parser", "dispatch"]

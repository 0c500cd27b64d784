"""The command line (DESIGN §9): argument parsing and the headless verbs, without Qt."""

from .errors import CliError, ExitCode, sentence
from .parser import build_parser, dispatch

__all__ = ["CliError", "ExitCode", "build_parser", "dispatch", "sentence"]

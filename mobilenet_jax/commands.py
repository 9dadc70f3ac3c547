"""How the commands (classify, export) end on a user's mistake: one line on stderr, exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from mobilenet_jax.interop.pretrained import NoPreprocessingError

# What the commands catch and print as one line: their users' mistakes, named by the code that
# meets them (a KeyError names a missing weight; an ImportError a missing optional package).
COMMAND_ERRORS = (ValueError, OSError, KeyError, ImportError)


class CommandParser(argparse.ArgumentParser):
    """The commands' flags: a flag that does not parse ends the command in one line on stderr,
    exit status 2 (argparse's own status), without the usage text."""

    def error(self, message: str) -> NoReturn:
        """Print `message` as one line pointing to --help, and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def exit_for_command(prog: str, error: Exception) -> NoReturn:
    """End the command `prog` after a mistake in its use: `error` as one line on stderr (a
    KeyError's text without the quotes its str() adds, a missing preprocessing with the commands'
    flags), exit status 2."""
    if isinstance(error, NoPreprocessingError):
        error = error.on_command_line()
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    print(f"{prog}: error: {' '.join(str(text).split())}", file=sys.stderr)
    raise SystemExit(2)

"""The one base class of every error a user can fix, and how stage CLIs report it.

Such errors already say what is wrong and what to do; a stack trace would only
bury that line, so the command-line entry points print it alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class PipelineError(ValueError):
    """Bad input, parameters or environment, with a message that names the fix."""


def run_cli(main: Callable[[], int]) -> int:
    """Run a stage's ``main``; report a ``PipelineError`` as one line on stderr, exit status 2."""
    try:
        return main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

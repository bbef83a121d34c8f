"""The one base class of every error a user can fix.

Such an error says what is wrong and what to do about it, naming the file or
parameter; ``pipeline.common.cli`` prints it as one line, without a stack trace.
"""

from __future__ import annotations


class PipelineError(ValueError):
    """Bad input, parameters or environment, with a message that names the fix."""

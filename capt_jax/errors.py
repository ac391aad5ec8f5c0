"""The one base class of every user mistake capt_jax reports.

A CaptError says what is wrong and where (the file, config key, record or checkpoint) so that it can be fixed
by hand; the command line turns it into a single `error: ...` line and exit code 2 (`capt_jax.cli.run`).
Anything else that escapes is a bug in capt_jax and keeps its traceback.
"""


class CaptError(Exception):
    """A mistake in what the user gave: a config, a file, a record, a checkpoint, a model folder."""


class ConfigError(CaptError, ValueError):
    """A config value that cannot run: the message names the key (and the file when there is one)."""


class MissingFileError(CaptError, FileNotFoundError):
    """A file or folder the user pointed at (or that a default needs) is not there; the message names it."""


class Interrupted(Exception):  # noqa: N818 - not an error: the run stopped as asked and will resume
    """A run stopped by a signal after saving, so rerunning the same command resumes it; the command line exits
    with `exit_code` (the shell's 128 + signal number)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def names_cudnn_failure(message: str) -> bool:
    """Whether an error's text says that cuDNN failed, and not that memory ran out: an out-of-memory report lists
    the largest buffers, cuDNN's among them, and XLA's attention would need more memory, not less."""
    text = message.lower()
    return "cudnn" in text and "resource_exhausted" not in text and "out of memory" not in text

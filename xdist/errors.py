"""Errors a user causes and can fix, and how the command line shows them.

Every failure caused by what a user gave us — a config file, a data path, a checkpoint directory, a
launch option — is raised as a :class:`UserError` (or a subclass). Its message is one short paragraph:
what is wrong, where (file, field, line, rank), what to do. The CLI prints that paragraph and exits
with :data:`EXIT_USER_ERROR` instead of showing a traceback; ``--debug`` or ``XDIST_DEBUG=1`` shows the
traceback too. Anything else is a bug and keeps its traceback.

Subclasses also derive from the built-in exception a caller would naturally catch (``ValueError`` for
bad values, ``FileNotFoundError`` for missing paths), so code written against those keeps working.

This module is the root of the import graph: it imports nothing from xdist.
"""

from __future__ import annotations

import os

EXIT_USER_ERROR = 2
"""Exit status of a command stopped by a :class:`UserError` (argparse uses 2 for bad arguments too)."""


class UserError(Exception):
    """A failure the user can fix; ``str(error)`` is one paragraph: what is wrong, where, what to do."""


class ConfigValueError(UserError, ValueError):
    """A value the user chose (config field, option, environment variable) is invalid."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or directory the user pointed at (data, tokenizer, checkpoint, run) does not exist or is incomplete."""

    def __str__(self) -> str:  # FileNotFoundError's default str() prefixes "[Errno ...]" when given errno args
        return str(self.args[0]) if self.args else ""


class RunExistsError(UserError, FileExistsError):
    """An output directory already holds a run that the command would overwrite."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class OfflineError(UserError, ConnectionError):
    """Something must be downloaded but the user asked for offline operation (``--offline``, ``HF_HUB_OFFLINE``)."""


def debug_enabled() -> bool:
    """True when tracebacks are wanted (``XDIST_DEBUG`` set to anything but ``''``/``0``/``false``)."""
    return os.environ.get("XDIST_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def one_paragraph(error: BaseException) -> str:
    """``error``'s message as one paragraph: blank lines collapsed, surrounding whitespace stripped."""
    text = str(error).strip() or type(error).__name__
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())

"""The project's error classes and the one error boundary every ``mrgrpo`` command runs inside.

Expected errors are a user's to fix; they print ONE message (what is wrong, which field or file,
and the fix) and exit non-zero, without a traceback:

* :class:`MrgrpoError` and its subclasses: :class:`UsageError` (command-line arguments),
  :class:`CheckpointError` (a damaged or missing checkpoint file), :class:`DataError` (a data or
  prompt file that cannot be used), and, defined next to the code that raises them,
  ``mrgrpo.config.RecipeError`` and ``mrgrpo.registry.RegistryError``;
* ``OSError`` naming a file (missing, unreadable, a folder where a file is expected, disk full),
  ``UnicodeDecodeError`` (a file that is not UTF-8 text), ``ModuleNotFoundError`` (an optional package);
* out of memory (CUDA or host; the fix: smaller micro-batches or images), an address in use;
* Ctrl-C (exit status 130).

Anything else is a bug: its traceback is shown with a line saying how to report it. ``--debug``
(or ``MRGRPO_DEBUG=1``) shows the traceback of expected errors too.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import TextIO

#: exit status of an expected error (argparse uses 2 for bad arguments too)
EXIT_ERROR = 2
#: exit status of an unexpected error (a bug)
EXIT_BUG = 1
#: exit status after Ctrl-C (128 + SIGINT)
EXIT_INTERRUPTED = 130

REPORT_LINE = (
    "This is a bug in mrgrpo, not in your input. Please report it with the command you ran, the recipe "
    "and the traceback above (re-run with --debug or MRGRPO_DEBUG=1 for more detail)."
)


class MrgrpoError(Exception):
    """An expected error: the message names the thing that is wrong and how to fix it."""


class RecipeError(MrgrpoError, ValueError):
    """A recipe that cannot run; the message names the field, the value and the fix."""


class UsageError(MrgrpoError, ValueError):
    """A command-line argument that cannot work (e.g. ``--steps 0``, ``--out`` naming a folder)."""


class DataError(MrgrpoError, ValueError):
    """A data, prompt or image file that exists but cannot be used."""


class CheckpointError(MrgrpoError, RuntimeError):
    """A checkpoint that is missing, incomplete or damaged; the message names the file."""


def debug_enabled(flag: bool = False) -> bool:
    """``--debug`` given, or ``MRGRPO_DEBUG`` set to something other than ``""``/``0``/``false``."""
    env = os.environ.get("MRGRPO_DEBUG", "").strip().lower()
    return bool(flag) or env not in ("", "0", "false", "no", "off")


_DISK_ERRNOS = (28, 30)  # ENOSPC, EROFS


def _is_oom(exc: BaseException) -> bool:
    text = str(exc)
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or "CUDA out of memory" in text
        or (isinstance(exc, RuntimeError) and "can't allocate memory" in text)
    )


def describe_expected(exc: BaseException) -> str | None:
    """The one-line (or few-line) message of an expected error, or None for a bug."""
    if isinstance(exc, MrgrpoError):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return (
            f"the Python package providing {exc.name!r} is not installed ({exc}). Fix: install it "
            "(`pip install -e .[clip]` / `.[ocr]` for the optional rewards, see the README)."
        )
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}). Fix: pass a UTF-8 text file "
            "(recipes are YAML, prompt files .txt/.jsonl/.csv)."
        )
    if isinstance(exc, ConnectionError):
        return (
            f"connection failed: {exc}. Fix: check that the server (a reward server, the judge) is running and "
            "that its URL in the recipe is right."
        )
    if isinstance(exc, OSError) and (exc.filename is not None or exc.errno in _DISK_ERRNOS):
        return describe_os_error(exc)
    if _is_oom(exc):
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        return (
            f"out of memory ({first}). Fix: lower train.micro_batch_size, rl.height/rl.width (--height/--width) or "
            "rl.group_size, or enable train.gradient_checkpointing."
        )
    if isinstance(exc, OSError) and exc.errno == 98:  # EADDRINUSE
        return f"{exc.strerror or exc}. Fix: choose another --port, or stop what is listening there."
    return None


def describe_os_error(exc: OSError, what: str = "file") -> str:
    """``cannot read PATH: reason. Fix: ...`` for the usual file errors."""
    import errno

    name = exc.filename if exc.filename is not None else "(unnamed)"
    reason = exc.strerror or str(exc)
    fixes: dict[int | None, str] = {  # exc.errno may be None: then the generic fix
        errno.ENOENT: "check the path (relative recipe paths are taken from the recipe's folder)",
        errno.EACCES: "give yourself permission to read/write it (chmod) or use another path",
        errno.EPERM: "give yourself permission to read/write it (chmod) or use another path",
        errno.EISDIR: "pass a file, not a folder",
        errno.ENOTDIR: "a component of the path is a file, not a folder: choose another path",
        errno.ENOSPC: "free disk space or write somewhere else",
        errno.EROFS: "write somewhere else: the file system is read-only",
        errno.EEXIST: "remove it or choose another path",
    }
    fix = fixes.get(exc.errno, "check the path and its permissions")
    return f"{what} {name}: {reason}. Fix: {fix}."


def run_guarded(func: Callable[[], int], *, debug: bool = False, stderr: TextIO | None = None) -> int:
    """Run a command, turning exceptions into exit codes and messages (see the module docstring).

    Returns the command's exit status, :data:`EXIT_ERROR` for an expected error,
    :data:`EXIT_INTERRUPTED` for Ctrl-C and :data:`EXIT_BUG` for anything else.
    """
    err = stderr or sys.stderr
    show_tb = debug_enabled(debug)
    try:
        return int(func() or 0)
    except KeyboardInterrupt:
        if show_tb:
            traceback.print_exc(file=err)
        print(
            "interrupted (Ctrl-C). A run resumes from its last checkpoint with `mrgrpo train RECIPE --resume`.",
            file=err,
        )
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - this IS the boundary
        message = describe_expected(exc)
        if message is not None:
            if show_tb:
                traceback.print_exc(file=err)
            print(f"error: {message}", file=err)
            return EXIT_ERROR
        traceback.print_exc(file=err)
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=err)
        print(REPORT_LINE, file=err)
        return EXIT_BUG

"""What the verbs of the `gpt2` command share: user errors as one line with exit code 2."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Iterator

from gpt2_lightning.errors import Gpt2LightningError

# OS errors a user causes: a path that is missing, taken or not theirs, a full or read-only disk.
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG}


def is_user_error(err: BaseException) -> bool:
    """The project's own errors, the OS errors a user causes, and Lightning's settings errors;
    anything else is a bug and keeps its traceback."""
    if isinstance(err, (Gpt2LightningError, *USER_OS_ERRORS)):
        return True
    if isinstance(err, OSError) and err.errno in USER_ERRNOS:
        return True
    # Only raised where lightning was imported (not in chat).
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    return lightning is not None and isinstance(err, lightning.MisconfigurationException)


def root_cause(err: BaseException) -> BaseException:
    """The project's own error in the chain of causes (it carries the advice), else the
    innermost cause (Hydra wraps constructor errors in ``InstantiationException``)."""
    while not isinstance(err, Gpt2LightningError) and err.__cause__ is not None:
        err = err.__cause__
    return err


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Print a user error as ``error: ...`` and exit 2; ``GPT2_LIGHTNING_DEBUG=1`` re-raises.
    Either way the error also goes to the log files (a run's ``train.log``)."""
    try:
        yield
    except Exception as err:
        cause = root_cause(err)
        if not is_user_error(cause) or os.environ.get("GPT2_LIGHTNING_DEBUG"):
            _to_log_files(logging.ERROR, "the run failed", err)
            raise
        message = str(cause) if not isinstance(cause, OSError) or not cause.filename else \
            f"{cause.filename}: {cause.strerror}"
        _to_log_files(logging.ERROR, f"error: {message}")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _to_log_files(level: int, message: str, err: BaseException | None = None) -> None:
    """``message`` (and the traceback of ``err``) into the log's files only: the console shows it once."""
    exc_info = (type(err), err, err.__traceback__) if err is not None else None
    record = logging.LogRecord("gpt2_lightning", level, __file__, 0, message, None, exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)

"""What the verbs of the `gpt2` command share: user errors as one line with exit code 2; a console
that may close under them; their heavy imports without the garbage collector's passes, and their
exit without the interpreter's teardown."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import gc
import io
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NoReturn

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


class OutputThatMayClose(io.TextIOBase):
    """A console stream that writes nowhere once its reader has gone (the other end of a pipe
    closed: ``| tee`` ended by the same Ctrl-C, ``| head``) instead of raising ``BrokenPipeError``
    into the step that happened to print: the run goes on, or stops as asked, and keeps its
    checkpoint."""

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._write_nowhere()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._write_nowhere()

    def _write_nowhere(self) -> None:
        # The descriptor too, so that what is still buffered, and the flush at exit, go nowhere quietly.
        self.reader_gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def survive_a_closed_console() -> None:
    """``sys.stdout`` and ``sys.stderr``, and the log handlers that write to them, as
    ``OutputThatMayClose``."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, OutputThatMayClose):
            continue
        safe = OutputThatMayClose(stream)
        setattr(sys, name, safe)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                handler.setStream(safe)


def escaped(path: Path) -> str:
    """``path`` inside a single-quoted Hydra override value."""
    return str(path).replace("\\", "\\\\").replace("'", "\\'")


def override_key(override: str) -> str:
    """``+trainer.max_epochs=3`` -> ``trainer.max_epochs``."""
    return override.split("=", 1)[0].lstrip("+~")


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off inside, on again after (unless the caller had it off).

    For a verb's imports: torch, Lightning and their dependencies make millions of objects that
    live as long as the process, and each full collection while they load scans that growing heap
    again: importing the training job took 6.0-7.5 s with the collector on, 4.3-5.2 s off and 0.5 s
    for one full pass afterwards (AMD EPYC Zen 4); `train.py` logged its first line after 6.5-7.1 s,
    now 5.7-6.7. Imports make little garbage; the next pass takes it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def exit_without_teardown(program: Callable[[], int | None]) -> NoReturn:
    """Run ``program`` and end the process with its exit code (``sys.exit`` inside it included) the
    moment its threads have finished, its exit handlers have run and its output is flushed, without
    the interpreter's teardown: that teardown's garbage collection over every object torch,
    Lightning and their dependencies made took 1.7-1.9 s after each command (AMD EPYC Zen 4), only
    to free memory the operating system frees anyway. An exception other than ``SystemExit`` is
    left to Python: its traceback, exit code 1 and the teardown."""
    try:
        code = program()
    except SystemExit as stop:
        code = stop.code
    if code is not None and not isinstance(code, int):  # as Python treats sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # logging's flush, tempfile's and multiprocessing's clean-ups, ...
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a console already gone or closed
            stream.flush()
    if os.name == "posix":  # and C's own buffers (oneDNN's verbose lines, say)
        ctypes.CDLL(None).fflush(None)
    os._exit(code or 0)

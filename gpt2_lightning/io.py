"""Atomic writes: a file or a folder appears whole under its name, or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it back at once
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: changing it per write would race other threads
TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """Write to a temporary file beside ``path``, then rename it over ``path``.

    If the block raises (or the process dies), ``path`` keeps its old content and the
    temporary file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path.parent)) from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename in (tmp, None):  # name the file the user knows
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into, renamed to ``out`` when the block
    succeeds (an old ``out`` goes only then); on failure it is removed and ``out`` is untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700; give the folder the usual mode
        if not out.exists():
            tmp.rename(out)
            return
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        try:
            tmp.rename(out)
        except OSError:
            old.rename(out)
            raise
        shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_RAISE = object()


def read_json(path: str | os.PathLike, missing: Any = _RAISE, invalid: Any = _RAISE) -> Any:
    """The JSON value in ``path``; ``missing`` where the file cannot be read (no such file, a
    folder, no permission) and ``invalid`` where it is not JSON, when given: else the error
    (``OSError``, ``ValueError``) as it is."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        if missing is _RAISE:
            raise
        return missing
    try:
        return json.loads(text)
    except ValueError:
        if invalid is _RAISE:
            raise
        return invalid


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_write(path) as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writes killed midway left under ``folder`` (a checkpoint
    write killed by SIGKILL leaves a whole checkpoint's worth); return what was removed. Call
    it only where no write can be under way."""
    removed = []
    for tmp in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed

"""Robust HTTP downloads: stream, resume, retry, verify, then move into place atomically.

A finished file only ever appears at ``dest`` after its size and checksum were checked;
until then the bytes live in ``dest`` + ``.part``, which a later call resumes with an HTTP
Range request.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import requests
from tqdm.auto import tqdm
from urllib3.exceptions import NewConnectionError

from gpt2_lightning.errors import DownloadError

CHUNK_BYTES = 1 << 16



def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, size: int | None = None,
             retries: int = 5, backoff: float = 1.0, timeout: float = 30.0,
             progress: bool = True) -> Path:
    """Fetch ``url`` into ``dest`` unless it is already there; return ``dest``.

    Connection errors, dropped streams and 5xx answers are retried ``retries`` times with
    exponential back-off, each retry resuming where the partial file ends. ``sha256`` and
    ``size`` (when given) are verified before the file is moved into place. Processes that ask
    for the same ``dest`` at once (DDP ranks, parallel jobs) wait while one of them downloads.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.parent):  # one process downloads, the others wait
        if not dest.is_file():
            _download(url, dest, sha256, size, retries, backoff, timeout, progress)
    return dest


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (no lock file to leave behind; released when the
    process dies). Without ``fcntl`` (Windows) every process downloads alone, as before."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def _download(url: str, dest: Path, sha256: str | None, size: int | None, retries: int, backoff: float,
              timeout: float, progress: bool) -> None:
    part = dest.with_name(dest.name + ".part")
    manual = f"download it by hand and place it at {dest}"
    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, timeout, progress)
            break
        except _Permanent as err:
            part.unlink(missing_ok=True)
            raise DownloadError(f"cannot download {url}: {err}; {manual}") from None
        except requests.ConnectionError as err:
            if _could_not_connect(err):  # offline or no such host: retrying will not help
                raise DownloadError(f"cannot download {url}: {_reason(err)}; check the network "
                                    f"or {manual}") from None
            if attempt == retries:
                raise DownloadError(f"cannot download {url} after {retries + 1} attempts "
                                    f"({_reason(err)}); {manual}") from None
            time.sleep(backoff * 2 ** attempt)
        except (requests.Timeout, requests.exceptions.ChunkedEncodingError, _Transient) as err:
            if attempt == retries:
                raise DownloadError(f"cannot download {url} after {retries + 1} attempts "
                                    f"({_reason(err)}); {manual}") from None
            time.sleep(backoff * 2 ** attempt)
    _verify(part, url, sha256, size)
    os.replace(part, dest)


class _Transient(Exception):
    """A server error worth retrying."""


class _Permanent(Exception):
    """A client error (404, 403 ...) no retry will fix."""


def _could_not_connect(err: requests.ConnectionError) -> bool:
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(reason, NewConnectionError)


def _reason(err: Exception) -> str:
    if isinstance(err, requests.ConnectionError) and _could_not_connect(err):
        return "no connection: the host is unknown, unreachable or refused the connection"
    if isinstance(err, requests.ConnectionError):
        return "the connection broke"
    if isinstance(err, requests.Timeout):
        return "timed out"
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return "the connection dropped mid-stream"
    return str(err)


def _fetch_into(url: str, part: Path, timeout: float, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, stream=True, timeout=timeout, headers=headers) as response:
        if response.status_code == 416:  # the partial file already holds every byte
            return
        if response.status_code >= 500:
            raise _Transient(f"HTTP {response.status_code} {response.reason}")
        if response.status_code >= 400:
            raise _Permanent(f"HTTP {response.status_code} {response.reason}")
        if have and response.status_code != 206:  # server ignored Range: start over
            have = 0
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        expected_end = total
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
            disable=not progress, leave=False,
        ) as bar:
            for chunk in response.iter_content(CHUNK_BYTES):
                f.write(chunk)
                bar.update(len(chunk))
    if expected_end is not None and part.stat().st_size < expected_end:
        raise _Transient(f"stream ended at byte {part.stat().st_size} of {expected_end}")


def _verify(part: Path, url: str, sha256: str | None, size: int | None) -> None:
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink()
        raise DownloadError(f"{url}: expected {size} bytes, got {actual_size}; the partial "
                            f"download was removed, try again")
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink()
            raise DownloadError(f"{url}: sha256 mismatch (expected {sha256}, got {actual}); the "
                                f"corrupt download was removed, try again or check the source")


def unreachable_hub(timeout: float = 5.0) -> tuple[str, OSError] | None:
    """The Hugging Face hub's host and why it cannot be reached now, at once rather than after
    the hub client's retries; None when it can, or when ``HF_HUB_OFFLINE`` says to read the
    local Hugging Face cache instead."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return None
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as err:
        return host, err
    return None

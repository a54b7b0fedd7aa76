import hashlib
import os
import socket
import subprocess
import sys

import pytest

from gpt2_lightning.errors import DownloadError
from gpt2_lightning.fetch import download
from tests.http_server import Faults, FileServer

BODY = os.urandom(3 * (1 << 20) + 12345)
SHA = hashlib.sha256(BODY).hexdigest()


def test_download_streams_verifies_and_places_the_file(tmp_path):
    with FileServer({"/w.bin": BODY}) as server:
        dest = download(f"{server.url}/w.bin", tmp_path / "sub" / "w.bin", sha256=SHA, size=len(BODY),
                        progress=False)
        assert dest.read_bytes() == BODY
        assert not (tmp_path / "sub" / "w.bin.part").exists()
        # A finished file is not fetched again.
        download(f"{server.url}/w.bin", dest, progress=False)
        assert len(server.faults.requests) == 1


def test_dropped_connection_resumes_with_range_and_is_byte_identical(tmp_path):
    faults = Faults(drop_after=1_000_000)
    with FileServer({"/w.bin": BODY}, faults) as server:
        dest = download(f"{server.url}/w.bin", tmp_path / "w.bin", sha256=SHA, backoff=0.01, progress=False)
    assert dest.read_bytes() == BODY
    first, second = (r["range"] for r in faults.requests)
    assert first is None
    resumed_at = int(second.removeprefix("bytes=").removesuffix("-"))
    assert 500_000 < resumed_at <= 1_000_000


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path):
    (tmp_path / "w.bin.part").write_bytes(BODY[:777])
    with FileServer({"/w.bin": BODY}) as server:
        download(f"{server.url}/w.bin", tmp_path / "w.bin", sha256=SHA, progress=False)
        assert server.faults.requests[0]["range"] == "bytes=777-"
    assert (tmp_path / "w.bin").read_bytes() == BODY


def test_server_errors_are_retried(tmp_path):
    faults = Faults(server_errors=2)
    with FileServer({"/w.bin": BODY}, faults) as server:
        download(f"{server.url}/w.bin", tmp_path / "w.bin", sha256=SHA, backoff=0.01, progress=False)
    assert len(faults.requests) == 3


def test_persistent_server_errors_give_up_with_the_url(tmp_path):
    with FileServer({"/w.bin": BODY}, Faults(server_errors=99)) as server:
        with pytest.raises(DownloadError, match=rf"{server.url}/w.bin after 3 attempts \(HTTP 503"):
            download(f"{server.url}/w.bin", tmp_path / "w.bin", retries=2, backoff=0.01, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_bytes_fail_the_checksum_and_leave_no_file(tmp_path):
    with FileServer({"/w.bin": BODY}, Faults(corrupt=True)) as server:
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            download(f"{server.url}/w.bin", tmp_path / "w.bin", sha256=SHA, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_is_reported_and_removed(tmp_path):
    with FileServer({"/w.bin": BODY}) as server:
        with pytest.raises(DownloadError, match=f"expected {len(BODY) + 1} bytes, got {len(BODY)}"):
            download(f"{server.url}/w.bin", tmp_path / "w.bin", size=len(BODY) + 1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_404_names_the_url_and_the_manual_fix(tmp_path):
    with FileServer({}) as server:
        with pytest.raises(DownloadError) as info:
            download(f"{server.url}/missing.bin", tmp_path / "w.bin", progress=False)
    assert f"cannot download {server.url}/missing.bin: HTTP 404" in str(info.value)
    assert f"place it at {tmp_path / 'w.bin'}" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_connection_refused_fails_at_once_with_the_url(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w.bin"
    with pytest.raises(DownloadError, match=f"cannot download {url}: no connection"):
        download(url, tmp_path / "w.bin", backoff=60, progress=False)  # no back-off wait


def test_processes_downloading_the_same_file_at_once_fetch_it_once(tmp_path):
    faults = Faults(seconds_per_mib=0.3)
    dest = tmp_path / "w.bin"
    code = "import sys; from gpt2_lightning.fetch import download; download(sys.argv[1], sys.argv[2], " \
           f"sha256='{SHA}', progress=False)"
    with FileServer({"/w.bin": BODY}, faults) as server:
        processes = [subprocess.Popen([sys.executable, "-c", code, f"{server.url}/w.bin", str(dest)],
                                      stderr=subprocess.PIPE, text=True) for _ in range(3)]
        errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], errors
    assert dest.read_bytes() == BODY
    assert faults.requests == [{"path": "/w.bin", "range": None}]

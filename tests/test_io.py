"""Writes around the page cache (``DirectFile``, what checkpoints are written through): the
file holds exactly the bytes written, whatever their sizes against the blocks and the buffer."""

from __future__ import annotations

import os

import pytest
import torch

from gpt2_lightning.io import DirectFile, atomic_write


@pytest.fixture
def direct_io(tmp_path, monkeypatch):
    """``O_DIRECT`` on ``tmp_path``, with a staging buffer of 3 blocks, so that small writes cross it."""
    fd = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT)
    supported = DirectFile.switch_to_direct(fd)
    os.close(fd)
    os.unlink(tmp_path / "probe")
    if not supported:
        pytest.skip("the file system of the test's folder does not take O_DIRECT")
    monkeypatch.setattr(DirectFile, "STAGING", 3 * DirectFile.ALIGNMENT)


@pytest.mark.parametrize("sizes", [[1], [4096], [5000, 7000, 1], [3 * 4096], [3 * 4096 + 1, 20_000, 4095]])
def test_a_direct_write_holds_exactly_the_bytes_written(tmp_path, direct_io, sizes):
    chunks = [os.urandom(size) for size in sizes]
    with atomic_write(tmp_path / "out.bin", binary=True, direct=True) as f:
        assert isinstance(f, DirectFile)
        for chunk in chunks:
            assert f.write(chunk) == len(chunk)
    assert (tmp_path / "out.bin").read_bytes() == b"".join(chunks)


def test_a_flush_midway_leaves_the_file_whole_so_far_and_writing_goes_on(tmp_path, direct_io):
    head, tail = os.urandom(5000), os.urandom(30_000)
    with atomic_write(tmp_path / "out.bin", binary=True, direct=True) as f:
        f.write(head)
        f.flush()
        assert os.fstat(f.fileno()).st_size == len(head)
        f.write(tail)
    assert (tmp_path / "out.bin").read_bytes() == head + tail


def test_a_checkpoint_written_directly_loads_as_saved(tmp_path, direct_io):
    state = {"w": torch.randn(1000, 7), "step": 12}
    with atomic_write(tmp_path / "direct.ckpt", binary=True, direct=True) as f:
        torch.save(state, f)
    with atomic_write(tmp_path / "cached.ckpt", binary=True) as f:
        torch.save(state, f)
    assert (tmp_path / "direct.ckpt").read_bytes() == (tmp_path / "cached.ckpt").read_bytes()
    loaded = torch.load(tmp_path / "direct.ckpt", weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 12

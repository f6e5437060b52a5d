"""Atomic writes: whole files only, ordinary permissions."""
import os
import stat

import pytest

from ddo_lib.pipeline import paths


def test_atomic_write_gives_ordinary_permissions_and_leaves_no_temporaries(tmp_path):
    mask = os.umask(0o022)
    try:
        path = paths.atomic_write_bytes(tmp_path / "sub" / "a.json", b"{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_bytes() == b"{}"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = paths.atomic_write_bytes(tmp_path / "a.txt", b"old")
    with pytest.raises(TypeError):
        paths.atomic_write_bytes(path, "not bytes")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]

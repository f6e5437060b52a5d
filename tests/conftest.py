"""Shared pytest fixtures."""
import pathlib
import socket
import sys

import pytest
import torch

from ddo_lib.eval import fid

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "official"
sys.path.insert(0, str(REPO / "tests" / "support"))  # helpers shared by tests (official-format writers)


@pytest.fixture(scope="session")
def official_fixture():
    """Load an official numerical fixture by file name (weights_only)."""

    def load(name: str) -> dict:
        return torch.load(FIXTURES / name, weights_only=True)

    return load


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def inception_weights_file(tmp_path_factory) -> pathlib.Path:
    """A random-weight Inception weights file in torch-fidelity's format."""
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(fid.random_inception_state(), path)
    return path


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (MASTER_PORT of a 2-process gloo test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""Shared pytest fixtures."""
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "official"


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

"""Fixtures of the VAR tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread avoids oneDNN's per-shape multi-thread start-up cost (seconds on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

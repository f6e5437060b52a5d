"""Shared pytest fixtures."""
import pathlib
import socket
import sys

import pytest
import torch

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


def random_inception_state() -> dict:
    """A random-weight state dict in torch-fidelity's inception-v3-compat layout, built from its own blocks
    (the real weights file cannot be downloaded here; the layout and code path are what is tested)."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf

    torch.manual_seed(0)
    net = torch.nn.Module()
    layout = [("Conv2d_1a_3x3", tf.BasicConv2d(3, 32, kernel_size=3, stride=2)),
              ("Conv2d_2a_3x3", tf.BasicConv2d(32, 32, kernel_size=3)),
              ("Conv2d_2b_3x3", tf.BasicConv2d(32, 64, kernel_size=3, padding=1)),
              ("Conv2d_3b_1x1", tf.BasicConv2d(64, 80, kernel_size=1)),
              ("Conv2d_4a_3x3", tf.BasicConv2d(80, 192, kernel_size=3)),
              ("Mixed_5b", tf.InceptionA(192, pool_features=32)), ("Mixed_5c", tf.InceptionA(256, pool_features=64)),
              ("Mixed_5d", tf.InceptionA(288, pool_features=64)), ("Mixed_6a", tf.InceptionB(288)),
              ("Mixed_6b", tf.InceptionC(768, channels_7x7=128)), ("Mixed_6c", tf.InceptionC(768, channels_7x7=160)),
              ("Mixed_6d", tf.InceptionC(768, channels_7x7=160)), ("Mixed_6e", tf.InceptionC(768, channels_7x7=192)),
              ("Mixed_7a", tf.InceptionD(768)), ("Mixed_7b", tf.InceptionE_1(1280)), ("Mixed_7c", tf.InceptionE_2(2048)),
              ("fc", torch.nn.Linear(2048, 1008))]
    for name, module in layout:
        net.add_module(name, module)
    return net.state_dict()


@pytest.fixture(scope="session")
def inception_weights_file(tmp_path_factory) -> pathlib.Path:
    """A random-weight Inception weights file in torch-fidelity's format."""
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(random_inception_state(), path)
    return path


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (MASTER_PORT of a 2-process gloo test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

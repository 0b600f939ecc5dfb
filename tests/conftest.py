import sys

import numpy as np
import pytest

from idx import make_digits, write_config


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def setup(tmp_path):
    """The toy digit set and the tiny config in `tmp_path`, and a runs folder beside them."""
    data = make_digits(tmp_path / "data")
    config = write_config(tmp_path / "tiny.yaml")
    return dict(data=str(data), config=config, runs=str(tmp_path / "runs"), tmp=tmp_path)


@pytest.fixture(autouse=True)
def torch_on_one_thread():
    """PyTorch's own threads spin while they wait: beside another busy process (the other
    test worker, a training) a comparison against it took ten times as long. The tests
    need its numbers, not its speed."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)

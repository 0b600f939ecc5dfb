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

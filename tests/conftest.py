import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("DIFFLINALG_SLOW") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow or DIFFLINALG_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(2026)
    yield


def cuda_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("CUDA device not available")
    return torch.device("cuda")

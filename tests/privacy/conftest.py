import pytest
import torch

from confide.identity import Identity

# The machine's few cores are shared: one thread per test process is faster overall.
torch.set_num_threads(1)


@pytest.fixture
def identity() -> Identity:
    return Identity.generate("a")

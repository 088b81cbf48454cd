import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # test helpers (brute_force, tiny_lm) import by name
torch_threads = os.environ.get("BAYES_TEACH_TEST_THREADS")
if torch_threads:
    import torch

    torch.set_num_threads(int(torch_threads))

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and do not stall when other processes share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

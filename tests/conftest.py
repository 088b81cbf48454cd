import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # test helpers (brute_force, tiny_lm) import by name
torch_threads = os.environ.get("BAYES_TEACH_TEST_THREADS")
if torch_threads:
    import torch

    torch.set_num_threads(int(torch_threads))

"""torch's thread count for a causal LM on a CPU (``eval.lm.threads``): the faster of one thread and the
default, more threads kept only when clearly faster, a count the user set left alone."""
import pytest
import torch

from eval.lm import threads as lm_threads


@pytest.fixture()
def two_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def tiny_model(tmp_path):
    from tiny_lm import build_model, build_tokenizer

    return build_model(build_tokenizer())


@pytest.mark.parametrize("one, two, chosen", [(1.0, 0.5, 2), (1.0, 0.8, 2), (1.0, 0.81, 1), (0.2, 0.9, 1)])
def test_more_threads_are_kept_only_when_clearly_faster(two_threads, tiny_model, monkeypatch, one, two, chosen):
    monkeypatch.setattr(lm_threads, "_forward_seconds",
                        lambda model, ids: {1: one, 2: two}[torch.get_num_threads()])
    lines = []
    assert lm_threads.choose_cpu_threads(tiny_model, lines.append) == chosen == torch.get_num_threads()
    assert lines == [f"torch threads: {chosen} (a 256-token forward took {one:.2f} s on 1 thread, {two:.2f} s on 2; "
                     "more threads must be 1.25x faster; OMP_NUM_THREADS overrides)"]


def test_clearly_slower_threads_are_timed_once(two_threads, tiny_model, monkeypatch):
    counts = []

    def timed(model, ids):
        counts.append(torch.get_num_threads())
        return {1: 1.0, 2: 3.0}[counts[-1]]

    monkeypatch.setattr(lm_threads, "_forward_seconds", timed)
    assert lm_threads.choose_cpu_threads(tiny_model) == 1
    assert counts == [1] * (1 + lm_threads.PROBE_REPEATS) + [2]  # a warm-up and the repeats on 1 thread, then one


def test_the_real_timing_keeps_one_of_the_two_counts(two_threads, tiny_model):
    timed = []
    chosen = lm_threads.choose_cpu_threads(tiny_model, timed.append, tokens=16, repeats=1)
    assert chosen in (1, 2) and torch.get_num_threads() == chosen and len(timed) == 1


def test_a_thread_count_the_user_set_is_kept(two_threads, tiny_model, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(lm_threads, "_forward_seconds", lambda *args: pytest.fail("timed despite OMP_NUM_THREADS"))
    assert lm_threads.choose_cpu_threads(tiny_model, pytest.fail) == 2 == torch.get_num_threads()

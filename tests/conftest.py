import os

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


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """A tiny embedded-student-like model saved to disk (tests/tiny_student_fixtures.py)."""
    from tiny_student_fixtures import save_tiny_student

    return save_tiny_student(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Eight 2-round hotel teaching conversations as a chat JSONL file."""
    from tiny_student_fixtures import hotel_conversation, write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", [hotel_conversation(s) for s in range(8)])


def pytest_terminal_summary(terminalreporter):
    """The size of the generated bad-input suite (tests/test_bad_input.py), when it ran."""
    ran = {report.nodeid for reports in terminalreporter.stats.values() for report in reports
           if getattr(report, "nodeid", "").startswith("tests/test_bad_input.py::test_bad_input[")}
    if ran:
        from test_bad_input import CASES

        terminalreporter.write_line(f"bad-input suite: {len(CASES)} cases generated from the command tree "
                                    f"({len(ran)} run)")

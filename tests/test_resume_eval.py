"""Resumable evaluation (eval/runner/store.py): killed at any moment, --resume writes the uninterrupted report."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--assistant", "bayesian", "--users", "7", "--heldout", "6", "--chunk-users", "2"]  # chunks of 2, 2, 2, 1

# Runs the CLI with one function replaced by one that SIGKILLs the process at a chosen moment.
HARNESS = r'''
import os, signal, sys
import eval.protocol, eval.runner.store
from cli import main

where, count = sys.argv[1], int(sys.argv[2])
calls = [0]

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

if where == "mid-chunk":  # inside the protocol of chunk number `count` (0-based): earlier chunks are saved
    original = eval.protocol.play_dialogues
    def play_dialogues(*args, **kwargs):
        if calls[0] == count:
            kill()
        calls[0] += 1
        return original(*args, **kwargs)
    eval.protocol.play_dialogues = play_dialogues
elif where == "mid-write":  # half of chunk file number `count` written to its temporary file
    original = eval.runner.store.atomic_write_bytes
    def atomic_write_bytes(path, data):
        if calls[0] == count:
            with open(os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".x1y2.tmp"), "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            kill()
        calls[0] += 1
        return original(path, data)
    eval.runner.store.atomic_write_bytes = atomic_write_bytes
sys.argv = ["cli.py"] + sys.argv[3:]
main()
'''


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _cli(args, out, check=True):
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "evaluate", *args, "--out", str(out)],
                            capture_output=True, text=True, env=_env(), timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _report(out):
    report = json.loads((out / "report.json").read_text())
    report.pop("created")
    return report


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    _cli(ARGS, out)
    return _report(out)


def _killed(tmp_path, where, count):
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(harness), where, str(count), "evaluate", *ARGS, "--out", str(out)],
                            capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert result.returncode == -9, result.stderr[-3000:]  # killed by SIGKILL
    assert not (out / "report.json").exists()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mid-chunk", "mid-write"])
def test_a_killed_evaluation_resumes_to_the_uninterrupted_report(tmp_path, uninterrupted, where):
    out = _killed(tmp_path, where, 2)  # chunks 0 and 1 finished; killed in (or writing) chunk 2
    partial = out / "partial"
    assert sorted(p.name for p in partial.glob("chunk-*.pt")) == ["chunk-00000.pt", "chunk-00001.pt"]
    assert (out / "evaluate.lock").exists()  # left by the killed process: taken over, its pid is gone
    if where == "mid-write":
        assert list(partial.glob(".chunk-00002.pt.*.tmp"))  # the half-written file
    result = _cli([*ARGS, "--resume"], out)
    assert "resuming: 2 of 4 chunks finished, 2 to play" in result.stderr  # rework: the killed chunk only
    assert _report(out) == uninterrupted
    assert not partial.exists() and not (out / "evaluate.lock").exists()


def test_resume_refuses_other_arguments_and_names_them(tmp_path):
    killed = _killed(tmp_path, "mid-chunk", 1)  # started with --heldout 6; chunk 0 finished
    result = _cli(["--assistant", "bayesian", "--users", "7", "--heldout", "5", "--chunk-users", "2", "--resume"],
                  killed, check=False)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "was started with other arguments" in line and "heldout 6 there, 5 now" in line, line
    assert (killed / "partial" / "chunk-00000.pt").exists()  # nothing discarded


def test_resume_with_nothing_to_resume_says_so_and_which_flag_starts_fresh(tmp_path):
    result = _cli([*ARGS, "--resume"], tmp_path / "empty", check=False)
    assert result.returncode == 2
    assert "holds no partial evaluation to resume" in result.stderr and "--resume-if-partial" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "empty" / "evaluate.lock").exists()
    result = _cli([*ARGS, "--resume-if-partial"], tmp_path / "empty")  # asked to start fresh: it does
    assert (tmp_path / "empty" / "report.json").exists()


@pytest.mark.slow
def test_a_corrupt_chunk_is_named_and_the_others_are_kept(tmp_path, uninterrupted):
    out = _killed(tmp_path, "mid-chunk", 2)
    (out / "partial" / "chunk-00001.pt").write_bytes(b"not a chunk")
    result = _cli([*ARGS, "--resume"], out, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "chunk-00001.pt is corrupt" in lines[-1] and "Traceback" not in result.stderr
    assert (out / "partial" / "chunk-00000.pt").exists() and (out / "partial" / "chunk-00001.pt").exists()
    (out / "partial" / "chunk-00001.pt").unlink()  # as the message says: delete it and resume
    _cli([*ARGS, "--resume"], out)
    assert _report(out) == uninterrupted


def test_a_second_evaluation_into_the_same_folder_refuses(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "evaluate.lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")  # this test process: alive
    result = _cli(ARGS, out, check=False)
    assert result.returncode == 2
    assert f"being written by another evaluation (process {os.getpid()}" in result.stderr.strip().splitlines()[-1]
    assert not (out / "report.json").exists() and (out / "evaluate.lock").exists()


@pytest.mark.slow
def test_two_processes_resume_a_killed_evaluation(tmp_path, uninterrupted):
    out = _killed(tmp_path, "mid-chunk", 1)  # chunk 0 finished; chunks 1-3 left for two processes
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(ROOT / "cli.py"), "evaluate", *ARGS, "--resume", "--out", str(out)],
                            capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming: 1 of 4 chunks finished, 3 to play" in result.stderr
    report = _report(out)
    assert report.pop("extra") == {"processes": {"world_size": 2, "backend": "gloo"}}
    assert uninterrupted["extra"] == {} and report == {k: v for k, v in uninterrupted.items() if k != "extra"}


def test_differences_name_each_argument_and_cut_long_values_short():
    from eval.runner.store import differences

    old = {"heldout": 6, "users": list(range(100)), "seed": 0}
    new = {"heldout": 5, "users": list(range(1, 101)), "seed": 0}
    changed = differences(old, new)
    assert changed[0] == "heldout 6 there, 5 now"
    assert changed[1].startswith("users [0, 1, 2") and "..." in changed[1] and len(changed[1]) < 150
    assert len(changed) == 2

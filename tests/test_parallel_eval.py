"""Data-parallel evaluation (eval/runner): chunks of users and several processes give the one-process report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny_lm
from eval.assistants import BayesianAssistant, RandomAssistant
from eval.protocol import run_protocol, simulate_protocol_data
from eval.records import pick_argmax, user_rows
from eval.report import build_report
from eval.runner import Launch, LaunchError, play_users, split_evenly
from ppl_models import get_domain, pick_users
from ppl_models.rng import generator

ROOT = Path(__file__).resolve().parents[1]


def comparable(report: dict) -> dict:
    """A report without what may differ between equal evaluations: when it was made, how many processes."""
    report = dict(report, extra={k: v for k, v in report.get("extra", {}).items() if k != "processes"})
    report.pop("created")
    return report


def assert_reports_close(a: dict, b: dict, tolerance: float = 1e-5):
    """Equal except floats, which agree to ``tolerance`` (the floating-point effect of batching)."""
    def walk(x, y, where):
        if isinstance(x, float) or isinstance(y, float):
            assert x is not None and y is not None and abs(x - y) <= tolerance, (where, x, y)
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for key in x:
                walk(x[key], y[key], f"{where}.{key}")
        elif isinstance(x, list):
            assert len(x) == len(y), where
            for i, (p, q) in enumerate(zip(x, y)):
                walk(p, q, f"{where}[{i}]")
        else:
            assert x == y, (where, x, y)
    walk(comparable(a), comparable(b), "report")


def random_design(domain, run):
    """The design record evaluate reports for the study's random design (each round's gain, eval/design.py)."""
    from eval.design import DesignRecord, shown_set_gain

    return DesignRecord("random", None, shown_set_gain(domain, run.dialogue_options, run.dialogue_choices))


def test_split_evenly_covers_every_item_once_in_order():
    for n_items in range(0, 12):
        for parts in range(1, 5):
            pieces = [split_evenly(list(range(n_items)), parts, i) for i in range(parts)]
            assert sum(pieces, []) == list(range(n_items))
            assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


def test_user_rows_break_ties_as_the_whole_batch_does():
    probs = torch.full((7, 3, 4), 0.25)  # every option tied
    whole = pick_argmax(probs, generator(5, "tiebreak", "x"))
    parts = []
    for start, stop in ((0, 2), (2, 5), (5, 7)):
        with user_rows(start, stop, 7):
            parts.append(pick_argmax(probs[start:stop], generator(5, "tiebreak", "x")))
    assert torch.equal(torch.cat(parts), whole)
    assert len(set(whole.flatten().tolist())) == 4  # the ties really were broken at random
    with user_rows(0, 2, 7), pytest.raises(ValueError, match="got 3 rows"):
        pick_argmax(probs[:3], generator(5, "tiebreak", "x"))


@pytest.mark.parametrize("assistant", [BayesianAssistant(), RandomAssistant()], ids=["bayesian", "random"])
@pytest.mark.parametrize("chunk_users", [1, 3, 7])
def test_chunks_of_users_give_the_run_of_all_users_at_once(assistant, chunk_users):
    domain = get_domain("flight")
    users = pick_users(domain, 7, 3)
    whole = run_protocol(domain, assistant, users=users, seed=3, n_heldout=6)
    data = simulate_protocol_data(domain, users, 3, 6)
    chunked = play_users(domain, assistant, data, 3, chunk_users=chunk_users)
    for name in ("dialogue_picks", "picks", "reference_picks", "failures"):
        assert torch.equal(getattr(chunked, name), getattr(whole, name)), name
    assert torch.allclose(chunked.probs, whole.probs, atol=1e-6)
    assert build_report(chunked)["metrics"] == build_report(whole)["metrics"]


def test_launch_reads_the_launchers_variables():
    assert Launch.from_env({}) == Launch(0, 1, 0)
    launch = Launch.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, init=False)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.is_main) == (3, 4, 1, False)
    with pytest.raises(LaunchError, match="RANK 4 is not within WORLD_SIZE 4"):
        Launch.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(LaunchError, match="MASTER_ADDR and MASTER_PORT is not set"):
        Launch.from_env({"RANK": "0", "WORLD_SIZE": "2"})


def _cli(args, out, launcher=(), timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, *launcher, str(ROOT / "cli.py"), "evaluate", *args, "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), result


TORCHRUN_2 = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")


@pytest.mark.slow
def test_two_processes_write_the_one_process_report_for_the_bayesian_assistant(tmp_path):
    args = ["--assistant", "bayesian", "--users", "7", "--heldout", "10", "--chunk-users", "2"]  # 4 chunks, 7 users
    single, _ = _cli(args, tmp_path / "one")
    double, result = _cli(args, tmp_path / "two", TORCHRUN_2)
    assert double["extra"]["processes"] == {"world_size": 2, "backend": "gloo"}
    assert comparable(double) == comparable(single)
    assert double["n_users"] == 7 and "belief_error" in double["metrics"]
    assert not (tmp_path / "two" / "partial").exists() and not (tmp_path / "two" / "evaluate.lock").exists()
    assert result.stdout.count("report:") == 1  # rank 0 alone reports
    # and the plain protocol, all users in one batch, in this process
    from eval.beliefs import elicit_beliefs

    domain, assistant = get_domain("flight"), BayesianAssistant()
    whole = run_protocol(domain, assistant, n_users=7, seed=0, n_heldout=10)
    whole.beliefs = elicit_beliefs(whole, assistant)
    whole.design = random_design(domain, whole)
    assert_reports_close(double, build_report(whole), tolerance=0)


@pytest.mark.slow
def test_two_processes_write_the_one_process_report_for_a_language_model(tmp_path, one_torch_thread):
    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    args = ["--model", str(model_dir), "--users", "3", "--heldout", "3", "--dtype", "float32", "--elicit-beliefs"]
    single, _ = _cli(args, tmp_path / "one")
    double, _ = _cli(args, tmp_path / "two", TORCHRUN_2)
    assert comparable(double) == comparable(single)  # users played one per chunk in both: the same batches
    # against all users played in one batch by the plain protocol: equal up to batching's rounding
    from eval.beliefs import elicit_beliefs
    from eval.lm import load_causal_lm
    from eval.lm.assistant import LMAssistant

    domain = get_domain("flight")
    assistant = LMAssistant(load_causal_lm(str(model_dir), dtype=torch.float32))
    whole = run_protocol(domain, assistant, n_users=3, seed=0, n_heldout=3)
    whole.beliefs = elicit_beliefs(whole, assistant)
    whole.design = random_design(domain, whole)
    expected = build_report(whole, model=str(model_dir), mode="score")
    assert_reports_close(double, expected | {"extra": double["extra"], "prompt_template": double["prompt_template"]})


def test_progress_counts_prompts_exactly_whatever_the_hints(tmp_path):
    from eval.runner import ProgressMeter, prompts_per_user

    steps = prompts_per_user(5, 10, 4)  # 5 rounds, 10 held-out sets, 4 belief features
    assert steps == [1, 1, 1, 1, 1, 60, 24]
    meter = ProgressMeter("x", 3, steps, show=False)
    assert meter.total == 3 * 89
    meter.begin_chunk(2)
    for _ in range(5):
        meter.hint(2)  # a round's prompts reported by the scorer, then the protocol's step: no double count
        meter.step()
    meter.hint(50)
    meter.hint(500)  # more than the step holds: capped
    assert meter.prompts == 10 + 120
    meter.step()
    meter.end_chunk(2)  # the belief step, not reported, is counted at the chunk's end
    assert (meter.prompts, meter.users) == (2 * 89, 2)
    # rank 0 adds the other processes' counts; a resumed run starts from its finished users
    other = ProgressMeter("x", 3, steps, rank=1, world_size=2, folder=tmp_path, show=False)
    other.begin_chunk(1)
    other.end_chunk(1)
    main = ProgressMeter("x", 3, steps, rank=0, world_size=2, folder=tmp_path, show=False, done_users=2)
    assert main.totals() == (3 * 89, 3)
    assert main.eta_seconds() == 0.0

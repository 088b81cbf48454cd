"""distill's evaluation size for a --model on a CPU (users x held-out sets); torch's thread count there is
tested in test_lm_threads.py."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

import tiny_lm
from cli import main
from distill import pipeline
from distill.pipeline import (CPU_MODEL_EVAL_USERS, CPU_MODEL_HELDOUT, STUDY_EVAL_USERS, STUDY_HELDOUT,
                              DistillSettings, evaluation_size, run_distill)


@pytest.fixture()
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture()
def with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_the_constants_are_the_study_and_a_smaller_cpu_size():
    assert (STUDY_EVAL_USERS, STUDY_HELDOUT) == (100, 20)
    assert CPU_MODEL_EVAL_USERS * CPU_MODEL_HELDOUT < STUDY_EVAL_USERS * STUDY_HELDOUT
    assert CPU_MODEL_EVAL_USERS >= CPU_MODEL_HELDOUT  # more users rather than more sets per user


def test_a_model_on_a_machine_without_cuda_gets_the_cpu_size_and_a_line_saying_so(no_cuda):
    users, heldout, why = evaluation_size(DistillSettings(model="smollm2"))
    assert (users, heldout) == (CPU_MODEL_EVAL_USERS, CPU_MODEL_HELDOUT)
    assert why == (f"on a CPU, --model is evaluated on {CPU_MODEL_EVAL_USERS} users x {CPU_MODEL_HELDOUT} held-out "
                   "sets (the study: --eval-users 100 --heldout 20)")


def test_a_model_with_cuda_and_the_embedded_student_keep_the_study_size(no_cuda, monkeypatch):
    assert evaluation_size(DistillSettings()) == (100, 20, None)  # the embedded student, no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert evaluation_size(DistillSettings(model="smollm2")) == (100, 20, None)
    assert evaluation_size(DistillSettings()) == (100, 20, None)


@pytest.mark.parametrize("cuda", [False, True])
def test_explicit_sizes_win(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert evaluation_size(DistillSettings(model="m", n_eval_users=7, n_heldout=3)) == (7, 3, None)
    assert evaluation_size(DistillSettings(n_eval_users=7, n_heldout=3)) == (7, 3, None)
    users, heldout, why = evaluation_size(DistillSettings(model="m", n_eval_users=7))
    assert (users, heldout) == ((7, 20) if cuda else (7, CPU_MODEL_HELDOUT))
    assert (why is None) == cuda
    users, heldout, _ = evaluation_size(DistillSettings(model="m", n_heldout=3))
    assert (users, heldout) == ((100, 3) if cuda else (CPU_MODEL_EVAL_USERS, 3))


def test_the_command_leaves_unset_sizes_to_the_pipeline(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(pipeline, "run_distill", lambda settings, log: seen.append(settings))
    runner = CliRunner()
    result = runner.invoke(main, ["distill", "--domain", "flight", "--model", "smollm2", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["distill", "--domain", "flight", "--model", "smollm2", "--eval-users", "9",
                                  "--heldout", "4", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert [(s.n_eval_users, s.n_heldout) for s in seen] == [(None, None), (9, 4)]
    help_text = runner.invoke(main, ["distill", "--help"]).output
    assert "default: 100, as in the study; 20 for a --model" in " ".join(help_text.split())


def test_the_report_records_the_sizes_the_run_used(tmp_path, no_cuda):
    model = str(tiny_lm.save_tiny_lm(tmp_path / "tiny"))
    lines = []
    report = run_distill(DistillSettings(domain="hotel", model=model, method="lora", out_dir=str(tmp_path / "run"),
                                         n_dialogues=1, n_eval_users=3, max_train_users=6, budget_minutes=math.inf,
                                         max_steps=1, eval_before=False), log=lines.append)
    assert report["n_users"] == 3 and report["n_heldout"] == CPU_MODEL_HELDOUT
    saved = json.loads((tmp_path / "run" / "report.json").read_text())["extra"]["settings"]
    assert (saved["n_eval_users"], saved["n_heldout"]) == (3, CPU_MODEL_HELDOUT)
    assert f"on a CPU, --model is evaluated on 3 users x {CPU_MODEL_HELDOUT} held-out sets" in lines[0]


class LOADED:  # what the patched load_causal_lm returns: a loaded LM whose model is itself
    model = None


class ON_A_GPU:  # a loaded LM whose weights are not on the CPU (the meta device stands in for CUDA here)
    model = torch.nn.Linear(2, 2, device="meta")


def test_a_model_is_evaluated_on_the_gpu_when_there_is_one(monkeypatch, with_cuda):
    """With CUDA a --model's evaluations run there (as evaluate's), and the CPU thread timing leaves the model
    alone (torch's thread count unchanged, no timing line); the embedded student stays on the CPU."""
    loads, lines = [], []
    monkeypatch.setattr(pipeline, "load_causal_lm", lambda *args, **kwargs: loads.append(kwargs) or ON_A_GPU)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # more than one, or the timing would have nothing to choose
    settings = DistillSettings(model="some/model", dtype="bfloat16")
    assert pipeline.evaluation_placement(settings) == ("cuda", torch.bfloat16)
    assert pipeline.load_model_before(settings, "cuda", torch.bfloat16, log=lines.append) is ON_A_GPU
    assert loads[0]["device"] == "cuda" and loads[0]["load_in_4bit"]
    chosen = torch.get_num_threads()
    torch.set_num_threads(threads)
    assert chosen == 2 and not any(line.startswith("torch threads") for line in lines)
    assert pipeline.evaluation_placement(DistillSettings())[0] == "cpu"


def test_a_model_is_evaluated_on_the_cpu_without_cuda(monkeypatch, no_cuda):
    loads, timed = [], []
    monkeypatch.setattr(pipeline, "load_causal_lm", lambda *args, **kwargs: loads.append(kwargs) or LOADED)
    monkeypatch.setattr(pipeline, "choose_cpu_threads", lambda *args, **kwargs: timed.append(args))
    settings = DistillSettings(model="some/model", method="lora", dtype="float32")
    assert pipeline.evaluation_placement(settings) == ("cpu", torch.float32)
    pipeline.load_model_before(settings, "cpu", torch.float32, log=lambda line: None)
    assert loads[0]["device"] == "cpu" and not loads[0]["load_in_4bit"] and len(timed) == 1

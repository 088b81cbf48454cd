"""distill --task design on tiny settings: the design teaching set, the embedded student as designer before and
after training, the Bayesian and random designers, the report, the tables and the plot."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

from cli import main
from distill.design_pipeline import run_design_distill
from distill.pipeline import DistillSettings, run_distill
from distill.teaching_data import split_users
from eval.assistants import BayesianAssistant
from eval.design import run_designed_protocol
from eval.protocol import run_protocol
from eval.report import build_report
from eval.student_card import read_student_card
from ppl_models import get_domain
from png_checks import check_plot_png


def _settings(tmp_path, **changes):
    base = dict(domain="flight", task="design", designer="label", teacher="bayesian", out_dir=str(tmp_path / "run"), n_dialogues=1,
                n_eval_users=6, n_heldout=2, max_train_users=4, budget_minutes=math.inf, max_steps=2)
    base.update(changes)
    return DistillSettings(**base)


@pytest.mark.parametrize("teacher", ["bayesian", "soft"])
def test_design_distill_reports_each_designer_against_independent_runs(tmp_path, teacher):
    lines = []
    report = run_design_distill(_settings(tmp_path, teacher=teacher), log=lines.append)
    out = tmp_path / "run"
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["task"] == "design" and manifest["teacher"] == teacher and manifest["n_candidates"] == 4
    assert manifest["counts"]["examples"] == 4 * 1 * 5  # teaching users x dialogues x rounds
    domain = get_domain("flight")
    _, eval_users = split_users(domain, 6, 0)
    assert manifest["eval_users"] == eval_users.tolist()
    assert report == json.loads((out / "report.json").read_text())
    assert report["task"] == "design" and report["design"]["design"] == "lm" and report["design"]["candidates"] == 4
    designers = report["extra"]["designers"]
    assert set(designers) == {"before", "bayesian", "random"}
    # the Bayesian designer shows the best candidate every round; the random design has no candidates
    assert designers["bayesian"]["design"]["fraction_of_best_gain"]["mean"] == [1.0] * 5
    assert designers["random"]["design"]["design"] == "random"
    # the references' accuracies are those of the Bayesian assistant run on their own, on the same users
    active = run_designed_protocol(domain, BayesianAssistant(), design="active", n_candidates=4, users=eval_users,
                                   seed=0, n_heldout=2)
    assert designers["bayesian"]["accuracy"] == build_report(active)["accuracy"]
    plain = run_protocol(domain, BayesianAssistant(), users=eval_users, seed=0, n_heldout=2)
    assert designers["random"]["accuracy"] == build_report(plain)["accuracy"]
    # the student's shown sets: fractions of the best candidate's gain, never above it
    fractions = report["design"]["fraction_of_best_gain"]["mean"]
    assert len(fractions) == 5 and all(0.0 <= f <= 1.0 + 1e-9 for f in fractions)
    # every round of every user shows one label; the Bayesian designer's labels are those of the best candidates
    counts = report["design"]["picks_per_label"]
    assert len(counts) == 4 and sum(counts) == 6 * 5
    assert sum(designers["bayesian"]["design"]["picks_per_label"]) == 6 * 5
    assert f"the student after showed set 1 {counts[0]}, set 2 {counts[1]}," in "\n".join(lines)
    # the table prints the report's numbers
    table = next(line for line in lines if line.startswith("information gain of the shown set"))
    rows = [row.split() for row in table.splitlines()[2:7]]  # the first table: a title, a header, 5 rounds
    assert [float(row[2]) for row in rows] == [round(100 * f, 1) for f in fractions]
    assert [float(row[3]) for row in rows] == [100.0] * 5
    card = read_student_card(out / "train" / "model")
    assert card["chat_template_options"]["design_prompts"] is True
    # left: student before, after, the Bayesian and random designers; right: the same four accuracy curves
    check_plot_png(out / "design.png", (11, 4.2), dpi=120, series=4)


def test_the_taught_designer_learns_the_teaching_answers(tmp_path):
    """After a few hundred steps on one teaching user's examples, the student names the taught set on most of
    them: its answers are read where evaluation reads them (the designer's score over the set labels)."""
    from eval.lm import load_causal_lm
    from eval.lm.designer import LMDesigner
    from eval.lm.scoring import RoundRequest
    from eval.text.dialogue import design_candidate_answers

    settings = _settings(tmp_path, max_train_users=1, n_dialogues=4, max_steps=150, n_eval_users=2, eval_before=False)
    run_design_distill(settings, log=lambda line: None)
    examples = [json.loads(line) for line in (tmp_path / "run" / "data" / "train-design-bayesian.jsonl").open()]
    designer = LMDesigner(load_causal_lm(str(tmp_path / "run" / "train" / "model")))
    answers = design_candidate_answers(4)
    scored = designer.scorer.score_groups([[RoundRequest(e["messages"][:1], answers)] for e in examples])
    picks = torch.cat(scored).argmax(-1).tolist()
    taught = [answers.index(e["messages"][1]["content"]) for e in examples]
    assert sum(p == t for p, t in zip(picks, taught)) >= 0.8 * len(examples)


def test_run_distill_leaves_the_design_task_to_its_own_loop(tmp_path):
    with pytest.raises(ValueError, match="run_design_distill"):
        run_distill(_settings(tmp_path), log=lambda line: None)
    with pytest.raises(ValueError, match="at least 2 candidate sets"):
        _settings(tmp_path, n_candidates=1)


@pytest.mark.parametrize("arguments, message", [
    (["--task", "design", "--designer", "label", "--teacher", "oracle"], "no oracle teacher"),
    (["--task", "design", "--eval-domains", "hotel"], "--eval-domains does nothing with --task design"),
    (["--task", "design", "--teach-rounds", "3"], "--teach-rounds does nothing with --task design"),
    (["--candidates", "3"], "--candidates does nothing with --task recommend"),
    (["--task", "design", "--candidates", "1"], "1 is not in the range x>=2"),
])
def test_distill_refuses_what_the_design_task_cannot_do(tmp_path, arguments, message):
    result = CliRunner().invoke(main, ["distill", "--domain", "flight", "--out", str(tmp_path / "run"), *arguments])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_design_distill_teaches_a_hugging_face_model_with_lora(tmp_path):
    """--model: the same loop with a LoRA adapter; the evaluation size given here wins over the CPU's."""
    import tiny_lm

    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    lines = []
    report = run_design_distill(_settings(tmp_path, model=str(model_dir), method="lora", max_steps=1), log=lines.append)
    assert (tmp_path / "run" / "train" / "adapter" / "adapter_config.json").is_file()
    assert report["n_users"] == 6 and report["extra"]["settings"]["n_eval_users"] == 6
    assert report["extra"]["designers"]["bayesian"]["design"]["fraction_of_best_gain"]["mean"] == [1.0] * 5
    assert not any(line.startswith("on a CPU") for line in lines)


def test_train_reads_a_design_set_with_a_student_made_for_designers_prompts(tmp_path):
    """train --domain D on a design teaching set builds the embedded student with design_prompts (its manifest
    says the task), so the prompts have no unknown tokens and the saved card says so."""
    from distill.design_data import write_design_set
    from distill.teaching_data import teaching_set_task

    write_design_set(get_domain("flight"), "bayesian", tmp_path / "data", n_dialogues=1, n_eval_users=10,
                     max_train_users=2)
    data = tmp_path / "data" / "train-design-bayesian.jsonl"
    assert teaching_set_task(data) == "design"
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--domain", "flight", "--max-steps", "1",
                                       "--batch-size", "2", "--out", str(tmp_path / "train")])
    assert result.exit_code == 0, result.output
    assert read_student_card(tmp_path / "train" / "model")["chat_template_options"]["design_prompts"] is True

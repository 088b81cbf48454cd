"""The entropy designer (eval.lm.designer.EntropyDesigner): an LM shows the candidate set whose answer it is
least sure of; its teaching data (Bayesian-designed recommendation dialogues); distill and evaluate with
--designer entropy."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

import brute_force
import tiny_lm
from cli import main
from distill.design_pipeline import run_design_distill
from distill.pipeline import DistillSettings
from distill.teaching_data import ACTIVE_TEACHING_STREAM, build_examples, teaching_dialogues
from eval.assistants import BayesianAssistant
from eval.design import run_designed_protocol
from eval.lm.designer import EntropyDesigner
from eval.student_card import read_student_card
from ppl_models import get_domain, infer, pick_users
from ppl_models.rng import generator


class BayesianAsLM:
    """The Bayesian assistant in an LM assistant's place (score mode), counting its calls."""

    mode, name = "score", "bayesian-as-lm"

    def __init__(self):
        self.assistant, self.requests = BayesianAssistant(), []

    def recommend(self, request):
        self.requests.append(request)
        return self.assistant.recommend(request)


def test_with_the_bayesian_predictive_it_shows_the_set_of_highest_predictive_entropy_by_brute_force():
    domain, seed = get_domain("flight"), 3
    users = pick_users(domain, 3, seed=seed)
    lm = BayesianAsLM()
    run = run_designed_protocol(domain, BayesianAssistant(), design="lm", designer=EntropyDesigner(lm), n_candidates=4,
                                users=users, seed=seed, n_heldout=2)
    options, choices = run.dialogue_options, run.dialogue_choices
    for r in range(domain.n_rounds):  # the designer's candidates, from the design's own seeded stream
        candidates = domain.draw_options(generator(seed, "design", "candidates", r), (3, 4))
        for d in range(3):
            post = brute_force.posterior(domain, options[d, :r], choices[d, :r])
            entropies = [brute_force.entropy(brute_force.predictive(domain, post, candidates[d, k].tolist()))
                         for k in range(4)]
            shown = [k for k in range(4) if torch.equal(candidates[d, k], options[d, r])]
            assert shown and max(entropies[k] for k in shown) == pytest.approx(max(entropies), abs=1e-9), (r, d)
    # round 1 asks nothing of the history; each later round adds one request for the LM's pick on the last shown set
    assert len(lm.requests) == 5 + 4
    # the rounds so far are shown with the LM's own picks: the most probable option of each shown set
    last = lm.requests[-1]
    assert last.history_choices.shape == (3, 4)
    for d in range(3):
        for r in range(4):
            post = brute_force.posterior(domain, options[d, :r], choices[d, :r])
            predictive = brute_force.predictive(domain, post, options[d, r].tolist())
            assert predictive[last.history_picks[d, r]] == pytest.approx(max(predictive), abs=1e-9)


def test_its_own_picks_are_recomputed_for_another_dialogue_and_it_needs_score_mode():
    domain = get_domain("flight")
    lm = BayesianAsLM()
    designer = EntropyDesigner(lm)
    options = domain.draw_options(generator(0, "test"), (2, 3))
    choices = torch.tensor([[0, 1, 2], [2, 2, 0]])
    first = designer.own_picks(domain, options, choices)
    assert len(lm.requests) == 3
    assert torch.equal(designer.own_picks(domain, options, choices), first) and len(lm.requests) == 3  # reused
    designer.own_picks(domain, options[:, :2], choices[:, :2])  # a prefix of the same dialogues: reused
    assert len(lm.requests) == 3
    designer.own_picks(domain, options, torch.tensor([[0, 0, 2], [2, 2, 0]]))  # other dialogues: every round again
    assert len(lm.requests) == 6
    lm.mode = "generate"
    with pytest.raises(ValueError, match="score mode"):
        EntropyDesigner(lm)


def test_active_teaching_dialogues_are_the_bayesian_designers():
    domain, seed = get_domain("flight"), 2
    users = pick_users(domain, 2, seed=0)
    dialogues = teaching_dialogues(domain, users, 2, seed, design="active", n_candidates=3)
    assert dialogues.users.tolist() == users.repeat_interleave(2).tolist()
    for r in range(domain.n_rounds):
        candidates = domain.draw_options(generator(seed, ACTIVE_TEACHING_STREAM, "candidates", r), (4, 3))
        for d in range(4):
            post = brute_force.posterior(domain, dialogues.option_index[d, :r], dialogues.choices[d, :r])
            gains = [brute_force.linear_information_gain(domain, post, candidates[d, k].tolist()) for k in range(3)]
            shown = [k for k in range(3) if torch.equal(candidates[d, k], dialogues.option_index[d, r])]
            assert shown and max(gains[k] for k in shown) == pytest.approx(max(gains), abs=1e-6)
    # the soft targets are the Bayesian predictive of those dialogues
    examples = build_examples(domain, "soft", users, 2, seed, prefixes="longest", design="active", n_candidates=3)
    predictive = infer(domain, dialogues.option_index, dialogues.choices, keep_posterior=False, marginals=False,
                       predictive=True).predictive
    assert len(examples) == 4
    assert examples[1]["soft_targets"][2]["probs"] == [round(float(p), 6) for p in predictive[1, 2]]
    with pytest.raises(ValueError, match="unknown teaching design"):
        teaching_dialogues(domain, users, 1, seed, design="lm")


@pytest.mark.parametrize("teacher, teach_design", [("soft", "active"), ("oracle", "random")])
def test_distill_teaches_the_entropy_designer_on_recommendation_dialogues(tmp_path, teacher, teach_design):
    settings = DistillSettings(domain="flight", task="design", designer="entropy", teacher=teacher,
                               teach_design=teach_design, out_dir=str(tmp_path / "run"), n_dialogues=1,
                               n_eval_users=4, n_heldout=2, max_train_users=3, budget_minutes=math.inf, max_steps=2)
    lines = []
    report = run_design_distill(settings, log=lines.append)
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert manifest["task"] == "recommend" and manifest["design"] == teach_design
    assert manifest.get("n_candidates") == (4 if teach_design == "active" else None)
    assert manifest["teacher"] == teacher and manifest["counts"]["examples"] == 3  # 3 users x 1 whole dialogue
    assert report["extra"]["designer"] == "entropy" and report["design"]["design"] == "lm"
    assert report["extra"]["designers"]["bayesian"]["design"]["fraction_of_best_gain"]["mean"] == [1.0] * 5
    fractions = report["design"]["fraction_of_best_gain"]["mean"]
    assert len(fractions) == 5 and all(0.0 <= f <= 1.0 + 1e-9 for f in fractions)
    assert ("recommendations on Bayesian-designed dialogues" if teach_design == "active"
            else "recommendations on dialogues of random option sets") in "\n".join(lines)
    # a recommending student: its vocabulary has no designer's phrases
    assert read_student_card(tmp_path / "run" / "train" / "model")["chat_template_options"]["design_prompts"] is False


def test_the_designer_options_say_where_they_apply(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["distill", "--domain", "flight", "--designer", "entropy", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--designer does nothing with --task recommend" in result.output
    result = runner.invoke(main, ["distill", "--domain", "flight", "--task", "design", "--designer", "label", "--teach-design", "random",
                                  "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--teach-design does nothing without --task design --designer entropy" in result.output
    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    for arguments, message in [(["--designer", "entropy"], "it needs --design lm"),
                               (["--design", "lm", "--designer", "entropy", "--mode", "generate"], "needs --mode score")]:
        result = runner.invoke(main, ["evaluate", "--model", str(model_dir), *arguments, "--out", str(tmp_path / "b")])
        assert result.exit_code == 2 and message in result.output
    result = runner.invoke(main, ["evaluate", "--model", str(model_dir), "--design", "lm", "--designer", "entropy",
                                  "--users", "2", "--heldout", "2", "--no-elicit-beliefs", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["design"]["designer"].endswith(" by entropy")


def test_distill_teaches_a_hugging_face_model_to_design_by_entropy(tmp_path):
    """--model with --designer entropy: a LoRA adapter on the recommendation task's examples, every prefix of
    Bayesian-designed dialogues, and the model as entropy designer after training."""
    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    settings = DistillSettings(domain="flight", task="design", designer="entropy", teacher="bayesian",
                               model=str(model_dir), method="lora", out_dir=str(tmp_path / "run"), n_dialogues=1,
                               n_eval_users=3, n_heldout=1, max_train_users=2, budget_minutes=math.inf, max_steps=1)
    report = run_design_distill(settings, log=lambda line: None)
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert manifest["prefixes"] == "all" and manifest["counts"]["examples"] == 2 * 5  # every prefix of 2 dialogues
    assert (tmp_path / "run" / "train" / "adapter" / "adapter_config.json").is_file()
    assert report["design"]["designer"] == "student (after) by entropy" and report["extra"]["designer"] == "entropy"

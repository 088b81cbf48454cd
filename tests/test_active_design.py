"""The designers in the protocol (eval/design.py) and on the command line: the active design shows the
candidate with the highest information gain by a brute-force count, the held-out sets are the random
design's, every assistant (a language model included) plays the designed dialogues, and bad input is one
line with exit code 2."""
import json

import pytest
import torch
from click.testing import CliRunner

import brute_force
import tiny_lm
from cli import main
from eval.assistants import Assistant, BayesianAssistant, RandomAssistant
from eval.design import designed_protocol_data, pick_most_informative, run_designed_protocol
from eval.protocol import simulate_protocol_data
from ppl_models import get_domain, pick_users
from ppl_models.rng import generator


@pytest.mark.parametrize("temperature,lapse", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.1)])
def test_active_design_shows_the_most_informative_candidate_by_brute_force(temperature, lapse):
    domain = get_domain("flight").with_user(temperature=temperature, lapse=lapse)
    users, seed, n_candidates = pick_users(domain, 3, seed=1), 4, 8
    data, record = designed_protocol_data(domain, users, seed, "active", n_candidates, n_heldout=5)
    assert record.design == "active" and record.n_candidates == n_candidates
    for r in range(domain.n_rounds):  # the same seeded streams the designer drew its candidates from
        candidates = domain.draw_options(generator(seed, "design", "candidates", r), (len(users), n_candidates))
        for d in range(len(users)):
            post = brute_force.posterior(domain, data.dialogue_options[d, :r], data.dialogue_choices[d, :r],
                                         temperature, lapse)
            gains = [brute_force.linear_information_gain(domain, post, candidates[d, c].tolist(), temperature, lapse)
                     for c in range(n_candidates)]
            shown = [c for c in range(n_candidates) if torch.equal(candidates[d, c], data.dialogue_options[d, r])]
            assert shown, "the shown set is one of the round's candidates"
            assert max(gains[c] for c in shown) == pytest.approx(max(gains), abs=1e-6), (r, d)
            assert record.information_gain[d, r].item() == pytest.approx(max(gains), abs=1e-6)
            assert record.candidate_gain[d, r].item() == pytest.approx(sum(gains) / n_candidates, abs=1e-6)
            assert record.best_gain[d, r].item() == pytest.approx(max(gains), abs=1e-6)
    shown, random_pick = record.fraction_of_best()
    assert torch.allclose(shown[~shown.isnan()], torch.ones(1, dtype=torch.float64))  # the Bayesian designer: 1.0


def test_random_design_is_the_studys_protocol_and_records_each_rounds_gain():
    domain = get_domain("hotel")
    users = pick_users(domain, 4, seed=2)
    data, record = designed_protocol_data(domain, users, 3, "random", n_heldout=6)
    plain = simulate_protocol_data(domain, users, 3, 6)
    for field in ("dialogue_options", "dialogue_choices", "heldout_options", "heldout_choices"):
        assert torch.equal(getattr(data, field), getattr(plain, field)), field
    assert record.design == "random" and record.n_candidates is None and record.candidate_gain is None
    for d in range(len(users)):
        for r in range(domain.n_rounds):
            post = brute_force.posterior(domain, data.dialogue_options[d, :r], data.dialogue_choices[d, :r])
            want = brute_force.linear_information_gain(domain, post, data.dialogue_options[d, r].tolist())
            assert record.information_gain[d, r].item() == pytest.approx(want, abs=1e-6)
    active, _ = designed_protocol_data(domain, users, 3, "active", 10, n_heldout=6)
    assert torch.equal(active.heldout_options, plain.heldout_options)
    assert torch.equal(active.heldout_choices, plain.heldout_choices)
    assert not torch.equal(active.dialogue_options, plain.dialogue_options)


def test_ties_are_broken_at_random_and_nan_rows_pick_something():
    gain = torch.tensor([[0.5, 0.5, 0.1, 0.5], [float("nan")] * 4])
    picks = {tuple(pick_most_informative(gain, torch.Generator().manual_seed(s)).tolist()) for s in range(40)}
    assert {p[0] for p in picks} == {0, 1, 3} and len({p[1] for p in picks}) > 1


class RecordingAssistant(Assistant):
    """Recommends at random and keeps the histories it was shown."""

    name = "recorder"

    def __init__(self):
        self.histories = []

    def recommend(self, request):
        self.histories.append((request.history_options.clone(), request.history_choices.clone()))
        return RandomAssistant().recommend(request)


def test_every_assistant_plays_the_designed_dialogue():
    domain = get_domain("flight")
    recorder = RecordingAssistant()
    run = run_designed_protocol(domain, recorder, design="active", n_candidates=5, n_users=3, seed=4, n_heldout=3)
    options, choices = recorder.histories[domain.n_rounds - 1]  # the last round's request: every round before it
    assert torch.equal(options, run.dialogue_options[:, :-1]) and torch.equal(choices, run.dialogue_choices[:, :-1])
    bayes = run_designed_protocol(domain, BayesianAssistant(), design="active", n_candidates=5, n_users=3, seed=4,
                                  n_heldout=3)
    assert torch.equal(bayes.dialogue_options, run.dialogue_options)  # the design depends on the users, not the assistant


def test_active_design_teaches_the_bayesian_assistant_faster():
    domain = get_domain("flight")
    runs = {design: run_designed_protocol(domain, BayesianAssistant(), design=design, n_candidates=30, n_users=80,
                                          seed=5, n_heldout=40) for design in ("random", "active")}
    accuracy = {d: (r.picks == r.heldout_choices[:, None]).double().mean((0, 2)) for d, r in runs.items()}
    gain = {d: r.design.information_gain.mean(0) for d, r in runs.items()}
    assert bool((gain["active"] >= gain["random"] - 1e-9).all())  # the best of 30 against one drawn at random
    assert accuracy["active"][5] > accuracy["random"][5] + 0.03


@pytest.fixture
def runner():
    return CliRunner()


def test_simulate_and_evaluate_with_the_active_design(runner, tmp_path):
    out = tmp_path / "active.json"
    result = runner.invoke(main, ["simulate", "--users", "6", "--heldout", "5", "--design", "active", "--candidates",
                                  "7", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "design: active, best of 7 candidates" in result.output and "gain of round (nats)" in result.output
    report = json.loads(out.read_text())
    assert report["design"]["design"] == "active" and report["design"]["candidates"] == 7
    assert len(report["design"]["information_gain_nats"]["mean"]) == 5
    assert report["metrics"]["information_gain"]["mean"][0] is None
    assert report["metrics"]["information_gain"]["mean"][1:] == pytest.approx(report["design"]["information_gain_nats"]["mean"])
    plain = runner.invoke(main, ["simulate", "--users", "6", "--heldout", "5", "--out", str(tmp_path / "random.json")])
    assert json.loads((tmp_path / "random.json").read_text())["design"]["design"] == "random", plain.output
    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    result = runner.invoke(main, ["evaluate", "--model", str(model_dir), "--users", "2", "--heldout", "2", "--design",
                                  "active", "--candidates", "5", "--out", str(tmp_path / "lm")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "lm" / "report.json").read_text())
    assert report["design"]["design"] == "active" and (tmp_path / "lm" / "accuracy.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "args,message",
    [
        (["simulate", "--candidates", "0"], "--candidates must be at least 1, got 0"),
        (["simulate", "--design", "active", "--candidates", "-3"], "--candidates must be at least 1, got -3"),
        (["simulate", "--design", "clever"], "unknown design 'clever'; choose from random, active"),
        (["evaluate", "--assistant", "bayesian", "--design", "active", "--study-data", "STUDY", "--out", "OUT"],
         "--design active cannot replay released files"),
        (["evaluate", "--assistant", "bayesian", "--design", "nope", "--out", "OUT"], "unknown design 'nope'"),
    ],
)
def test_bad_design_input_is_one_line_and_exit_code_2(runner, tmp_path, args, message):
    args = [str(tmp_path) if a == "STUDY" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and result.output.startswith("Error: ")
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before any work


# -- a language model as designer ------------------------------------------------------------------------
def test_the_design_prompt_comes_from_the_template(tmp_path):
    from eval.text.dialogue import design_candidate_answers, design_prompt_messages, match_design_answer
    from eval.text.prompt_template import default_template, load_template

    domain = get_domain("hotel")
    options = domain.draw_options(torch.Generator().manual_seed(0), (2, 3))
    text = design_prompt_messages(domain, options[0, :2], [2, 0], options[1])[0]["content"]
    assert text.count("Set ") == 3 and "I chose Hotel 3." in text and "I chose Hotel 1." in text
    assert text.endswith("Which set should you show me in round 3 to learn the most about my preferences?")
    assert design_candidate_answers(3) == ["Show me set 1.", "Show me set 2.", "Show me set 3."]
    assert match_design_answer("Well. Show me set 2.", 3) == 1 and match_design_answer("Show me set 4.", 3) is None
    fields = dict(default_template().content(), name="mine", design_choice="Picked #{number}.",
                  design_set_header="Option group {number})", design_answer="Group {number} please")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(fields))
    mine = load_template(path)
    text = design_prompt_messages(domain, options[0, :1], [1], options[1], mine)[0]["content"]
    assert "Picked #2." in text and "Option group 3)" in text and "Show me set N" not in text
    assert design_candidate_answers(2, mine) == ["Group 1 please", "Group 2 please"]
    # a template written before the design fields existed still loads, with the default's wording and its own sha256
    old = {k: v for k, v in default_template().content().items() if not k.startswith("design_")}
    path.write_text(json.dumps(old))
    loaded = load_template(path)
    assert loaded.fields["design_answer"] == "Show me set {number}." and "design_answer" not in loaded.content()


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_a_language_model_designs_and_its_choices_are_scored_by_exact_gain(tmp_path, mode):
    from eval.lm import load_causal_lm
    from eval.lm.designer import LMDesigner

    lm = load_causal_lm(str(tiny_lm.save_tiny_lm(tmp_path / "tiny")))
    designer = LMDesigner(lm, mode=mode)
    domain = get_domain("flight")
    run = run_designed_protocol(domain, BayesianAssistant(), design="lm", n_candidates=4, n_users=3, seed=6,
                                n_heldout=5, designer=designer)
    record = run.design
    assert record.design == "lm" and record.designer == designer.name and record.n_candidates == 4
    fraction, random_fraction = record.fraction_of_best()
    assert bool(((fraction <= 1 + 1e-9) | fraction.isnan()).all())
    for r in range(domain.n_rounds):  # the shown set is the candidate the LM named, and its gain is that set's
        candidates = domain.draw_options(generator(6, "design", "candidates", r), (3, 4))
        for d in range(3):
            named = [k for k in range(4) if torch.equal(candidates[d, k], run.dialogue_options[d, r])]
            assert named
            if mode == "score":  # the most probable answer's set
                probs = record.choice_probs[d, r]
                assert any(probs[k] >= probs.max() - 5e-7 for k in named)
    if mode == "score":
        assert record.choice_probs.shape == (3, 5, 4) and record.failures.sum() == 0
        assert torch.allclose(record.choice_probs.sum(-1), torch.ones(3, 5), atol=1e-5)
    else:  # a random tiny model rarely names a set: each such answer is counted, and a random set is shown
        assert record.failures.shape == (3, 5)


def test_evaluate_with_a_language_model_as_designer(runner, tmp_path):
    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    result = runner.invoke(main, ["evaluate", "--model", str(model_dir), "--design", "lm", "--users", "2", "--heldout",
                                  "3", "--no-elicit-beliefs", "--out", str(tmp_path / "lm")])
    assert result.exit_code == 0, result.output
    assert "fraction of the best candidate's" in result.output
    report = json.loads((tmp_path / "lm" / "report.json").read_text())
    design = report["design"]
    assert report["assistant"] == "bayesian" and design["design"] == "lm" and design["candidates"] == 4
    assert len(design["fraction_of_best_gain"]["mean"]) == len(design["random_fraction_of_best_gain"]["mean"]) == 5
    bad = runner.invoke(main, ["simulate", "--design", "lm"])
    assert bad.exit_code == 2 and "--design lm needs a language model" in bad.output

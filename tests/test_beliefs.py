"""Belief elicitation: stated beliefs against independent brute-force posteriors, implied picks against plain
loops, the LM path on a tiny local model, the report and the CLI."""
import json

import pytest
import torch
from click.testing import CliRunner

import brute_force
import tiny_lm
from cli import main
from eval.assistants import BayesianAssistant, OracleAssistant, RandomAssistant, RecommendRequest
from eval.beliefs.scale import BeliefElicitationError, belief_levels, is_elicitable
from eval.text.chat_format import tokenize_chat
from eval.text.dialogue import belief_candidate_answers, belief_prompt_messages, dialogue_messages
from eval.lm import answer_sentence, load_causal_lm, parse_belief_answer
from eval.lm.assistant import LMAssistant
from eval.metrics import per_user_metrics, summarise, summarise_run
from eval.protocol import run_protocol
from eval.beliefs import elicit_beliefs
from ppl_models import get_domain, simulate_dialogues
from ppl_models.users import describe_user
from png_checks import check_plot_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py: tiny models, one thread

GAP = 1e-4  # a held-out set counts as untied when its best utility leads the runner-up by more than this


def utilities(domain, weights, option_rows):
    """Plain-Python utility of each option for a weight vector."""
    return [sum(w * x for w, x in zip(weights, option)) for option in brute_force.option_values(domain, option_rows)]


def best_and_gap(values):
    order = sorted(range(len(values)), key=lambda o: -values[o])
    return order[0], values[order[0]] - values[order[1]]


def run_with_beliefs(domain, assistant, **kwargs):
    """The protocol, then the beliefs elicited on its run (as the commands wire them)."""
    run = run_protocol(domain, assistant, **kwargs)
    run.beliefs = elicit_beliefs(run, assistant)
    return run


@pytest.fixture(scope="module")
def bayes_run():
    return run_with_beliefs(get_domain("flight"), BayesianAssistant(), n_users=4, n_heldout=12, seed=5)


def brute_marginals(domain, run, d, k):
    """Each feature's posterior marginal over the levels after k rounds of dialogue d, by enumeration."""
    post = brute_force.posterior(domain, run.dialogue_options[d, :k], run.dialogue_choices[d, :k])
    return [[sum(p for w, p in post.items() if w[f] == level) for level in brute_force.LEVELS] for f in range(len(domain.features))]


def test_bayesian_stated_beliefs_are_the_brute_force_posterior_marginals(bayes_run):
    flight = bayes_run.domain
    beliefs = bayes_run.beliefs
    assert beliefs.stated_probs.shape == (4, 6, 4, 5) and beliefs.implied_picks.shape == (4, 6, 12)
    for d in range(4):
        for k in range(6):
            marginals = torch.tensor(brute_marginals(flight, bayes_run, d, k), dtype=torch.float64)  # [F, 5]
            assert torch.allclose(beliefs.stated_probs[d, k], marginals, atol=1e-9)
            assert torch.allclose(beliefs.posterior_probs[d, k], marginals, atol=1e-9)
            means = marginals @ torch.tensor(brute_force.LEVELS, dtype=torch.float64)
            assert torch.allclose(beliefs.stated_weights[d, k], means, atol=1e-9)
    summary = summarise_run(bayes_run)
    assert max(summary["belief_error"]["mean"]) <= 1e-6 and max(summary["belief_tv"]["mean"]) <= 1e-6
    assert summary["belief_sign_agreement"]["mean"] == [1.0] * 6
    assert summary["belief_failure_rate"]["mean"] == [0.0] * 6
    assert beliefs.stated_weights[:, 0].abs().max() < 1e-12  # the prior is symmetric: every mean weight is 0
    assert beliefs.stated_weights[:, 5].abs().max() > 0.2  # after 5 rounds the beliefs have moved


def test_implied_picks_match_plain_loops_over_the_heldout_sets(bayes_run):
    flight, beliefs = bayes_run.domain, bayes_run.beliefs
    checked = 0
    for d in range(4):
        for k in range(6):
            weights = [sum(p * level for p, level in zip(row, brute_force.LEVELS)) for row in brute_marginals(flight, bayes_run, d, k)]
            for m in range(12):
                values = utilities(flight, weights, bayes_run.heldout_options[d, m].tolist())
                best, gap = best_and_gap(values)
                implied = int(beliefs.implied_picks[d, k, m])
                if gap > GAP:
                    assert implied == best
                    checked += 1
                else:  # tied (or nearly): the seeded draw picks one of the best
                    assert values[implied] >= max(values) - GAP
    assert checked > 150
    metrics = per_user_metrics(bayes_run)
    for d in range(4):
        for k in range(6):
            picks = beliefs.implied_picks[d, k].tolist()
            choices, direct = bayes_run.heldout_choices[d].tolist(), bayes_run.picks[d, k].tolist()
            assert metrics["implied_accuracy"][d, k] == pytest.approx(sum(p == c for p, c in zip(picks, choices)) / 12)
            assert metrics["consistency"][d, k] == pytest.approx(sum(p == q for p, q in zip(picks, direct)) / 12)


def test_oracle_implied_picks_are_the_users_choices():
    flight = get_domain("flight")
    run = run_with_beliefs(flight, OracleAssistant(), n_users=25, n_heldout=20, seed=2)
    beliefs = run.beliefs
    untied = 0
    for d, user in enumerate(run.users.tolist()):
        truth = list(describe_user(flight, user).values())
        assert beliefs.stated_weights[d].tolist() == [truth] * 6
        for m in range(20):
            best, gap = best_and_gap(utilities(flight, truth, run.heldout_options[d, m].tolist()))
            if gap > 1e-6:  # the user's best option is unique: no tie for anyone to break
                untied += 1
                assert int(run.heldout_choices[d, m]) == best
                assert beliefs.implied_picks[d, :, m].tolist() == [best] * 6 == run.picks[d, :, m].tolist()
    assert untied > 400
    summary = summarise_run(run)
    assert min(summary["implied_accuracy"]["mean"]) >= untied / 500 and min(summary["consistency"]["mean"]) >= untied / 500
    # The oracle's distance from the Bayesian posterior, for the first users, against brute force.
    errors = per_user_metrics(run)["belief_error"]
    for d in range(3):
        truth = list(describe_user(flight, int(run.users[d])).values())
        for k in (0, 3, 5):
            means = [sum(p * level for p, level in zip(row, brute_force.LEVELS)) for row in brute_marginals(flight, run, d, k)]
            assert float(errors[d, k]) == pytest.approx(sum(abs(t - w) for t, w in zip(truth, means)) / 4, abs=1e-9)


def test_random_states_uniform_beliefs():
    run = run_with_beliefs(get_domain("hotel"), RandomAssistant(), n_users=5, n_heldout=5, seed=1)
    assert torch.equal(run.beliefs.stated_probs, torch.full((5, 6, 4, 5), 0.2, dtype=torch.float64))


def test_belief_text_and_scale():
    hotel = get_domain("hotel")
    assert belief_levels(hotel).tolist() == [[-1.0, -0.5, 0.0, 0.5, 1.0]] * 4
    assert belief_candidate_answers() == [f"My estimate is {n}." for n in range(1, 6)]
    dialogue = simulate_dialogues(hotel, torch.tensor([7]), 1, seed=0)
    options, choices = dialogue.option_index[0], dialogue.choices[0].tolist()
    messages = belief_prompt_messages(hotel, options[:2], [0, 1], choices[:2], 1)
    assert messages[:-1] == dialogue_messages(hotel, options, [0, 1], choices, 2)
    question = messages[-1]["content"]
    assert f"I prefer Hotel {choices[1] + 1}" in question
    assert "how much do I prefer a higher price (lowest: $100; highest: $1000)?" in question
    assert "3: indifferent" in question and 'Answer with "My estimate is N."' in question


def test_webshop_cannot_be_asked_for_beliefs():
    webshop = get_domain("webshop")
    assert not is_elicitable(webshop) and is_elicitable(get_domain("flight3"))
    with pytest.raises(BeliefElicitationError, match="cannot elicit beliefs on domain 'webshop'.*per-feature weights"):
        run_with_beliefs(webshop, BayesianAssistant(), n_users=2, n_heldout=2)


@pytest.mark.parametrize(
    "text,expected",
    [("My estimate is 4.", 3), ("my ESTIMATE is: 1", 0), ("2/5", 1), ("5 out of 5", 4), (" 3. ", 2),
     ("My estimate is 6.", None), ("The best option is Flight 2.", None), ("", None)],
)
def test_parse_belief_answer(text, expected):
    assert parse_belief_answer(text) == expected


def test_summaries_leave_undefined_user_rounds_out():
    values = torch.tensor([[1.0, float("nan")], [0.0, float("nan")], [float("nan"), float("nan")], [1.0, float("nan")]])
    summary = summarise(values)
    assert summary["mean"] == [pytest.approx(2 / 3), None] and summary["ci95"][1] is None
    assert 0.0 <= summary["ci95"][0][0] <= 2 / 3 <= summary["ci95"][0][1] <= 1.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_causal_lm(tiny_lm.save_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm"))


def belief_request(domain, n_users=2, n_rounds=2):
    dialogue = simulate_dialogues(domain, torch.tensor([3, 17][:n_users]), 1, seed=4)
    options, choices = dialogue.option_index[:, :n_rounds], dialogue.choices[:, :n_rounds]
    picks = torch.tensor([[0, 2], [1, 1]])[:n_users, :n_rounds]
    return RecommendRequest(domain, options, picks, choices, options[:, :1], seed=0, users=dialogue.users)


@pytest.mark.slow
def test_lm_score_mode_beliefs_are_the_softmax_of_the_scored_answers(tiny):
    flight2 = get_domain("flight2")
    request = belief_request(flight2)
    states = LMAssistant(tiny, mode="score", batch_size=3).state_beliefs_after_each_round(request)
    assert len(states) == 3
    answers = belief_candidate_answers()
    for k, stated in enumerate(states):
        assert stated.level_probs.shape == (2, 2, 5) and stated.distribution and not stated.failed().any()
        for d in range(2):
            for f in range(2):
                conversation = belief_prompt_messages(
                    flight2, request.history_options[d, :k], request.history_picks[d, :k].tolist(),
                    request.history_choices[d, :k].tolist(), f,
                )
                sums = []
                for answer in answers:  # one full forward per answer, no cache
                    ids, mask = tokenize_chat(tiny.tokenizer, conversation + [{"role": "assistant", "content": answer}])
                    start = len(mask) - mask[::-1].index(False)
                    with torch.no_grad():
                        logprobs = torch.log_softmax(tiny.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                    sums.append(sum(logprobs[i - 1, ids[i]].item() for i in range(start, len(ids))))
                expected = torch.softmax(torch.tensor(sums, dtype=torch.float64), 0)
                assert torch.allclose(stated.level_probs[d, f], expected, atol=1e-4)
                assert float(stated.level_probs[d, f].sum()) == pytest.approx(1.0, abs=1e-6)
    assert (states[2].level_probs - states[0].level_probs).abs().max() > 1e-3  # the history matters


def test_lm_generate_mode_counts_unparseable_answers_as_failures(tiny):
    flight2 = get_domain("flight2")
    request = belief_request(flight2)
    assistant = LMAssistant(tiny, mode="generate", batch_size=4)
    real = assistant.state_beliefs_after_each_round(request)  # a random tiny model: its text, whatever it is
    conversations = [
        belief_prompt_messages(flight2, request.history_options[d, :k], request.history_picks[d, :k].tolist(),
                               request.history_choices[d, :k].tolist(), f)
        for k in range(3) for d in range(2) for f in range(2)
    ]
    texts = assistant.scorer.generate(conversations)
    assert torch.stack([s.failed() for s in real]).flatten().tolist() == [
        parse_belief_answer(answer_sentence(t)) is None for t in texts
    ]
    for stated in real:
        assert not stated.distribution and stated.level_probs.shape == (2, 2, 5)
        assert torch.equal(stated.failed(), stated.level_probs.isnan().all(-1))
    # Answers under our control: 3 states x 2 users x 2 features, in (state, user, feature) order.
    replies = ["My estimate is 5.", "no idea", "My estimate is 1.", "7", "2/5", "3"] * 2
    controlled = LMAssistant(tiny, mode="generate")
    controlled.scorer.generate = lambda conversations, **_: replies[: len(conversations)]
    states = controlled.state_beliefs_after_each_round(request)
    failed = torch.stack([s.failed() for s in states]).flatten().tolist()
    assert failed == [p is None for p in map(parse_belief_answer, replies)] == [False, True, False, True, False, False] * 2
    assert states[0].level_probs[0, 0].tolist() == [0, 0, 0, 0, 1] and states[2].level_probs[1, 1].tolist() == [0, 0, 1, 0, 0]
    assert controlled.unparseable_belief_examples == ["no idea", "7", "no idea", "7"]


def test_lm_run_with_failed_answers_scores_them_as_undefined(tiny):
    assistant = LMAssistant(tiny, mode="generate", batch_size=8)
    flight2 = get_domain("flight2")
    assistant.scorer.generate = lambda conversations, **_: [
        "My estimate is 4." if i % 4 else "?" for i in range(len(conversations))
    ]
    run = run_with_beliefs(flight2, assistant, n_users=2, n_heldout=3, seed=0)
    metrics = per_user_metrics(run)
    assert run.beliefs.failures.any()
    rate = run.beliefs.failures.double().mean(-1)
    assert torch.equal(metrics["belief_failure_rate"], rate)
    undefined = run.beliefs.failures.any(-1)  # a failed answer leaves that user-round's implied pick undefined
    assert (run.beliefs.implied_picks[undefined] == -1).all() and (metrics["consistency"][undefined] == 0).all()
    assert "belief_tv" not in metrics  # decoded answers are not distributions


@pytest.mark.slow
def test_cli_evaluate_writes_the_belief_metrics(tmp_path):
    runner = CliRunner()
    out = tmp_path / "bayes"
    result = runner.invoke(main, ["evaluate", "--assistant", "bayesian", "--elicit-beliefs", "--users", "5",
                                  "--heldout", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for name in ("belief_error", "belief_tv", "belief_sign_agreement", "implied_accuracy", "consistency", "belief_failure_rate"):
        assert len(report["metrics"][name]["mean"]) == 6 and len(report["metrics"][name]["ci95"]) == 6
    assert max(report["metrics"]["belief_error"]["mean"]) <= 1e-6
    assert report["beliefs"]["elicited"] and report["beliefs"]["levels"]["price"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert report["failures"]["unparseable_belief_answers"] == 0 and report["beliefs"]["questions"] == 5 * 6 * 4
    # stated against posterior weights (left) and the four belief metrics' curves (right: C0-C3)
    check_plot_png(out / "beliefs.png", (11, 4.2), dpi=110, series=4)
    assert "stated beliefs" in result.output and "implied acc %" in result.output
    # Off with --no-elicit-beliefs; an explicit request on webshop is a one-line error.
    result = runner.invoke(main, ["evaluate", "--assistant", "random", "--no-elicit-beliefs", "--users", "3",
                                  "--heldout", "5", "--out", str(tmp_path / "random")])
    assert result.exit_code == 0 and "beliefs" not in json.loads((tmp_path / "random" / "report.json").read_text())
    result = runner.invoke(main, ["evaluate", "--domain", "webshop", "--assistant", "bayesian", "--elicit-beliefs",
                                  "--users", "2", "--out", str(tmp_path / "webshop")])
    assert result.exit_code == 2 and "cannot elicit beliefs on domain 'webshop'" in result.output
    assert "Traceback" not in result.output

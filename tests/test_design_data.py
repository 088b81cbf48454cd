"""Design teaching data (distill/design_data.py, make-data --task design): each example answers with the
candidate of highest information gain by a brute-force count, soft targets are the normalised brute-force
gains, the history is the designer's own dialogue, the held-out users are the recommendation task's, files
are reproducible, and the command line round-trips and refuses what the design task has not."""
import hashlib
import json
import re

import pytest
import torch
from click.testing import CliRunner

import brute_force
from cli import main
from distill.design_data import build_design_examples, gain_distribution, write_design_set
from distill.teaching_data import held_out_users, split_users, teaching_set_template, write_teaching_set
from distill.training.chat_dataset import load_chat_jsonl
from eval.design import active_dialogues
from eval.text.dialogue import design_prompt_messages, default_template
from ppl_models import get_domain
from ppl_models.errors import BayesTeachError
from ppl_models.rng import generator

ANSWER = re.compile(r"Show me set (\d+)\.")
CHOSE = re.compile(r"I chose \w+ (\d+)\.")
SET_HEADER = re.compile(r"^Set (\d+):$", re.MULTILINE)


def replay(domain, examples, users, n_dialogues, seed, n_candidates):
    """Walk the examples dialogue by dialogue and round by round, checking each prompt against the
    candidates drawn independently from the teaching stream and the history read from the examples (the sets
    the earlier answers named, the choices the later prompts report); yield (dialogue, round, example,
    candidates [K, O, F], shown sets so far [r, O, F], choices so far [r])."""
    n_rounds = domain.n_rounds
    assert len(examples) == len(users) * n_dialogues * n_rounds
    n = len(users) * n_dialogues
    candidates = torch.stack([domain.draw_options(generator(seed, "design-teaching", "candidates", r), (n, n_candidates))
                              for r in range(n_rounds)], dim=1)  # [N, R, K, O, F]
    for d in range(n):
        rounds = examples[d * n_rounds: (d + 1) * n_rounds]
        picks = [int(ANSWER.fullmatch(e["messages"][1]["content"]).group(1)) - 1 for e in rounds]
        # the choices of rounds 1..R-1 are told in the last example's history
        choices = [int(c) - 1 for c in CHOSE.findall(rounds[-1]["messages"][0]["content"])]
        assert len(choices) == n_rounds - 1
        shown = torch.stack([candidates[d, r, picks[r]] for r in range(n_rounds)])
        for r, example in enumerate(rounds):
            assert [m["role"] for m in example["messages"]] == ["user", "assistant"]
            prompt = example["messages"][0]["content"]
            assert [int(k) for k in SET_HEADER.findall(prompt)] == list(range(1, n_candidates + 1))
            # (c) the history is the designer's own: the sets named by the earlier answers, the users' choices
            want = design_prompt_messages(domain, shown[:r], choices[:r], candidates[d, r])
            assert example["messages"][:1] == want, (d, r)
            yield d, r, example, candidates[d, r], shown[:r], torch.tensor(choices[:r], dtype=torch.long)


def brute_gains(domain, shown, choices, candidates):
    post = brute_force.posterior(domain, shown, choices, domain.temperature, domain.lapse)
    return [brute_force.linear_information_gain(domain, post, c.tolist(), domain.temperature, domain.lapse)
            for c in candidates]


@pytest.mark.parametrize("name,n_candidates", [("flight", 4), ("hotel", 3)])
def test_answers_name_the_most_informative_candidate_and_soft_targets_are_the_normalised_gains(name, n_candidates):
    domain = get_domain(name)
    users, n_dialogues, seed = torch.tensor([5, 130, 401]), 2, 3
    hard = build_design_examples(domain, "bayesian", users, n_dialogues, seed, n_candidates)
    soft = build_design_examples(domain, "soft", users, n_dialogues, seed, n_candidates)
    assert [e["messages"] for e in soft] == [e["messages"] for e in hard]  # the same answers, plus the gains
    answers, strict_wins = [], 0
    for d, r, example, candidates, shown, choices in replay(domain, soft, users, n_dialogues, seed, n_candidates):
        gains = brute_gains(domain, shown, choices, candidates)
        pick = int(ANSWER.fullmatch(example["messages"][1]["content"]).group(1)) - 1
        answers.append(pick)
        assert gains[pick] >= max(gains) - 1e-6, (d, r, gains, pick)  # (a) the designer's pick is the best
        strict_wins += sum(g < max(gains) - 1e-3 for g in gains) > 0
        (target,) = example["soft_targets"]
        assert target["message_index"] == 1
        assert target["candidates"] == [f"Show me set {k}." for k in range(1, n_candidates + 1)]
        total = sum(max(g, 0.0) for g in gains)
        want = [max(g, 0.0) / total for g in gains] if total > 1e-12 else [1 / n_candidates] * n_candidates
        assert sum(target["probs"]) == pytest.approx(1, abs=1e-5)  # (b)
        assert target["probs"] == pytest.approx(want, abs=1e-5), (d, r)
    assert "soft_targets" not in hard[0]
    # not a check that passes whatever the pick: the candidates differ in gain, and the picks differ in label
    assert strict_wins > len(answers) // 2 and len(set(answers)) > 1


def test_gain_distribution_is_uniform_when_nothing_can_be_learnt():
    assert gain_distribution(torch.zeros(4, dtype=torch.float64)) == [0.25] * 4
    assert gain_distribution(torch.tensor([0.0, 3.0, -1e-17, 1.0], dtype=torch.float64)) == [0.0, 0.75, 0.0, 0.25]


def test_the_teaching_stream_is_not_evaluations():
    flight = get_domain("flight")
    users = torch.tensor([7, 8, 9])
    taught = active_dialogues(flight, users, 0, 4, stream="design-teaching", keep_candidates=True)
    evaluated = active_dialogues(flight, users, 0, 4)
    assert not torch.equal(taught[0], evaluated[0])
    record = taught[2]
    assert record.candidates.shape == (3, flight.n_rounds, 4, flight.n_options, len(flight.features))
    assert record.candidate_gains.shape == (3, flight.n_rounds, 4) and record.candidate_gains.dtype == torch.float64
    rows = torch.arange(3)
    for r in range(flight.n_rounds):  # the shown set is candidate `pick`, and its gain is the recorded one
        assert torch.equal(taught[0][:, r], record.candidates[rows, r, record.picks[:, r]])
        assert torch.equal(record.information_gain[:, r], record.candidate_gains[rows, r, record.picks[:, r]])
    assert evaluated[2].candidates is None and evaluated[2].candidate_gains is None  # kept on request only
    for r in range(flight.n_rounds):  # the picks are always kept: the shown set is the evaluation stream's candidate
        candidates = flight.draw_options(generator(0, "design", "candidates", r), (3, 4))
        assert torch.equal(evaluated[0][:, r], candidates[rows, evaluated[2].picks[:, r]])


def test_written_sets_hold_out_the_recommendation_tasks_users_and_are_reproducible(tmp_path):
    hotel = get_domain("hotel")
    kwargs = dict(n_dialogues=1, n_eval_users=100, seed=4, max_train_users=6)
    first = write_design_set(hotel, "soft", tmp_path / "a", **kwargs)
    again = write_design_set(hotel, "soft", tmp_path / "b", **kwargs)
    other = write_design_set(hotel, "soft", tmp_path / "c", **dict(kwargs, seed=5))
    recommend = write_teaching_set(hotel, "bayesian", tmp_path / "r", n_dialogues=1, n_eval_users=100, seed=4,
                                   max_train_users=6, n_rounds=1)
    name = "train-design-soft.jsonl"
    data = (tmp_path / "a" / name).read_bytes()
    assert data == (tmp_path / "b" / name).read_bytes()  # (e)
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    assert data != (tmp_path / "c" / name).read_bytes()
    assert first["files"] == {name: hashlib.sha256(data).hexdigest()} == again["files"]
    # (d) the held-out users are the recommendation task's for this seed, and no teaching user is one of them
    train_users, eval_users = split_users(hotel, 100, seed=4)
    assert first["eval_users"] == recommend["eval_users"] == eval_users.tolist()
    assert other["eval_users"] != first["eval_users"]
    assert held_out_users(tmp_path / "a", hotel).tolist() == eval_users.tolist()
    assert first["counts"] == {"train_users": 6, "eval_users": 100, "dialogues": 6, "examples": 6 * hotel.n_rounds}
    assert recommend["counts"]["train_users"] == 6
    # by construction: the file is the examples of the six teaching users (the recommendation task's subset)
    order = torch.randperm(len(train_users), generator=generator(4, "train-users"))
    subset = train_users[order[:6]].sort().values
    assert set(subset.tolist()).isdisjoint(eval_users.tolist())
    examples = [json.loads(line) for line in data.decode().splitlines()]
    assert examples == build_design_examples(hotel, "soft", subset, 1, 4, 4)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    recommend_manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert set(manifest) == set(recommend_manifest) | {"n_candidates"}
    assert (manifest["task"], recommend_manifest["task"]) == ("design", "recommend")
    assert manifest["n_candidates"] == 4 and manifest["teacher"] == "soft" and manifest["n_rounds"] == hotel.n_rounds
    assert teaching_set_template(tmp_path / "a" / name).sha256 == default_template().sha256
    # the trainer reads the soft targets as they are written
    loaded = load_chat_jsonl(tmp_path / "a" / name)
    assert len(loaded) == len(examples)
    (target,) = loaded[0].soft_targets
    assert target.message_index == 1 and list(target.probs) == pytest.approx(examples[0]["soft_targets"][0]["probs"], abs=1e-6)


def test_the_design_task_has_no_oracle_and_needs_a_choice(tmp_path):
    flight = get_domain("flight")
    with pytest.raises(BayesTeachError, match="the design task has no oracle"):
        build_design_examples(flight, "oracle", torch.tensor([1]), 1, 0)
    with pytest.raises(BayesTeachError, match="the design task has no oracle"):
        write_design_set(flight, "oracle", tmp_path / "x")
    with pytest.raises(BayesTeachError, match="at least 2 candidates"):
        build_design_examples(flight, "bayesian", torch.tensor([1]), 1, 0, n_candidates=1)
    assert not (tmp_path / "x").exists()


def test_the_commands_default_candidates_are_the_lm_designers():
    from commands.common import DEFAULT_LM_CANDIDATES as command_default
    from eval.design import DEFAULT_LM_CANDIDATES

    assert command_default == DEFAULT_LM_CANDIDATES


def test_make_data_task_design_round_trip(tmp_path):
    out = tmp_path / "dd"
    result = CliRunner().invoke(main, ["make-data", "--task", "design", "--domain", "flight", "--eval-users", "10",
                                       "--dialogues", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "design" and manifest["teacher"] == "bayesian" and manifest["n_candidates"] == 4
    assert manifest["counts"] == {"train_users": 614, "eval_users": 10, "dialogues": 614, "examples": 614 * 5}
    assert result.output.strip() == f"3070 design examples (bayesian designer, 4 candidates) from 614 users -> {out}"
    lines = (out / "train-design-bayesian.jsonl").read_text().splitlines()
    assert len(lines) == 3070
    flight = get_domain("flight")
    assert manifest["eval_users"] == split_users(flight, 10, 0)[1].tolist()
    # the first round of the first dialogues: the candidates of the teaching stream (all 614 dialogues draw at
    # once), no history, and the answer names the most informative under the prior
    round_one = flight.draw_options(generator(0, "design-teaching", "candidates", 0), (614, 4))
    no_history = torch.zeros((0, flight.n_options, len(flight.features)), dtype=torch.long)
    for d in range(3):
        example = json.loads(lines[d * flight.n_rounds])
        assert example["messages"][:1] == design_prompt_messages(flight, no_history, [], round_one[d])
        gains = brute_gains(flight, no_history, torch.zeros(0, dtype=torch.long), round_one[d])
        pick = int(ANSWER.fullmatch(example["messages"][1]["content"]).group(1)) - 1
        assert gains[pick] >= max(gains) - 1e-6


@pytest.mark.parametrize("args,message", [
    (["--task", "design", "--teacher", "oracle"], "the design task has no oracle"),
    (["--task", "design", "--prefixes", "longest"], "--prefixes does nothing with --task design"),
    (["--candidates", "3"], "--candidates does nothing with --task recommend"),
    (["--task", "design", "--candidates", "1"], "'--candidates': 1 is not in the range"),
])
def test_make_data_refuses_what_the_task_has_not_before_any_work(args, message, tmp_path):
    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["make-data", "--domain", "flight", *args, "--out", str(out)])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output
    assert not out.exists()


def test_the_trainers_kl_loss_reads_the_design_soft_targets_unchanged(tmp_path, one_torch_thread):
    """The KL term of the training loss on design examples equals KL(gains || softmax of the candidates'
    scores) computed one candidate at a time (test_train's independent computation), on a tiny LM."""
    from distill.training.chat_dataset import collate, tokenize_dataset
    from distill.training.loss import micro_batch_loss
    from test_train import kl_per_soft_target_independently
    from tiny_student_fixtures import build_tiny_llama, build_tiny_tokenizer

    hotel = get_domain("hotel")
    write_design_set(hotel, "soft", tmp_path, n_dialogues=1, n_eval_users=100, seed=2, n_candidates=2,
                     max_train_users=1, n_rounds=2)
    path = tmp_path / "train-design-soft.jsonl"
    conversations = [json.loads(line) for line in path.read_text().splitlines()]
    examples = load_chat_jsonl(path)
    tokenizer = build_tiny_tokenizer(True)
    model = build_tiny_llama(len(tokenizer), seed=3)
    data, report = tokenize_dataset(tokenizer, examples, max_length=8192, with_soft_targets=True)
    assert report.soft_targets_dropped == 0
    batch = collate(data, tokenizer.pad_token_id)
    with torch.no_grad():
        _, _, kl = micro_batch_loss(model, batch, 1, batch.num_soft_targets, kl_weight=1.0)
    expected = kl_per_soft_target_independently(model, tokenizer, conversations)
    assert len(expected) == 2 and kl.item() > 1e-4
    assert kl.item() == pytest.approx(sum(expected) / len(expected), abs=1e-5)

"""Teaching sets: every prefix an example, the right teacher turns, held-out users absent, reproducible bytes."""
import dataclasses
import hashlib
import json
import re

import pytest
import torch

import brute_force
from distill.teaching_data import build_examples, split_users, write_teaching_set
from ppl_models import get_domain, simulate_dialogues

PICK = re.compile(r"The best option is Hotel (\d)\.")
PREFERS = re.compile(r"I prefer Hotel (\d)\.")


def test_every_prefix_is_one_example_and_teachers_differ_as_they_should():
    hotel = get_domain("hotel")
    users = torch.tensor([3, 77, 400])
    bayesian = build_examples(hotel, "bayesian", users, 2, seed=1)
    oracle = build_examples(hotel, "oracle", users, 2, seed=1)
    soft = build_examples(hotel, "soft", users, 2, seed=1)
    assert len(bayesian) == len(oracle) == len(soft) == 3 * 2 * 5
    dialogues = simulate_dialogues(hotel, users, 2, 1, stream="teaching")
    for d in range(6):
        full_b, full_o, full_s = bayesian[5 * d + 4], oracle[5 * d + 4], soft[5 * d + 4]
        for n in range(5):  # shorter examples are prefixes of the longest
            assert bayesian[5 * d + n]["messages"] == full_b["messages"][: 2 * n + 2]
        choices = dialogues.choices[d].tolist()
        user_text = " ".join(m["content"] for m in full_b["messages"] if m["role"] == "user")
        assert [int(c) - 1 for c in PREFERS.findall(user_text)] == choices[:4]  # feedback reveals each choice
        oracle_picks = [int(PICK.match(m["content"]).group(1)) - 1 for m in full_o["messages"] if m["role"] == "assistant"]
        assert oracle_picks == choices
        # Bayesian picks are an argmax of the brute-force posterior predictive given the earlier rounds.
        bayes_picks = [int(PICK.match(m["content"]).group(1)) - 1 for m in full_b["messages"] if m["role"] == "assistant"]
        for r in range(5):
            post = brute_force.posterior(hotel, dialogues.option_index[d, :r], dialogues.choices[d, :r])
            predictive = brute_force.predictive(hotel, post, dialogues.option_index[d, r].tolist())
            assert predictive[bayes_picks[r]] >= max(predictive) - 1e-9
            assert abs(sum(full_s["soft_targets"][r]["probs"]) - 1) < 1e-5
            assert all(abs(a - b) < 1e-5 for a, b in zip(full_s["soft_targets"][r]["probs"], predictive))
            assert full_s["soft_targets"][r]["message_index"] == 2 * r + 1
        assert full_s["messages"] == full_b["messages"]


def test_written_sets_are_reproducible_loadable_and_exclude_evaluation_users(tmp_path):
    hotel = get_domain("hotel")
    first = write_teaching_set(hotel, "soft", tmp_path / "a", n_dialogues=1, n_eval_users=100, seed=4, max_train_users=20)
    again = write_teaching_set(hotel, "soft", tmp_path / "b", n_dialogues=1, n_eval_users=100, seed=4, max_train_users=20)
    data_a = (tmp_path / "a" / "train-soft.jsonl").read_bytes()
    assert data_a == (tmp_path / "b" / "train-soft.jsonl").read_bytes()
    assert first["files"]["train-soft.jsonl"] == hashlib.sha256(data_a).hexdigest() == again["files"]["train-soft.jsonl"]
    assert first["counts"] == {"train_users": 20, "eval_users": 100, "dialogues": 20, "examples": 100}
    train_users, eval_users = split_users(hotel, 100, seed=4)
    assert set(train_users.tolist()).isdisjoint(eval_users.tolist()) and len(train_users) + len(eval_users) == 624
    assert first["eval_users"] == eval_users.tolist()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["teacher"] == "soft" and manifest["domain"] == "hotel"
    import datasets

    loaded = datasets.load_dataset("json", data_files=str(tmp_path / "a" / "train-soft.jsonl"), split="train")
    assert len(loaded) == 100 and loaded[0]["messages"][0]["role"] == "user"


def test_longest_prefixes_are_the_whole_dialogues_of_the_full_set():
    hotel = get_domain("hotel")
    users = torch.tensor([5, 300])
    every = build_examples(hotel, "soft", users, 2, seed=3)
    longest = build_examples(hotel, "soft", users, 2, seed=3, prefixes="longest")
    assert longest == every[4::5]
    with pytest.raises(ValueError, match="prefixes"):
        build_examples(hotel, "soft", users, 2, seed=3, prefixes="some")


def test_teaching_dialogues_can_have_one_round_more_than_the_protocol():
    hotel = get_domain("hotel")
    users = torch.tensor([12, 501])
    examples = build_examples(hotel, "bayesian", users, 2, seed=5, prefixes="longest", n_rounds=6)
    assert len(examples) == 4 and all(len(e["messages"]) == 12 for e in examples)
    six_rounds = simulate_dialogues(dataclasses.replace(hotel, n_rounds=6), users, 2, 5, stream="teaching")
    for d, example in enumerate(examples):
        picks = [int(PICK.match(m["content"]).group(1)) - 1 for m in example["messages"] if m["role"] == "assistant"]
        user_text = " ".join(m["content"] for m in example["messages"] if m["role"] == "user")
        assert "Round 6." in user_text and [int(c) - 1 for c in PREFERS.findall(user_text)] == six_rounds.choices[d, :5].tolist()
        # the sixth pick, after five observed rounds, is an argmax of the brute-force posterior predictive
        post = brute_force.posterior(hotel, six_rounds.option_index[d, :5], six_rounds.choices[d, :5])
        predictive = brute_force.predictive(hotel, post, six_rounds.option_index[d, 5].tolist())
        assert predictive[picks[5]] >= max(predictive) - 1e-9
    with pytest.raises(ValueError, match="n_rounds"):
        build_examples(hotel, "bayesian", users, 1, seed=5, n_rounds=0)


def test_the_manifest_records_the_rounds_per_dialogue(tmp_path):
    manifest = write_teaching_set(get_domain("hotel"), "oracle", tmp_path, n_dialogues=1, n_eval_users=10, seed=0,
                                  max_train_users=3, n_rounds=6)
    assert manifest["n_rounds"] == 6 and manifest["counts"]["examples"] == 3 * 6
    lines = (tmp_path / "train-oracle.jsonl").read_text().splitlines()
    assert max(len(json.loads(line)["messages"]) for line in lines) == 12

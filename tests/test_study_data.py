"""Replay of the study's released files, on the excerpts in tests/data/study_sample (see PROVENANCE.md there).

The expected values are computed here from the files' own JSON (scaled values, reward_fn, picks) with plain
loops, not through the package's parser or inference."""
import itertools
import re
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import tiny_lm
from cli import main
from eval.assistants import BayesianAssistant, OracleAssistant, RandomAssistant
from eval.text.dialogue import options_text
from eval.study.released import load_study, parse_option
from eval.study.replay import replay_study
from ppl_models import get_domain

SAMPLE = Path(__file__).parent / "data" / "study_sample"
INTERACTION = SAMPLE / "eval" / "interaction"
FILES = {"flight": "flight", "flight_2features": "flight2", "flight_3features": "flight3",
         "flight_5features": "flight5", "flight_6features": "flight6", "flight_7features": "flight7",
         "flight_8features": "flight8", "flight_human": "flight", "hotel": "hotel"}
LEVELS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def lines(name):
    return [json.loads(line) for line in (INTERACTION / f"{name}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_sample_option_text_parses_to_its_scaled_values(name):
    domain = get_domain(FILES[name])
    sets = [(round_["options"], numpy) for line in lines(name) for round_, numpy in zip(line["rounds"], line["rounds_numpy"])]
    heldout = SAMPLE / "eval" / "heldout" / f"{'flight' if name == 'flight_human' else name}.json"
    if heldout.exists():
        data = json.loads(heldout.read_text())
        sets += list(zip(data["all_options"], data["all_options_numpy"]))
    assert len(sets) >= 15
    for texts, numpy in sets:
        for position, (text, values) in enumerate(zip(texts, numpy)):
            index = parse_option(domain, text, position, "test")
            assert [domain.features[f].normalised[i] for f, i in enumerate(index)] == pytest.approx(values, abs=1e-12)
            # and our own text of those values is the released string
            assert f"{domain.noun.title()} {position + 1}: {domain.option_text(index)}" == text


def brute_force_predictive(weights_list, dialogue_numpy, choices, set_numpy):
    """p(each option) of a held-out set after the dialogue's rounds, over every non-zero weight vector of the
    grid, for deterministic users (ties split evenly): plain loops over the files' scaled values."""
    def choice_probs(w, options):
        utilities = [sum(a * x for a, x in zip(w, option)) for option in options]
        tied = [u >= max(utilities) - 1e-9 for u in utilities]
        return [t / sum(tied) for t in tied]

    posterior = {}
    for w in weights_list:
        p = 1.0
        for options, choice in zip(dialogue_numpy, choices):
            p *= choice_probs(w, options)[choice]
        posterior[w] = p
    total = sum(posterior.values())
    out = [0.0] * len(set_numpy)
    for w, p in posterior.items():
        for o, q in enumerate(choice_probs(w, set_numpy)):
            out[o] += p / total * q
    return out


@pytest.mark.parametrize("name,study_file", [("flight", None), ("hotel", None), ("flight", "flight_human")])
def test_bayesian_replay_matches_a_brute_force_computation_on_the_file(name, study_file):
    domain = get_domain(name)
    study = load_study(domain, SAMPLE, study_file)
    run, report = replay_study(study, BayesianAssistant(), seed=0)
    users = lines(study_file or name)
    heldout = json.loads((SAMPLE / "eval" / "heldout" / f"{name}.json").read_text())
    picks_of = {tuple(u["reward_fn"]): u["idxs"] for u in heldout["user_idxs"]}
    weights_list = [w for w in itertools.product(LEVELS, repeat=len(domain.features)) if any(w)]
    assert run.picks.shape == (len(users), 6, len(heldout["all_options"]))
    correct = torch.zeros(len(users), 6)
    for u, line in enumerate(users):
        dialogue = line["rounds_numpy"]
        choices = [r["user_idx"] for r in line["rounds"]]
        assert run.dialogue_choices[u].tolist() == choices
        key = tuple(float(w) for w in line["reward_fn"])
        for k in range(6):
            for m, set_numpy in enumerate(heldout["all_options_numpy"]):
                expected = brute_force_predictive(weights_list, dialogue[:k], choices[:k], set_numpy)
                assert run.probs[u, k, m].tolist() == pytest.approx(expected, abs=1e-6)
                best = [o for o, p in enumerate(expected) if p >= max(expected) - 1e-6]
                assert int(run.picks[u, k, m]) in best
                if key in picks_of:  # the file's pick for this reward_fn
                    truth = picks_of[key][m]
                else:  # an excerpt without this person's weights: the weights' best (ties: the run's draw)
                    utilities = [sum(a * x for a, x in zip(key, o)) for o in set_numpy]
                    tied = [o for o, v in enumerate(utilities) if v >= max(utilities) - 1e-9]
                    assert int(run.heldout_choices[u, m]) in tied
                    truth = int(run.heldout_choices[u, m])
                correct[u, k] += int(run.picks[u, k, m]) == truth
    expected_accuracy = (correct / len(heldout["all_options"])).mean(0)
    assert report["accuracy"] == pytest.approx(expected_accuracy.tolist(), abs=1e-6)
    assert report["study_data"]["empty_posterior"] == [] and report["n_users"] == 3
    assert [f["lines"] for f in report["study_data"]["files"]][0] == 3
    if study_file == "flight_human":
        assert report["study_data"]["kind"] == "human" and [u["idx"] for u in report["study_data"]["users"]] == [0, 0, 0]


@pytest.mark.parametrize("name", ["flight_2features", "flight_5features"])
def test_variants_without_a_heldout_file_replay_their_rounds_on_drawn_sets(name):
    domain = get_domain(FILES[name])
    study = load_study(domain, SAMPLE, name, n_heldout=4)
    assert "heldout_drawn" in study.notes and study.data.heldout_options.shape == (3, 4, 3, len(domain.features))
    run, _ = replay_study(study, BayesianAssistant())
    weights_list = [w for w in itertools.product(LEVELS, repeat=len(domain.features)) if any(w)]
    for u, line in enumerate(lines(name)):
        choices = [r["user_idx"] for r in line["rounds"]]
        for m in range(4):
            set_numpy = [[domain.features[f].normalised[i] for f, i in enumerate(row)]
                         for row in study.data.heldout_options[u, m].tolist()]
            utilities = [sum(a * x for a, x in zip(line["reward_fn"], o)) for o in set_numpy]
            assert utilities[int(run.heldout_choices[u, m])] >= max(utilities) - 1e-9  # the user's weights chose
            for k in (0, 5):
                expected = brute_force_predictive(weights_list, line["rounds_numpy"][:k], choices[:k], set_numpy)
                assert run.probs[u, k, m].tolist() == pytest.approx(expected, abs=1e-6)


def test_a_human_whose_choices_no_user_model_explains_is_reported_not_a_crash(tmp_path):
    """Four rounds whose options differ in one feature only, the middle value picked each time: only the
    excluded all-zero weight vector explains that, so the posterior is empty after round 4."""
    root = tmp_path / "release"
    shutil.copytree(SAMPLE, root)
    flight = get_domain("flight")
    line = lines("flight_human")[0]
    for r in range(4):
        rows = [[5, 5, 1, 5] for _ in range(3)]
        for o in range(3):
            rows[o][r] = [0, 1, 2][o] * (5 if r != 2 else 1)  # values 0, 0.5, 1 of feature r
        line["rounds"][r] = {"options": [f"Flight {o + 1}: {flight.option_text(row)}" for o, row in enumerate(rows)], "user_idx": 1}
        line["rounds_numpy"][r] = flight.options(torch.tensor(rows)).value.tolist()
    (root / "eval" / "interaction" / "flight_human.jsonl").write_text(json.dumps(line) + "\n")
    runner = CliRunner()
    common = ["evaluate", "--domain", "flight", "--study-data", str(root), "--study-file", "flight_human", "--assistant", "bayesian"]
    result = runner.invoke(main, common + ["--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["study_data"]["empty_posterior"] == [{"line": 1, "idx": 0, "after_round": 4}]
    assert "line 1 after round 4" in result.output
    assert report["metrics"]["failure_rate"]["mean"] == [0, 0, 0, 0, 1, 1]  # it abstains once its posterior is empty
    assert report["accuracy"][4:] == [0, 0]
    noisy = runner.invoke(main, common + ["--user-lapse", "0.05", "--out", str(tmp_path / "b")])
    assert noisy.exit_code == 0, noisy.output
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["study_data"]["empty_posterior"] == [] and report["failures"]["unparseable_answers"] == 0


def test_webshop_replay_oracle_random_and_the_released_texts():
    study = load_study(get_domain("webshop"), SAMPLE, "webshop/area_rugs")
    interaction = lines("webshop/area_rugs")[0]
    heldout = json.loads((SAMPLE / "eval" / "heldout" / "webshop" / "area_rugs.jsonl").read_text().splitlines()[0])
    assert study.notes == {"no_heldout_line": [2, 3]} and study.idx == [0]
    # An LM would read the released strings, option for option.
    assert options_text(study.domain, study.data.dialogue_options[0, 0]) == "\n".join(interaction["rounds"][0]["options"])
    assert options_text(study.domain, study.data.heldout_options[0, 3]) == "\n".join(heldout["all_options"][3]["options"])
    _, oracle = replay_study(study, OracleAssistant())
    best_is_pick = [s["score"].index(max(s["score"])) == s["user_idx"] for s in heldout["all_options"]]
    assert oracle["accuracy"] == [sum(best_is_pick) / len(best_is_pick)] * 6
    assert oracle["metrics"]["score_vs_best"]["mean"] == [1.0] * 6
    run, random = replay_study(study, RandomAssistant(), seed=3)
    expected = [sum(s["score"][int(p)] / max(s["score"]) if max(s["score"]) > 0 else 1.0
                    for s, p in zip(heldout["all_options"], run.picks[0, k])) / len(heldout["all_options"]) for k in range(6)]
    assert random["metrics"]["score_vs_best"]["mean"] == pytest.approx(expected, abs=1e-6)
    assert "agreement_with_bayesian" not in random["metrics"]
    with pytest.raises(ValueError, match="no exact Bayesian assistant"):
        replay_study(study, BayesianAssistant())


def test_an_lm_replays_the_webshop_file(tmp_path):
    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    result = CliRunner().invoke(main, ["evaluate", "--domain", "webshop", "--study-data", str(SAMPLE), "--study-file",
                                       "webshop/area_rugs", "--model", str(model_dir), "--heldout", "1", "--out", str(tmp_path / "lm")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "lm" / "report.json").read_text())
    assert report["n_users"] == 1 and report["n_heldout"] == 1 and "score_vs_best" in report["metrics"]


def _edit(path, change):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    change(rows[1])
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda row: row.pop("reward_fn"), r"flight.jsonl:2: missing key 'reward_fn'"),
        (lambda row: row["rounds"][2]["options"].pop(), r"flight.jsonl:2 round 3: 'options' must be 3 option texts"),
        (lambda row: row["rounds"][0].update(user_idx=3), r"flight.jsonl:2 round 1: 'user_idx' 3 is not an option index"),
        (lambda row: row["features"].reverse(), r"flight.jsonl:2: 'features' .* do not match domain 'flight'"),
        (lambda row: row["rounds"][1]["options"].__setitem__(0, row["rounds"][1]["options"][0].replace("$", "EUR ")),
         r"flight.jsonl:2 rounds\[1\]\[0\]: price text 'EUR \d+' is not on domain 'flight'"),
    ],
)
def test_bad_release_files_give_one_line_naming_file_line_and_key(tmp_path, change, message):
    root = tmp_path / "release"
    shutil.copytree(SAMPLE, root)
    _edit(root / "eval" / "interaction" / "flight.jsonl", change)
    result = CliRunner().invoke(main, ["evaluate", "--domain", "flight", "--assistant", "random", "--study-data", str(root),
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in result.output
    assert re.search(message, error[0]), error[0]


def test_a_folder_without_the_domains_file_names_the_file_it_looked_for(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--domain", "flight5", "--assistant", "random", "--study-data",
                                       str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "eval/interaction/flight_5features.jsonl" in result.output

"""The command line, through click's CliRunner."""
import json

import pytest
from click.testing import CliRunner

import torch

import brute_force
import tiny_lm
from cli import main
from ppl_models import get_domain
from png_checks import check_plot_png


@pytest.fixture
def runner():
    return CliRunner()


def test_domains_lists_features(runner):
    result = runner.invoke(main, ["domains"])
    assert result.exit_code == 0
    assert "flight:" in result.output and "hotel:" in result.output
    assert "departure time (11 values): 06:00 AM | 07:36 AM | ... | 10:00 PM" in result.output


def test_simulate_prints_a_table_and_writes_the_report(runner, tmp_path):
    out = tmp_path / "report.json"
    result = runner.invoke(main, ["simulate", "--domain", "hotel", "--users", "40", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["domain"], report["assistant"], report["n_users"], report["seed"]) == ("hotel", "bayesian", 40, 3)
    assert len(report["accuracy"]) == 6 and len(report["ci95"]) == 6
    assert report["accuracy"][5] > report["accuracy"][0] + 0.2
    assert all(lo <= a <= hi for a, (lo, hi) in zip(report["accuracy"], report["ci95"]))
    first_row = [line for line in result.output.splitlines() if line.strip().startswith("0 ")][0]
    assert f"{100 * report['accuracy'][0]:.1f}" in first_row


def _dialogue(choice=2):
    option = {"departure time": "06:00 AM", "duration": "30 min", "number of stops": 0, "price": "$1000"}
    cheap = dict(option, price=100)
    late = dict(option, **{"departure time": "10:00 PM"})
    return {"rounds": [{"options": [option, cheap, late], "choice": choice}]}


def test_posterior_shows_marginals_after_each_round(runner, tmp_path):
    path = tmp_path / "dialogue.json"
    path.write_text(json.dumps(_dialogue()))
    out = tmp_path / "marginals.json"
    result = runner.invoke(main, ["posterior", "--domain", "flight", "--dialogue", str(path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    rounds = json.loads(out.read_text())["rounds"]
    price = rounds[1]["marginals"]["weight[price]"]
    # Choosing the cheap copy of an otherwise identical flight rules out every user who likes high prices.
    assert price["0.5"] == 0 and price["1.0"] == 0
    # The rest against the brute-force posterior (options by index: price $1000 = 10, $100 = 0; 10 PM = 10).
    flight = get_domain("flight")
    options = torch.tensor([[[0, 0, 0, 10], [0, 0, 0, 0], [10, 0, 0, 10]]])
    expected = brute_force.posterior(flight, options, torch.tensor([1]))
    for level in ("-1.0", "-0.5", "0.0"):
        want = sum(p for w, p in expected.items() if w[3] == float(level))
        assert abs(price[level] - want) < 1e-6


@pytest.mark.parametrize(
    "args,content,message",
    [
        (["simulate", "--domain", "boats"], None, "unknown domain 'boats'"),
        (["simulate", "--domain", "ppl_models.domains.flight:flight_domain(9)"], None, "2 to 8 features, not 9"),
        (["simulate", "--domain", "ppl_models.domains.flight:flight_domain(x)"], None, "must be a whole number"),
        (["posterior", "--dialogue", "MISSING"], None, "no dialogue file"),
        (["posterior", "--dialogue", "FILE"], "{not json", "is not valid JSON"),
        (["posterior", "--dialogue", "FILE"], json.dumps(_dialogue(choice=4)), "choice must be an option number from 1 to 3"),
        (["posterior", "--dialogue", "FILE"], json.dumps({"rounds": [{"options": [{}, {}, {}], "choice": 1}]}), "lacks feature"),
        (["plot", "MISSING", "--out", "x.png"], None, "no report at"),
        (["plot", "FILE", "--out", "x.png"], json.dumps({"rounds": 5}), "is not a bayes-teach report"),
        (["simulate", "--domain", "flight", "--catalog", "FILE"], "x", "--catalog only applies to --domain webshop"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(runner, tmp_path, args, content, message):
    path = tmp_path / "input.json"
    if content is not None:
        path.write_text(content)
    args = [str(path) if a == "FILE" else str(tmp_path / "missing.json") if a == "MISSING" else a for a in args]
    result = runner.invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("bug", [ValueError("bug"), KeyError("bug"), TypeError("bug"), RuntimeError("bug")])
def test_a_bug_keeps_its_traceback_and_is_not_called_bad_input(runner, tmp_path, monkeypatch, bug):
    import eval.dialogue_io

    def broken(domain, path):
        raise bug

    monkeypatch.setattr(eval.dialogue_io, "read_dialogue", broken)
    path = tmp_path / "dialogue.json"
    path.write_text(json.dumps(_dialogue()))
    result = runner.invoke(main, ["posterior", "--domain", "flight", "--dialogue", str(path)])
    assert result.exit_code == 1  # an uncaught exception: CliRunner keeps it; python would print its traceback
    assert result.exception is bug
    assert "Error:" not in result.output


def test_the_same_place_raising_a_project_error_is_bad_input(runner, tmp_path, monkeypatch):
    import eval.dialogue_io
    from ppl_models.errors import BayesTeachError

    def rejects(domain, path):
        raise BayesTeachError(f"{path}: not a dialogue\nsecond line")

    monkeypatch.setattr(eval.dialogue_io, "read_dialogue", rejects)
    path = tmp_path / "dialogue.json"
    path.write_text(json.dumps(_dialogue()))
    result = runner.invoke(main, ["posterior", "--domain", "flight", "--dialogue", str(path)])
    assert result.exit_code == 2 and result.output.strip() == f"Error: {path}: not a dialogue"
    debug = runner.invoke(main, ["--debug", "posterior", "--domain", "flight", "--dialogue", str(path)])
    assert debug.exit_code == 1 and isinstance(debug.exception, BayesTeachError)


def test_is_bad_input_takes_the_project_errors_and_user_paths_only():
    from commands.errors import is_bad_input
    from distill.training.model_setup import QuantizationUnavailableError
    from distill.training.config import OutputDirInUseError
    from ppl_models import UnknownDomainError

    for error in (UnknownDomainError("x"), QuantizationUnavailableError("x"), OutputDirInUseError("x"),
                  FileNotFoundError("x"), IsADirectoryError("x"), NotADirectoryError("x"), PermissionError("x")):
        assert is_bad_input(error), error
    for error in (ValueError("x"), KeyError("x"), TypeError("x"), RuntimeError("x"), IndexError("x"),
                  ImportError("x"), OSError("x"), json.JSONDecodeError("x", "doc", 0)):
        assert not is_bad_input(error), error


def test_every_project_error_class_derives_from_the_one_base():
    import importlib
    import inspect
    import pkgutil

    from ppl_models.errors import BayesTeachError

    found = {}
    for package in ("ppl_models", "eval", "distill"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                    found[f"{info.name}.{name}"] = value
    # the collection found the classes it should (a floor, so that a broken walk cannot pass by finding none)
    for name in ("ppl_models.domain.DomainError", "eval.study.files.StudyDataError", "distill.training.config.ConfigError",
                 "distill.training.model_setup.QuantizationUnavailableError", "eval.dialogue_io.DialogueFileError"):
        assert name in found, name
    assert [name for name, cls in found.items() if not issubclass(cls, BayesTeachError)] == []
    assert issubclass(BayesTeachError, ValueError)  # ``except ValueError`` keeps catching every one of them


@pytest.mark.slow
def test_evaluate_a_local_language_model_in_both_modes(runner, tmp_path):
    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    for mode in ("score", "generate"):
        out = tmp_path / mode
        result = runner.invoke(main, ["evaluate", "--domain", "flight", "--model", str(model_dir), "--mode", mode,
                                      "--users", "3", "--heldout", "2", "--out", str(out)])
        assert result.exit_code == 0, result.output
        report = json.loads((out / "report.json").read_text())
        assert report["model"] == str(model_dir) and report["mode"] == mode and report["n_users"] == 3
        check_plot_png(out / "accuracy.png", (6.4, 4.2), dpi=120, series=3)  # the model, Bayesian, random
        assert len(report["metrics"]["agreement_with_bayesian"]["mean"]) == 6
        if mode == "score":
            assert "kl_from_bayesian" in report["metrics"] and "log_loss" in report["metrics"]
        else:  # a random tiny model rarely names an option; every such answer is counted, none crash the run
            assert report["failures"]["unparseable_answers"] == round(
                sum(report["metrics"]["failure_rate"]["mean"]) * 3 * 2
            )


def test_evaluate_rejects_an_adapter_for_another_model(runner, tmp_path):
    base = tiny_lm.save_tiny_lm(tmp_path / "a")
    other = tiny_lm.save_tiny_lm(tmp_path / "b", hidden_size=48)
    adapter = tiny_lm.save_tiny_lora_adapter(other, tmp_path / "adapter")
    result = runner.invoke(main, ["evaluate", "--model", str(base), "--adapter", str(adapter), "--users", "2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "adapter" in result.output and "Traceback" not in result.output


def test_evaluate_on_the_users_a_teaching_set_held_out(runner, tmp_path):
    from eval.assistants import BayesianAssistant
    from eval.protocol import run_protocol

    data = tmp_path / "data"
    made = runner.invoke(main, ["make-data", "--domain", "flight", "--dialogues", "1", "--eval-users", "5", "--out", str(data)])
    assert made.exit_code == 0, made.output
    manifest = json.loads((data / "manifest.json").read_text())
    result = runner.invoke(main, ["evaluate", "--domain", "flight", "--assistant", "bayesian", "--users-of", str(data),
                                  "--users", "3", "--heldout", "4", "--no-elicit-beliefs", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["users_of"]["users"] == manifest["eval_users"][:3]
    expected = run_protocol(get_domain("flight"), BayesianAssistant(), users=torch.tensor(manifest["eval_users"][:3]),
                            seed=0, n_heldout=4)
    correct = (expected.picks == expected.heldout_choices[:, None, :]).float()  # [N, R+1, M]
    assert report["accuracy"] == pytest.approx(correct.mean(dim=(0, 2)).tolist())
    wrong = runner.invoke(main, ["evaluate", "--domain", "hotel", "--assistant", "bayesian", "--users-of", str(data),
                                 "--out", str(tmp_path / "h")])
    assert wrong.exit_code == 2 and "held out flight users, not hotel users" in wrong.output
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "empty.json").write_text(json.dumps({**manifest, "eval_users": []}))
    for name, message in [("list.json", "not a teaching set's manifest"), ("empty.json", "held out no users")]:
        bad = runner.invoke(main, ["evaluate", "--domain", "flight", "--assistant", "bayesian", "--users-of",
                                   str(tmp_path / name), "--out", str(tmp_path / "b")])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_webshop_runs_through_simulate_and_evaluate(runner, tmp_path):
    out = tmp_path / "webshop.json"
    result = runner.invoke(main, ["simulate", "--domain", "webshop", "--users", "30", "--heldout", "20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["domain"] == "webshop" and report["accuracy"][5] > report["accuracy"][0]
    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    result = runner.invoke(main, ["evaluate", "--domain", "webshop", "--model", str(model_dir), "--users", "2",
                                  "--heldout", "2", "--out", str(tmp_path / "lm")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "lm" / "report.json").read_text())["domain"] == "webshop"


def test_webshop_catalog_errors_name_the_problem(runner, tmp_path):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("category,colour\nshirt,red\n")
    result = runner.invoke(main, ["simulate", "--domain", "webshop", "--catalog", str(catalog)])
    assert result.exit_code == 2 and "price" in result.output and "Traceback" not in result.output


def test_make_data_writes_every_prefix_of_dialogues_of_the_rounds_asked_for(runner, tmp_path):
    result = runner.invoke(main, ["make-data", "--domain", "hotel", "--teacher", "oracle", "--dialogues", "1",
                                  "--eval-users", "620", "--rounds", "6", "--out", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["n_rounds"] == 6 and manifest["counts"]["examples"] == 4 * 6  # 624 - 620 users, 6 prefixes
    lengths = [len(json.loads(line)["messages"]) for line in (tmp_path / "data" / "train-oracle.jsonl").read_text().splitlines()]
    assert lengths == [2, 4, 6, 8, 10, 12] * 4
    assert "24 examples (oracle) from 4 users" in result.output

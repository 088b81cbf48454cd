"""Transfer in one command (distill/transfer.py, eval/transfer_report.py) and the embedded student's domain card
(eval/student_card.py): tiny settings, numbers checked against runs recomputed here."""
import dataclasses
import json

import pytest
from click.testing import CliRunner

import tiny_lm
from distill.pipeline import DistillSettings, run_distill
from distill.transfer import eval_domains_for, parse_domain_list
from eval.assistants import BayesianAssistant
from eval.lm.assistant import LMAssistant
from eval.protocol import run_protocol
from eval.student_card import StudentDomainError, check_student_domain, read_student_card, save_student_card
from ppl_models import UnknownDomainError, get_domain, pick_users
from png_checks import check_plot_png


def _settings(tmp_path, **changes):
    base = dict(domain="flight", teacher="bayesian", out_dir=str(tmp_path / "run"), n_dialogues=1, n_eval_users=1,
                n_heldout=2, max_train_users=4, budget_minutes=0.05)
    base.update(changes)
    return DistillSettings(**base)


def _accuracy_by_round(run) -> list[float]:
    """Mean over users of the fraction of held-out sets picked right, per round (written here, not eval.metrics)."""
    right = (run.picks == run.heldout_choices[:, None, :]).double()  # [N, R+1, M]
    return right.mean(dim=2).mean(dim=0).tolist()


@pytest.mark.slow
def test_distill_evaluates_before_and_after_on_every_listed_domain(tmp_path):
    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    lines = []
    run_distill(_settings(tmp_path, model=str(model_dir), method="lora", eval_domains="hotel"), log=lines.append)
    out = tmp_path / "run"
    table = json.loads((out / "transfer.json").read_text())
    assert table["domains"] == ["flight", "hotel"] and table["teaching_domain"] == "flight"
    assert table["rows"] == ["before", "after", "bayesian", "random"]
    assert table["settings"]["eval_domains"] == "hotel" and table["settings"]["model"] == str(model_dir)
    # one bar series per row (drawn at alpha 0.85), over two domains
    check_plot_png(out / "transfer.png", (max(4.8, 1.9 * 2 + 2), 4.2), dpi=120, series=4, alpha=0.85)
    for name in ("flight", "hotel"):
        report = json.loads((out / "eval" / name / "report.json").read_text())
        assert report["domain"] == name and report["extra"]["taught_on"] == "flight"
        assert set(report["extra"]["curves"]) == {"before", "bayesian", "random"}
        assert table["cells"]["after"][name]["final"] == report["accuracy"][-1]
        assert table["cells"]["after"][name]["round1"] == report["accuracy"][1]
        assert table["cells"]["before"][name]["final"] == report["extra"]["curves"]["before"]["accuracy"]["mean"][-1]
    # the teaching domain's column is the run's own report
    own = json.loads((out / "report.json").read_text())
    assert table["cells"]["after"]["flight"]["final"] == own["accuracy"][-1]
    # hotel's Bayesian column, recomputed: the Bayesian assistant on 1 user drawn from hotel's whole support
    hotel = get_domain("hotel")
    run = run_protocol(hotel, BayesianAssistant(), users=pick_users(hotel, 1, 0), seed=0, n_heldout=2)
    expected = _accuracy_by_round(run)
    cell = table["cells"]["bayesian"]["hotel"]
    assert cell["final"] == pytest.approx(expected[-1]) and cell["round1"] == pytest.approx(expected[1])
    assert cell["final_ci95"][0] <= cell["final"] <= cell["final_ci95"][1]
    printed = "\n".join(lines)
    assert "model before" in printed and "Bayesian assistant" in printed and "hotel" in printed


def test_domain_list_keeps_the_teaching_domain_first_and_once():
    assert parse_domain_list(" hotel, ,webshop,hotel") == ["hotel", "webshop"]
    assert eval_domains_for("flight", "hotel,flight,webshop", embedded=False) == ["flight", "hotel", "webshop"]
    assert eval_domains_for("hotel", "hotel", embedded=True) == ["hotel"]
    assert eval_domains_for("hotel", "", embedded=True) == []


def test_an_unknown_eval_domain_fails_before_any_work(tmp_path):
    with pytest.raises(UnknownDomainError, match="nosuch"):
        run_distill(_settings(tmp_path, model="not/used", eval_domains="hotel,nosuch"), log=lambda line: None)
    assert not (tmp_path / "run").exists()


def test_the_embedded_student_refuses_other_eval_domains_and_says_why(tmp_path):
    with pytest.raises(ValueError, match="--model") as error:
        run_distill(_settings(tmp_path, domain="hotel", eval_domains="flight"), log=lambda line: None)
    assert "flight" in str(error.value) and "hotel" in str(error.value) and "renamed copy" in str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("eval_domains, needle", [("hotel,nosuch", "unknown domain 'nosuch'"), ("flight", "--model")])
def test_distill_cli_bad_eval_domains_one_line_exit_2(tmp_path, eval_domains, needle):
    from cli import main

    result = CliRunner().invoke(main, ["distill", "--domain", "hotel", "--eval-domains", eval_domains,
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _embedded_student_dir(tmp_path, domain_name="hotel"):
    """An (untrained) embedded student saved as train_student saves one: model, tokenizer, template, card."""
    from distill.student.model import build_student
    from eval.text.dialogue import default_template
    from eval.text.prompt_template import save_template

    domain = get_domain(domain_name)
    model, tokenizer = build_student(domain)
    directory = tmp_path / f"student-{domain_name}"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    save_template(default_template(), directory)
    save_student_card(domain, directory)
    return directory


def test_the_student_card_names_its_domain_and_refuses_another(tmp_path):
    from eval.lm import load_causal_lm

    directory = _embedded_student_dir(tmp_path)
    card = read_student_card(directory)
    hotel, flight = get_domain("hotel"), get_domain("flight")
    assert card["domain"] == "hotel" and [f["name"] for f in card["features"]] == [f.name for f in hotel.features]
    assert card["features"][1]["values"] == [hotel.features[1].text(i) for i in range(len(hotel.features[1].values))]
    check_student_domain(card, hotel)  # its own domain: fine
    assistant = LMAssistant(load_causal_lm(str(directory)))
    users = pick_users(flight, 1, 0)
    with pytest.raises(StudentDomainError, match="built for domain 'hotel', not 'flight'"):
        run_protocol(flight, assistant, users=users, seed=0, n_heldout=1)
    # the same name with other value texts (another catalogue, another wording) is refused too
    features = list(hotel.features)
    features[0] = dataclasses.replace(features[0], format=lambda value: f"{value} km")
    renamed = dataclasses.replace(hotel, features=tuple(features))
    with pytest.raises(StudentDomainError, match="other feature names or value texts"):
        check_student_domain(card, renamed)
    # a model without a card (any Hugging Face model) is not checked
    plain = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    assert read_student_card(plain) is None
    check_student_domain(read_student_card(plain), flight)


def test_evaluate_cli_refuses_a_student_of_another_domain_one_line_exit_2(tmp_path):
    from cli import main

    directory = _embedded_student_dir(tmp_path)
    result = CliRunner().invoke(main, ["evaluate", "--domain", "flight", "--model", str(directory), "--users", "1",
                                       "--heldout", "1", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "'hotel'" in lines[0] and "'flight'" in lines[0]
    assert not (tmp_path / "eval").exists()


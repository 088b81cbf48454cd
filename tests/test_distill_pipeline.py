"""The whole teaching loop on tiny settings: data, training, evaluation before and after, report and plot."""
import json
import math

import pytest

import tiny_lm
from distill.pipeline import DistillSettings, run_distill
from ppl_models import get_domain
from png_checks import check_plot_png


def _settings(tmp_path, **changes):
    base = dict(domain="hotel", teacher="bayesian", out_dir=str(tmp_path / "run"), n_dialogues=1, n_eval_users=3,
                n_heldout=2, max_train_users=6, budget_minutes=0.05)
    base.update(changes)
    return DistillSettings(**base)


def _check_outputs(tmp_path, report, teacher, embedded=True):
    out = tmp_path / "run"
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    # the embedded student gets whole dialogues only (one example each); a --model gets every prefix
    assert manifest["counts"]["examples"] == (6 if embedded else 6 * 5)
    assert manifest["prefixes"] == ("longest" if embedded else "all")
    # the embedded student is also taught the round that evaluation asks about after round 5
    assert manifest["n_rounds"] == (6 if embedded else 5) == report["extra"]["manifest"]["n_rounds"]
    assert manifest["teacher"] == teacher
    assert len(manifest["eval_users"]) == 3
    assert report == json.loads((out / "report.json").read_text())
    assert report["n_users"] == 3 and len(report["accuracy"]) == 6
    assert set(report["extra"]["curves"]) >= {"bayesian", "random"}
    # the student after teaching, then the references: the student before (when evaluated), Bayesian, random
    check_plot_png(out / "accuracy.png", (6.4, 4.2), dpi=120, series=len(set(report["extra"]["curves"])) + 1)


@pytest.mark.slow
def test_distill_a_hugging_face_model_with_lora(tmp_path):
    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    lines = []
    report = run_distill(_settings(tmp_path, model=str(model_dir), method="lora"), log=lines.append)
    _check_outputs(tmp_path, report, "bayesian", embedded=False)
    assert (tmp_path / "run" / "train" / "adapter" / "adapter_config.json").is_file()
    table = "\n".join(lines)
    assert "student before" in table and "student after" in table and "bayesian" in table


@pytest.mark.slow
def test_distill_the_embedded_student(tmp_path, monkeypatch):
    pytest.importorskip("distill.student.model")
    import distill.student.tokenizer as student_tokenizer

    adopted, adopt = [], student_tokenizer.adopt_saved_template

    def recording(*args, **kwargs):
        adopted.append(adopt(*args, **kwargs))
        return adopted[-1]

    monkeypatch.setattr(student_tokenizer, "adopt_saved_template", recording)
    report = run_distill(_settings(tmp_path, teacher="soft"), log=lambda line: None)
    assert adopted == [True]  # the trained student, read back for the evaluation after, renders as this run's own
    _check_outputs(tmp_path, report, "soft")
    assert (tmp_path / "run" / "train" / "model" / "config.json").is_file()
    card = json.loads((tmp_path / "run" / "train" / "model" / "student.json").read_text())  # the domain it knows
    assert card["domain"] == "hotel" and [f["name"] for f in card["features"]] == [f.name for f in get_domain("hotel").features]
    # the card records what the chat template was built from: a later process rebuilds exactly the saved template
    from transformers import AutoTokenizer

    from distill.student.tokenizer import adopt_saved_template
    from eval.text.prompt_template import template_for_model

    model_dir = tmp_path / "run" / "train" / "model"
    template, _ = template_for_model(str(model_dir))
    assert adopt_saved_template(AutoTokenizer.from_pretrained(model_dir), get_domain("hotel"),
                                card["chat_template_options"], template)


@pytest.mark.slow
def test_distill_runs_on_webshop(tmp_path):
    report = run_distill(_settings(tmp_path, domain="webshop", eval_before=False), log=lambda line: None)
    _check_outputs(tmp_path, report, "bayesian")
    assert report["domain"] == "webshop"


@pytest.mark.parametrize("embedded", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_distill_for_a_number_of_steps_instead_of_the_clock(tmp_path, embedded):
    model = None if embedded else str(tiny_lm.save_tiny_lm(tmp_path / "tiny"))
    hf_only = {} if embedded else {"dtype": "float32", "gradient_checkpointing": True}
    report = run_distill(_settings(tmp_path, model=model, method="lora", budget_minutes=math.inf, max_steps=3,
                                   eval_before=False, **hf_only), log=lambda line: None)
    training = report["extra"]["training"]
    assert training["steps"] == 3 and training["stop_reason"] == "max_steps"
    if not embedded:  # the settings reach the trainer
        saved = json.loads((tmp_path / "run" / "train" / "train_config.json").read_text())
        assert saved["dtype"] == "float32" and saved["gradient_checkpointing"] is True and saved["max_steps"] == 3
        assert saved["dtype_resolved"] == {"dtype": "float32", "reason": "--dtype float32 given"}
        import torch

        from distill.training.config import CPU_BATCH_SIZE, TrainConfig

        # on a CPU one conversation per step (so a budget holds more steps); on a GPU TrainConfig's batch
        assert saved["batch_size"] == (TrainConfig.batch_size if torch.cuda.is_available() else CPU_BATCH_SIZE)
        assert (CPU_BATCH_SIZE, TrainConfig.batch_size) == (1, 4)


def test_distill_batch_size_is_settable_for_a_model_only(tmp_path):
    model = str(tiny_lm.save_tiny_lm(tmp_path / "tiny"))
    run_distill(_settings(tmp_path, model=model, method="lora", budget_minutes=math.inf, max_steps=1, batch_size=2,
                          eval_before=False), log=lambda line: None)
    assert json.loads((tmp_path / "run" / "train" / "train_config.json").read_text())["batch_size"] == 2
    with pytest.raises(ValueError, match="apply to --model"):
        _settings(tmp_path, batch_size=2)


def test_distill_refuses_model_settings_for_the_embedded_student(tmp_path):
    with pytest.raises(ValueError, match="apply to --model"):
        _settings(tmp_path, dtype="bfloat16")


def test_a_model_taught_soft_targets_recomputes_its_activations_unless_told(tmp_path):
    """Soft targets add a row per candidate answer (a copy of the conversation so far), so a --model taught by
    the soft teacher checkpoints its activations by default; the embedded student and hard teachers do not,
    and an explicit choice wins."""
    def uses(**changes):
        return DistillSettings(**{"out_dir": str(tmp_path), **changes}).uses_gradient_checkpointing

    assert uses(model="m", teacher="soft") is True
    assert uses(model="m", teacher="bayesian") is False and uses(model="m", teacher="bayesian", kl_weight=0.5) is True
    assert uses(model="m", teacher="soft", gradient_checkpointing=False) is False
    assert uses(teacher="soft") is False
    model = str(tiny_lm.save_tiny_lm(tmp_path / "tiny"))
    lines = []
    run_distill(_settings(tmp_path, model=model, method="lora", teacher="soft", budget_minutes=math.inf, max_steps=1,
                          eval_before=False), log=lines.append)
    saved = json.loads((tmp_path / "run" / "train" / "train_config.json").read_text())
    assert saved["gradient_checkpointing"] is True
    assert any(line.startswith("gradient checkpointing: on") for line in lines)

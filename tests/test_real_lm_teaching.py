"""experiments/real_lm_teaching.py: the stages it plans (what each teacher trains and which model each evaluation
loads) and the pick-loss windows it records from a training log."""
import json
from pathlib import Path
from script_loader import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "real_lm_teaching.py"


def _load_script(monkeypatch):  # run as a script it finds stage_runner beside it; loaded here, by its folder
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return load_script(SCRIPT)


def _argv(stages, name):
    return next(s.args for s in stages if s.name == name)


def test_lora_stages_load_the_adapter_and_full_stages_the_saved_model(tmp_path, monkeypatch):
    script = _load_script(monkeypatch)
    stages, _ = script.build_stages(script.parse_args(["--work", str(tmp_path), "--lr", "0.001"]))
    train = _argv(stages, "train-oracle")
    assert train[train.index("--method") + 1] == "lora" and train[train.index("--lr") + 1] == "0.001"
    evaluate = _argv(stages, "eval-oracle-hotel")
    assert evaluate[evaluate.index("--adapter") + 1] == str(tmp_path / "train-oracle" / "adapter")
    assert evaluate[evaluate.index("--model") + 1] == "smollm2"

    stages, _ = script.build_stages(script.parse_args(["--work", str(tmp_path), "--method", "full"]))
    assert "--lr" not in _argv(stages, "train-bayesian")  # TrainConfig's default unless asked
    evaluate = _argv(stages, "eval-bayesian-flight")
    assert "--adapter" not in evaluate
    assert evaluate[evaluate.index("--model") + 1] == str(tmp_path / "train-bayesian" / "model")
    assert _argv(stages, "eval-released-flight")[3:5] == ["--model", "smollm2"]


def test_choice_loss_is_averaged_per_window_of_ten_steps(tmp_path, monkeypatch):
    script = _load_script(monkeypatch)
    args = script.parse_args(["--work", str(tmp_path)])
    train = tmp_path / "train-bayesian"
    train.mkdir()
    (train / "summary.json").write_text(json.dumps({"steps": 23}))
    choice = [1.0 + 0.1 * i for i in range(23)]
    lines = [json.dumps({"step": i + 1, "loss": 0.5, "choice_loss": c}) for i, c in enumerate(choice)]
    (train / "train_log.jsonl").write_text("\n".join(lines + ['{"step": 23, "train_runtime": 9.0}']) + "\n")
    results = script.collect(args, {}, {})
    windows = results["training"]["bayesian"]["choice_loss_per_10_steps"]
    expected = [sum(choice[0:10]) / 10, sum(choice[10:20]) / 10, sum(choice[20:23]) / 3]
    assert windows == [round(x, 3) for x in expected]

"""The GPU run's script (experiments/gpu/study_smollm2.py), dry-run on CPU with a tiny random model."""
import json
from pathlib import Path

import pytest
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]


def _script():
    return load_script(ROOT / "experiments" / "gpu" / "study_smollm2.py")


def test_the_study_scale_is_the_studys():
    script = _script()
    assert script.STUDY["dialogues"] * 624 == 6240  # flight's 624 users, every one a teaching user
    assert script.STUDY["max_steps"] * script.STUDY["batch_size"] >= 6240 * 5  # one epoch of every-prefix examples


@pytest.mark.slow
def test_the_dry_run_plays_every_stage(tmp_path):
    results = _script().main(["--dry-run", "--out", str(tmp_path)])
    assert results["failed_stages"] == []
    stages = [entry["stage"] for entry in results["stages"]]
    assert stages[:4] == ["data-bayesian", "data-oracle", "train-bayesian", "train-oracle"] and len(stages) == 14
    manifest = json.loads((tmp_path / "data-oracle" / "manifest.json").read_text())
    assert manifest["counts"]["dialogues"] == 624 * results["settings"]["dialogues"]
    for domain in ("flight", "hotel"):
        for label in ("released", "bayesian-taught", "oracle-taught", "bayesian", "random"):
            report = results["reports"][f"{label}/{domain}"]
            assert report["n_users"] == 2 and len(report["accuracy"]) == len(report["ci95"]) > 1, (label, domain)
    assert results["reports"]["bayesian-taught/flight"]["dtype"]["requested"] == "auto"
    assert json.loads((tmp_path / "results.json").read_text())["reports"] == results["reports"]

"""`cli.py train` / `distill` on the Trainer: bad input (one line, exit 2), bugs (a traceback), the accelerate
configs and recipe shipped in configs/, a run killed with SIGKILL and resumed, and FSDP on 2 CPU processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main
from eval import io_utils
from distill.training.trainer import train
from distill.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("args, message", [
    (["train", "--budget", "0"], "the budget must be > 0 minutes, got 0.0"),
    (["train", "--budget", "-1"], "the budget must be > 0 minutes, got -1.0"),
    (["train", "--recipe", "RECIPE:learning_rat: 0.1"], "unknown key(s) ['learning_rat']"),
    (["train", "--recipe", "RECIPE:batch_size: 2.5"], "batch_size must be int, got 2.5"),
    (["train", "--recipe", "MISSING"], "does not exist"),
    (["train", "--accelerate-config", "MISSING"], "accelerate config"),
    (["train", "--accelerate-config", "RECIPE:distributed_type: DEEPSPEED\nzero_stag: 3"], "unknown keys"),
    (["train", "--accelerate-config", "RECIPE:distributed_type: [MULTI_CPU"], "file.yaml: while parsing"),
    (["train", "--model", "NOWHERE"], "does not exist (and is not a Hugging Face hub id)"),
    (["distill", "--budget", "0"], "the budget must be > 0 minutes"),
    (["distill", "--budget", "-1", "--model", "x"], "the budget must be > 0 minutes"),
])
def test_bad_training_input_is_one_line_and_exit_code_2(tmp_path, dataset, student_dir, args, message):
    def expand(arg: str) -> str:
        if arg.startswith("RECIPE:"):
            (tmp_path / "file.yaml").write_text(arg[len("RECIPE:"):] + "\n")
            return str(tmp_path / "file.yaml")
        return {"MISSING": str(tmp_path / "missing.yaml"), "NOWHERE": str(tmp_path / "no-model")}.get(arg, arg)

    args = [expand(a) for a in args]
    if args[0] == "train":
        args += ["--data", str(dataset), "--out", str(tmp_path / "out")]
        if "--model" not in args:
            args += ["--model", str(student_dir), "--method", "lora", "--max-steps", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_train_the_embedded_student_for_a_number_of_steps(tmp_path, dataset):
    """`train --max-steps` with no --model: the steps end the run (not the student's 10-minute clock)."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("hidden_size: 32\nnum_layers: 2\nnum_heads: 2\nintermediate_size: 64\nbatch_size: 2\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train", "--data", str(dataset), "--domain", "hotel", "--recipe", str(recipe),
                                       "--max-steps", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["stop_reason"] == "max_steps"
    plan = json.loads((out / "student_plan.json").read_text())
    assert plan["max_steps"] == 3 and plan["budget_minutes"] == float("inf")
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["max_steps"] == 3 and saved["budget_minutes"] is None and saved["hidden_size"] == 32


@pytest.mark.slow
def test_a_recipe_that_states_the_default_budget_keeps_its_clock_with_max_steps(tmp_path, dataset):
    """A budget the recipe states (even the student's default 10 minutes) still caps a --max-steps run."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("hidden_size: 32\nnum_layers: 2\nnum_heads: 2\nintermediate_size: 64\nbatch_size: 2\n"
                      "budget_minutes: 10\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train", "--data", str(dataset), "--domain", "hotel", "--recipe", str(recipe),
                                       "--max-steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "student_plan.json").read_text())
    assert plan["max_steps"] == 2 and plan["budget_minutes"] == 10


def test_lora_target_modules_the_model_lacks_are_one_error_line(tmp_path, dataset, student_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lora_target_modules: [no_such_layer]\n")
    result = CliRunner().invoke(main, ["train", "--recipe", str(recipe), "--model", str(student_dir), "--method", "lora",
                                       "--max-steps", "1", "--data", str(dataset), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]  # after the weight-loading progress bar
    assert last.startswith("Error: cannot add LoRA adapters with lora_target_modules=['no_such_layer']: Target modules")
    assert "Traceback" not in result.output


def test_a_bug_keeps_its_traceback(monkeypatch, dataset, student_dir, tmp_path):
    import distill.training.trainer as trainer

    def broken(*args, **kwargs):
        raise KeyError("a bug in our code, not the user's input")

    monkeypatch.setattr(trainer, "train", broken)
    result = CliRunner().invoke(main, ["train", "--model", str(student_dir), "--data", str(dataset), "--out", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_shipped_accelerate_configs_and_the_study_recipe_pass_accelerates_schema(tmp_path):
    from distill.training.launch import check_accelerate_config
    from distill.training.config import ConfigError

    kinds = {name: check_accelerate_config(ROOT / "configs" / "accelerate" / f"{name}.yaml")["distributed_type"]
             for name in ("ddp", "fsdp", "zero3")}
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}
    zero3 = check_accelerate_config(ROOT / "configs" / "accelerate" / "zero3.yaml")["deepspeed_config"]
    assert zero3["zero_stage"] == 3
    fsdp = check_accelerate_config(ROOT / "configs" / "accelerate" / "fsdp.yaml")["fsdp_config"]
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "accelerate" / "zero3.yaml").read_text().replace("zero_stage: 3", "zero_stage: 4"))
    with pytest.raises(ConfigError, match="zero_stage must be one of"):
        check_accelerate_config(bad)

    recipe = TrainConfig.from_recipe(ROOT / "configs" / "recipes" / "study_full_ft.yaml")
    assert (recipe.method, recipe.learning_rate, recipe.global_batch_size, recipe.epochs, recipe.max_length,
            recipe.warmup_ratio, recipe.min_lr_ratio) == ("full", 2e-6, 128, 1.0, 2048, 0.1, 0.0)
    assert [recipe.accumulation_steps(n) for n in (1, 8)] == [32, 4]  # 128 conversations a step either way


def trainable_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_weights_of_an_uninterrupted_run(student_dir, dataset, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(dict(method="lora", dtype="float32", lora_r=4, lora_alpha=8, lora_dropout=0.1, learning_rate=5e-3,
                                      warmup_steps=1, batch_size=2, grad_accum_steps=2, max_steps=10,
                                      save_every_steps=3, kl_weight=0.5, report_to="none")))
    straight = train(TrainConfig.from_recipe(recipe), dataset, tmp_path / "straight", model=str(student_dir))

    out = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "cli.py"), "train", "--recipe", str(recipe), "--model", str(student_dir),
               "--data", str(dataset), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while io_utils.last_complete_checkpoint(out / "checkpoints") is None and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 3 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-step (or mid-save) after the first complete checkpoint
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = io_utils.last_complete_checkpoint(out / "checkpoints").name
    assert killed_at in ("checkpoint-3", "checkpoint-6", "checkpoint-9")

    resumed = subprocess.run(command + ["--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["resumed_from"].endswith(killed_at)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student_dir), out / "adapter").eval()
    expected = trainable_weights(straight.model)
    got = trainable_weights(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student_dir), out / "adapter",
                                                      is_trainable=True))
    assert set(got) == set(expected)
    for name, weight in expected.items():
        torch.testing.assert_close(got[name], weight, atol=1e-6, rtol=0)
    ids = torch.arange(1, 9)[None]  # the adapter loaded for inference predicts as the uninterrupted run's model
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, straight.model.eval()(input_ids=ids).logits,
                                   atol=1e-5, rtol=0)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_fsdp_full_shard_on_two_cpu_processes_matches_one_process(student_dir, dataset, tmp_path):
    """configs/accelerate/fsdp.yaml's FULL_SHARD on 2 CPU processes (gloo) trains the tiny model fully; the
    global batch of 4 conversations is the same as one process with accumulation 2, so are the losses."""
    config = dict(method="full", dtype="float32", learning_rate=1e-3, warmup_steps=1, batch_size=1, global_batch_size=4, max_steps=3,
                  save_every_steps=0, kl_weight=0.5, report_to="none")
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(config))
    accelerate_config = tmp_path / "fsdp-cpu.yaml"
    accelerate_config.write_text((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text()
                                 .replace("num_processes: 8", "num_processes: 2").replace("mixed_precision: bf16", "mixed_precision: 'no'")
                                 .replace("use_cpu: false", "use_cpu: true")
                                 # torch: "FSDP parameter initialization with sync_module_states=True is not
                                 # supported on cpu" (and RAM-efficient loading needs it)
                                 .replace("fsdp_sync_module_states: true", "fsdp_sync_module_states: false")
                                 .replace("fsdp_cpu_ram_efficient_loading: true", "fsdp_cpu_ram_efficient_loading: false"))
    out = tmp_path / "fsdp"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
               "--main_process_port", str(free_port()), str(ROOT / "cli.py"), "train", "--recipe", str(recipe),
               "--model", str(student_dir), "--data", str(dataset), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_batch"] == 4 and summary["steps"] == 3

    single = train(TrainConfig.from_recipe(recipe), dataset, tmp_path / "single", model=str(student_dir))
    fsdp_losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert fsdp_losses == pytest.approx(single.losses, abs=1e-4)
    from transformers import AutoModelForCausalLM  # the sharded weights were gathered into one saved model

    sharded, whole = (AutoModelForCausalLM.from_pretrained(d) for d in (out / "model", single.model_dir))
    for name, weight in whole.named_parameters():
        torch.testing.assert_close(sharded.get_parameter(name), weight, atol=1e-5, rtol=1e-4)

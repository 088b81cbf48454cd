"""benchmarks/bench_tokenize.py on tiny arguments: its baseline (the earlier tokenising path, rebuilt) and the
current eval.text.chat_format give the same ids on both workloads, and it writes its JSON."""
import json
from pathlib import Path
from script_loader import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_tokenize.py"


def test_bench_tokenize_compares_equal_ids(tmp_path):
    module = load_script(SCRIPT)
    out = module.main(["--dialogues", "3", "--users", "1", "--heldout", "1", "--repeats", "1",
                       "--out", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text()) == out
    teaching, evaluation = out["workloads"]["teaching"], out["workloads"]["evaluation"]
    assert teaching["conversations"] == 3 and teaching["same_ids"]
    assert evaluation["conversations"] == 6 * 1 * 3  # rounds 0-5 x 1 held-out set x 3 candidate answers

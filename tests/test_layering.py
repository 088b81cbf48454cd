"""The layers import only downwards: ppl_models <- eval <- distill <- commands <- cli.py (the developers' guide).
Every import statement counts, those inside functions included (the commands import their layers lazily)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["ppl_models", "eval", "distill", "commands", "cli"]


def imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def layer_files(layer: str) -> list[Path]:
    return [ROOT / "cli.py"] if layer == "cli" else sorted((ROOT / layer).rglob("*.py"))


def test_no_layer_imports_a_layer_above_it():
    upward = []
    for rank, layer in enumerate(LAYERS):
        files = layer_files(layer)
        assert files, f"no Python files in {layer}"
        above = set(LAYERS[rank + 1:])
        for path in files:
            for name in sorted(imported_top_level_names(path) & above):
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from distill.train import train\n    import eval.report\n")
    assert imported_top_level_names(sample) == {"os", "distill", "eval"}

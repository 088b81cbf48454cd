"""The architecture, checked: layers import only downwards, no import circle between files, no folder of
more than 12 modules, a public API (``__all__``) in every package, and nobody edits ``sys.path``.

Layers, lowest first: ppl_models <- eval <- distill <- commands <- cli.py; inside ``eval`` and ``distill``
the sub-packages and modules have an order of their own (``SUBLAYERS``).  Every import statement counts,
those inside functions and under ``if TYPE_CHECKING:`` included (the commands import their layers lazily).
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["ppl_models", "eval", "distill", "commands"]
LAYERS = PACKAGES + ["cli"]
SUBLAYERS = {  # lowest first; a module may import its own sub-layer and those before it
    "eval": ["io_utils", "records", "text", "beliefs", "student_card", "dialogue_io", "assistants", "lm", "protocol",
             "design", "runner", "metrics", "report", "transfer_report", "study"],
    "distill": ["lazy", "training", "student", "teaching_data", "design_data", "transfer", "pipeline", "design_pipeline"],
}
MAX_MODULES_PER_FOLDER = 12


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    modules = {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}
    modules["cli"] = ROOT / "cli.py"
    return modules


def imported_modules(path: Path, modules: dict) -> set[str]:
    """The project modules ``path`` imports (a name imported from a package counts as the package's
    ``__init__`` unless it is a submodule)."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module for alias in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def sublayer(module: str):
    """(package, rank) of a module inside a layered package; None for the package itself or elsewhere."""
    package, _, rest = module.partition(".")
    if package not in SUBLAYERS or not rest:
        return None
    return package, SUBLAYERS[package].index(rest.split(".")[0])


def test_no_layer_imports_a_layer_above_it():
    graph = import_graph()
    upward = []
    for module, imported in graph.items():
        rank = LAYERS.index(module.split(".")[0])
        upward += [f"{module} imports {target}" for target in sorted(imported) if LAYERS.index(target.split(".")[0]) > rank]
    assert upward == []


def test_every_module_of_a_layered_package_has_a_sublayer():
    for package, order in SUBLAYERS.items():
        present = {path.stem if path.is_file() else path.name
                   for path in (ROOT / package).iterdir() if (path.suffix == ".py" or (path / "__init__.py").exists())}
        assert present - {"__init__"} == set(order), package


def test_no_sublayer_imports_one_above_it():
    upward = []
    for module, imported in import_graph().items():
        own = sublayer(module)
        for target in sorted(imported):
            theirs = sublayer(target)
            if own and theirs and own[0] == theirs[0] and theirs[1] > own[1]:
                upward.append(f"{module} imports {target}")
            if target.split(".")[0] in SUBLAYERS and target in SUBLAYERS and own and own[0] == target:
                upward.append(f"{module} imports its own package's __init__ ({target})")
    assert upward == []


def test_no_import_circle_between_files():
    assert cycles(import_graph()) == []


def test_the_circle_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    sample = tmp_path / "eval" / "sample.py"
    sample.parent.mkdir()
    sample.write_text("import os\nfrom .report import x\n\ndef f():\n    from distill.training.trainer import train\n")
    modules = {"eval.report": None, "distill.training.trainer": None, "eval.sample": sample}
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert imported_modules(sample, modules) == {"eval.report", "distill.training.trainer"}
    finally:
        ROOT = saved


def test_no_folder_holds_more_than_12_modules():
    crowded = {}
    for package in PACKAGES:
        for folder in [ROOT / package, *[p.parent for p in (ROOT / package).rglob("__init__.py")]]:
            count = len([p for p in folder.glob("*.py") if p.name != "__init__.py"])
            if count > MAX_MODULES_PER_FOLDER:
                crowded[str(folder.relative_to(ROOT))] = count
    assert crowded == {}


def test_every_package_names_its_public_api():
    missing = []
    for package in PACKAGES:
        for init in sorted((ROOT / package).rglob("__init__.py")):
            tree = ast.parse(init.read_text())
            names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
            if "__all__" not in names:
                missing.append(str(init.relative_to(ROOT)))
    assert missing == []


def test_no_file_edits_sys_path():
    tracked = [p for p in ROOT.rglob("*.py") if not any(part.startswith(".") or part in ("build", "site") for part in p.relative_to(ROOT).parts)]
    offenders = [str(p.relative_to(ROOT)) for p in tracked if "sys.path" in p.read_text() and p != Path(__file__).resolve()]
    assert offenders == []

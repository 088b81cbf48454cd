"""Every notebook in notebooks/ runs top to bottom in a fresh kernel, and computes what its text claims; each is
committed executed, with its plots, so that a repository page and the docs show them.

Each notebook ends with a ``result`` dict of the numbers it stands on; the test appends one cell that prints
it as JSON and checks it here.  The kernel runs this interpreter (a throw-away kernel spec pointing at
``sys.executable``), from the notebooks/ directory, with the non-interactive Agg backend.  To refresh the
committed outputs after changing a notebook or the code it shows (from the repository root, the project
installed):

    jupyter execute --inplace notebooks/*.ipynb
"""
from __future__ import annotations

import ast
import base64
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "bayes-teach-test"
CELL_TIMEOUT_S = 300
RESULT_MARKER = "NOTEBOOK-RESULT-JSON:"
MAX_SAVED_BYTES = 1_000_000  # a few plots at the inline backend's resolution

PRINT_RESULT = f"""
import json as _json
if "result" in globals():
    print({RESULT_MARKER!r} + _json.dumps(result, default=str))
"""


@pytest.fixture(scope="session")
def kernel_spec_dir(tmp_path_factory) -> Path:
    """A kernel spec that runs this interpreter, whatever jupyter's own ``python3`` spec points at."""
    from ipykernel.kernelspec import write_kernel_spec

    kernels = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(kernels / KERNEL_NAME, overrides={"display_name": f"bayes-teach test ({sys.executable})"})
    return kernels


def execute_notebook(path: Path, kernel_spec_dir: Path):
    """Run ``path`` in a fresh kernel from its own directory; return the executed notebook and its result."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PRINT_RESULT))
    manager = KernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_spec_dir)])
    )
    client = nbclient.NotebookClient(
        notebook, km=manager, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    result = None
    for output in notebook.cells[-1].get("outputs", []):
        if output.get("output_type") == "stream" and RESULT_MARKER in output.get("text", ""):
            result = json.loads(output["text"].split(RESULT_MARKER, 1)[1])
    return notebook, result


def check_posterior_explorer(result):
    # A surprising choice moves the posterior more than an expected one: in the explored dialogue ...
    assert result["p_choice_surprising"] < result["p_choice_expected"]
    assert result["entropy_drop_surprising"] > result["entropy_drop_expected"] + 0.5
    assert result["kl_surprising"] > result["kl_expected"]
    # ... and over the population of simulated dialogues.
    assert result["population_drop_unexpected"] > result["population_drop_confident"] + 0.5
    assert result["population_corr"] > 0.8


def check_new_domain(result):
    assert result["n_hypotheses"] == 3 * 3 * 3 * 4
    assert result["final_accuracy"] > result["round0_accuracy"] + 0.1
    assert result["final_accuracy"] > result["random_final_accuracy"] + 0.2
    assert result["oracle_final_accuracy"] >= result["final_accuracy"]


def check_compare_reports(result):
    bayesian, random = result["bayesian"], result["random"]
    assert bayesian["final_accuracy"] > bayesian["round0_accuracy"] + 0.2
    assert bayesian["final_accuracy"] > random["final_accuracy"] + 0.2
    assert bayesian["final_agreement"] == 1.0
    assert random["final_agreement"] < 0.5
    assert result["oracle"]["final_accuracy"] >= bayesian["final_accuracy"]


def check_active_elicitation(result):
    accuracy, entropy, gain = result["accuracy"], result["population_entropy"], result["mean_gain"]
    assert accuracy["active"][0] == accuracy["random"][0]  # the same held-out sets, before any round
    assert accuracy["active"][5] > accuracy["random"][5] + 0.05
    assert accuracy["active"][4] > accuracy["random"][5]  # passes random's round-5 accuracy by round 4
    assert all(a < r for a, r in zip(entropy["active"][2:], entropy["random"][2:]))  # the posterior shrinks faster
    assert all(a >= r for a, r in zip(gain["active"], gain["random"]))
    assert max(max(gain["active"]), max(result["user_gain"]["active"])) <= 1.0986123  # at most log 3 nats
    assert result["user_entropy"]["active"][-1] < result["user_entropy"]["random"][-1]


CHECKS = {
    "posterior_explorer": check_posterior_explorer,
    "new_domain": check_new_domain,
    "compare_reports": check_compare_reports,
    "active_elicitation": check_active_elicitation,
}


def test_the_issue_notebooks_exist():
    assert {path.stem for path in NOTEBOOKS} >= set(CHECKS)


def committed_images(notebook) -> list[bytes]:
    """The PNG images in a notebook's outputs, decoded."""
    return [base64.b64decode(output["data"]["image/png"]) for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_committed_executed_with_its_plots(path, tmp_path):
    """Saved executed top to bottom in one fresh kernel (execution counts 1, 2, 3, ... in cell order, no errors),
    holding at least one plot that is a real picture, and small enough for the repository."""
    assert path.stat().st_size < MAX_SAVED_BYTES
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "not run in order, fresh"
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"], f"{path.name} saved an error"
    images = committed_images(notebook)
    assert images, f"{path.name} holds no image output"
    import matplotlib.image

    for k, png in enumerate(images):
        (tmp_path / f"{k}.png").write_bytes(png)
        pixels = matplotlib.image.imread(str(tmp_path / f"{k}.png"))
        assert pixels.shape[0] >= 150 and pixels.shape[1] >= 200, pixels.shape
        rgb = pixels[..., :3] * pixels[..., 3:] + (1 - pixels[..., 3:]) if pixels.shape[2] == 4 else pixels
        assert 0.01 < float((rgb < 0.9).any(-1).mean()) < 0.7, f"{path.name}: image {k} is blank or filled"


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path, kernel_spec_dir, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel inherits it: no inline rendering
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    _, result = execute_notebook(path, kernel_spec_dir)
    check = CHECKS.get(path.stem)
    if check is not None:
        assert result is not None, f"{path.name} defines no `result`"
        check(result)
        # the committed outputs are what the code gives now: the `result` the notebook shows last is this run's
        assert same_numbers(committed_result(path), result), f"{path.name}: committed outputs are stale; re-execute it"


def committed_result(path: Path):
    """The value the committed notebook's last code cell displays (its ``result`` dict), parsed."""
    notebook = nbformat.read(path, as_version=4)
    last = [cell for cell in notebook.cells if cell.cell_type == "code"][-1]
    shown = [output for output in last.outputs if "text/plain" in output.get("data", {})]
    assert shown, f"{path.name}: the last cell shows no result"
    return ast.literal_eval(shown[-1]["data"]["text/plain"])


def same_numbers(saved, fresh, rel: float = 1e-6) -> bool:
    """Equal structure and strings; numbers equal to ``rel`` (thread counts may move the last digits)."""
    if isinstance(saved, dict):
        return isinstance(fresh, dict) and set(saved) == set(fresh) and all(same_numbers(saved[k], fresh[k], rel) for k in saved)
    if isinstance(saved, (list, tuple)):
        return isinstance(fresh, (list, tuple)) and len(saved) == len(fresh) and all(
            same_numbers(a, b, rel) for a, b in zip(saved, fresh))
    if isinstance(saved, (int, float)) and not isinstance(saved, bool) and isinstance(fresh, (int, float)):
        return saved == pytest.approx(fresh, rel=rel, abs=1e-12)
    return saved == fresh

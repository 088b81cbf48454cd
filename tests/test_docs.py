"""The documentation site builds with no warning, documents the whole public API and renders the notebooks;
README.md and the docs cite only result files that the repository tracks."""
from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the packages whose __all__ the API reference documents (docs/api/*.md)
API_PACKAGES = {
    "api/ppl_models": ["ppl_models"],
    "api/eval": ["eval", "eval.text", "eval.beliefs", "eval.lm", "eval.study"],
    "api/distill": ["distill", "distill.training", "distill.student"],
}
# public names documented under another path: distill.training's function ``train`` shares its name with
# the module distill.training.trainer, so the reference documents it as that module's member
DOCUMENTED_AS = {"distill.training.trainer": "distill.training.trainer.train"}
NOTEBOOKS = sorted(path.stem for path in (ROOT / "notebooks").glob("*.ipynb"))
# a cited result file: a path under benchmarks/results/, experiments/ or docs/results/ with a file extension
CITED_RESULT = re.compile(r"(?<![\w/.-])((?:benchmarks/results|experiments|docs/results)/[\w./-]*\.[A-Za-z]+)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built by ``mkdocs build --strict`` (any warning fails it) and the build's output."""
    if shutil.which("mkdocs") is None and importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]'")
    work = tmp_path_factory.mktemp("docs")
    out = work / "site"
    # run from a scratch folder so that caches the plugins write stay out of the repository
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=work, capture_output=True, text=True, timeout=600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    return out, log


@pytest.mark.slow
def test_site_builds_without_warnings(site):
    _, log = site
    warnings = [line for line in log.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert not warnings, "\n".join(warnings)


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(API_PACKAGES))
def test_api_reference_documents_every_public_name(site, page):
    """Every name in each package's ``__all__`` has its own entry (an anchor ``package.name``) on the page."""
    out, _ = site
    html = (out / page / "index.html").read_text()
    anchors = set(re.findall(r'id="([\w.]+)"', html))
    names = [f"{package}.{name}" for package in API_PACKAGES[page] for name in importlib.import_module(package).__all__]
    missing = [name for name in names if DOCUMENTED_AS.get(name, name) not in anchors]
    assert not missing, f"{page}.md does not document: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_pages_hold_the_notebooks_code(site, notebook):
    """Each notebook in notebooks/ is a page of the site, and the page shows the notebook's first code cell."""
    import nbformat

    out, _ = site
    page = out / "notebooks" / notebook / "index.html"
    assert page.exists(), f"notebooks/{notebook}.ipynb has no page: add docs/notebooks/{notebook}.ipynb and a nav entry"
    cells = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4).cells
    first_code = next(cell.source for cell in cells if cell.cell_type == "code")
    # the rendered page highlights code token by token: compare the identifiers of the cell's first line
    words = re.findall(r"[A-Za-z_]\w+", first_code.splitlines()[0])
    text = re.sub(r"<[^>]+>", "", page.read_text())
    assert words and all(word in text for word in words), f"{notebook}: first code cell not on its page"


def test_cited_result_files_are_tracked():
    """A result file named in README.md or docs/ (under benchmarks/results/, experiments/ or docs/results/)
    is in git, so that every cited figure can be checked."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
                  .stdout.splitlines())
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    cited = {(page.relative_to(ROOT).as_posix(), path.rstrip(".")) for page in pages if not page.is_symlink()
             for path in CITED_RESULT.findall(page.read_text())}
    assert cited, "no cited result file found: the pattern is out of date"
    untracked = sorted((page, path) for page, path in cited if path not in tracked)
    assert not untracked, f"cited but not tracked by git: {untracked}"


def test_distill_api_page_lists_exactly_the_lazy_packages_all():
    """docs/api/distill.md lists the members of the lazy packages by hand (a static reader cannot evaluate
    their ``__all__``): the lists must equal ``__all__``."""
    text = (ROOT / "docs" / "api" / "distill.md").read_text()
    blocks = re.findall(r"^::: ([\w.]+)\n((?:    .*\n)+)", text, flags=re.M)  # the blocks with options
    listed = {package: re.findall(r"^        - (\w+)$", body, flags=re.M) for package, body in blocks}
    assert set(listed) == set(API_PACKAGES["api/distill"])
    for package, names in listed.items():
        assert sorted(names) == sorted(importlib.import_module(package).__all__), package


def test_distill_training_train_is_the_function():
    """``from distill.training import train`` gives the training function that ``__all__`` promises."""
    import distill.training.trainer  # noqa: F401  (loading the module must not shadow the function)
    from distill.training import train

    assert callable(train) and not isinstance(train, type(sys)), train

"""Scripts of benchmarks/, experiments/ and ppl_models/data/ loaded as modules by path (they are not in a
package), so that tests call their functions."""
import importlib.util
from pathlib import Path


def load_script(path: Path):
    """The module of the script at ``path``, named by its file name."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

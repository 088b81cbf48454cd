"""Commands that prepare models: ``convert-model`` (a GGUF file to a Hugging Face folder)."""
from __future__ import annotations

import click

from commands.common import OutputPath


@click.command("convert-model")
@click.argument("gguf_file")
@click.argument("out_dir", type=OutputPath("dir"))
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Precision of the saved weights; float32 keeps the de-quantised values exactly.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists (the new folder is renamed into place whole).")
def convert_model(gguf_file, out_dir, dtype, overwrite):
    """Convert GGUF_FILE (a .gguf file, a folder holding one, or an alias such as smollm2) into a Hugging Face
    model folder OUT_DIR: safetensors weights, config.json without the GGUF quantisation entry, the tokenizer
    and its chat template.  Such a folder can be loaded in 4-bit NF4 (QLoRA), which a GGUF file cannot."""
    from pathlib import Path

    from eval.lm.convert import convert_gguf
    from eval.lm.loading import LMLoadError, pretrained_source

    source, extra = pretrained_source(gguf_file)
    if "gguf_file" not in extra:
        raise LMLoadError(f"{gguf_file!r} is not a GGUF file (nor a folder holding one): nothing to convert")
    out = convert_gguf(Path(source) / extra["gguf_file"], out_dir, dtype=dtype, overwrite=overwrite)
    click.echo(f"converted {Path(source) / extra['gguf_file']} ({dtype}) -> {out}")

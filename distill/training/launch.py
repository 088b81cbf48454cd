"""accelerate configs (``configs/accelerate/``): check one against accelerate's own schema, and re-run a
training command under ``accelerate launch --config_file`` with it.

accelerate's ``ClusterConfig.from_yaml_file`` refuses unknown top-level keys; the nested ``deepspeed_config``
and ``fsdp_config`` keys must be options of ``accelerate launch`` (that is where they go), with the values
its launcher accepts.  Checked here, a bad file is one line before any process starts, not a traceback in
each of them.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from distill.training.config import ConfigError

_CHOICES = {  # values accelerate's launcher / plugins accept for these keys
    "zero_stage": {0, 1, 2, 3},
    "offload_optimizer_device": {"none", "cpu", "nvme"},
    "offload_param_device": {"none", "cpu", "nvme"},
    "fsdp_sharding_strategy": {"FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2", 1, 2, 3, 4, 5},
    "fsdp_auto_wrap_policy": {"TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"},
    "fsdp_state_dict_type": {"FULL_STATE_DICT", "LOCAL_STATE_DICT", "SHARDED_STATE_DICT"},
    "fsdp_backward_prefetch": {"BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH"},
}


def check_accelerate_config(path) -> dict:
    """The config as a dict, or ConfigError (one line) for a missing file, an unknown key or a bad value."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType
    from yaml import YAMLError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"accelerate config {path} does not exist (see configs/accelerate/)")
    try:
        config = ClusterConfig.from_yaml_file(str(path))
    except (ValueError, TypeError, YAMLError) as error:  # unknown keys, no distributed_type, a bad enum, not YAML
        raise ConfigError(f"{path}: {str(error).splitlines()[0]}") from None
    if config.distributed_type not in set(DistributedType):
        raise ConfigError(f"{path}: unknown distributed_type {config.distributed_type!r}")
    launch_options = {action.dest for action in launch_command_parser()._actions}
    for section in ("deepspeed_config", "fsdp_config"):
        for key, value in (getattr(config, section) or {}).items():
            if key not in launch_options:
                raise ConfigError(f"{path}: {section}.{key} is not an accelerate launch option")
            if key in _CHOICES and value not in _CHOICES[key]:
                raise ConfigError(f"{path}: {section}.{key} must be one of {sorted(map(str, _CHOICES[key]))}, got {value!r}")
    if config.distributed_type == DistributedType.DEEPSPEED and not config.deepspeed_config:
        raise ConfigError(f"{path}: distributed_type DEEPSPEED needs a deepspeed_config section")
    return config.to_dict()


def relaunch(config_path, script: str, arguments: list[str]) -> int:
    """Run ``python script arguments`` under ``accelerate launch --config_file config_path``; its exit code."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path), script, *arguments]
    return subprocess.run(command).returncode


def without_option(arguments: list[str], name: str) -> list[str]:
    """``arguments`` without ``name VALUE`` / ``name=VALUE``."""
    kept, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == name:
            skip = True
        elif not argument.startswith(name + "="):
            kept.append(argument)
    return kept

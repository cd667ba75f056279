"""Hardware targets: where the tensors live. 'cpu' is never hard-coded below this module.

- `cpu`: the CPU, with `threads` intra-op threads (null: torch's default).
- `gpu`: one CUDA device (`device: cuda:0`); the stopwatch synchronises it around every timed
  part. Its `channels_last` and `bf16` keys are for networks: a network task has keys of the
  same names that default to them (conf/task/cifar10_resnet.yaml interpolates
  `hardware.channels_last` and `hardware.bf16`), so `hardware.bf16=true` and `task.bf16=true`
  both work and the task's value is what runs. Logistic regression ignores them.

Asking for a device that is not there stops the run before it starts, with the reason.
"""

from __future__ import annotations

import torch

from suite.config import ConfigError

NETWORK_KEYS = ("channels_last", "bf16")


def select_device(hw: dict) -> torch.device:
    name, device = hw.get("name"), str(hw.get("device", "cpu"))
    if hw.get("threads") is not None:
        if not (isinstance(hw["threads"], int) and hw["threads"] >= 1):
            raise ConfigError(f"hardware.threads={hw['threads']!r}: an integer >= 1 or null")
        torch.set_num_threads(hw["threads"])
    for key in NETWORK_KEYS:
        if key in hw and not isinstance(hw[key], bool):
            raise ConfigError(f"hardware.{key}={hw[key]!r}: allowed values are true, false")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"hardware={name} asks for device {device}, but torch.cuda.is_available() is "
                f"False on this machine (torch {torch.__version__}); use hardware=cpu"
            )
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"hardware.device={device}: only {torch.cuda.device_count()} GPU(s) visible"
            )
        if hw.get("bf16") and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"hardware.bf16=true: {torch.cuda.get_device_name(index)} does not support "
                f"bfloat16; set hardware.bf16=false")
    elif device != "cpu":
        raise ConfigError(f"hardware.device={device!r}: allowed values are cpu, cuda, cuda:N")
    return torch.device(device)

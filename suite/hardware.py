"""Hardware targets: where the tensors live. 'cpu' is never hard-coded below this module."""

from __future__ import annotations

import torch

from suite.config import ConfigError


def select_device(hw: dict) -> torch.device:
    name, device = hw.get("name"), str(hw.get("device", "cpu"))
    if hw.get("threads") is not None:
        if not (isinstance(hw["threads"], int) and hw["threads"] >= 1):
            raise ConfigError(f"hardware.threads={hw['threads']!r}: an integer >= 1 or null")
        torch.set_num_threads(hw["threads"])
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
    elif device != "cpu":
        raise ConfigError(f"hardware.device={device!r}: allowed values are cpu, cuda, cuda:N")
    return torch.device(device)

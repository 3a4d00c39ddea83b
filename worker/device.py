"""Where the worker trains and simulates: ``train.device`` (``auto`` | ``cpu`` |
``cuda[:N]``; ``fa-worker build --device``), one rule for every model kind
(``mlp``, ``gpt``, ``hf``). ``auto`` is CUDA when torch sees a device, else
the CPU; asking for CUDA where there is none is a config error, never a
silent fallback. The pipelines run the same code on either device and bring
every tensor they publish back to the CPU."""

from __future__ import annotations

import os

import torch

from .config import ConfigError, WorkerConfig


def resolve_device(setting: str) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda[:N]`` -> the device to run on; ``cuda``
    without an index under ``torchrun`` is the rank's own GPU (``LOCAL_RANK``)."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {setting!r} asked for, but torch sees no CUDA device")
    dev = torch.device(setting)
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per rank
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {setting!r}, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev


def device_of(cfg: WorkerConfig) -> torch.device:
    """The device of a worker config (``train.device``)."""
    return resolve_device(cfg.train.device)


def to_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A dict of tensors on the CPU (the same tensors when already there)."""
    return {k: v.cpu() for k, v in tensors.items()}

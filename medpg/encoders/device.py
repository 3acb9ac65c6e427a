"""Choosing the device and the inference precision (torch is imported only when called)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medpg.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(setting: str) -> str:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist here."""
    import torch

    if setting == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"MEDPG_DEVICE={setting} but CUDA is not available here; use auto or cpu")
        index = int(setting.split(":", 1)[1]) if ":" in setting else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"MEDPG_DEVICE={setting} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif setting == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("MEDPG_DEVICE=mps but MPS is not available here; use auto or cpu")
    return setting


def inference_dtype(device: str) -> torch.dtype:
    """Half precision on GPUs (bf16 where supported, else fp16), full precision on CPU.

    CPU stays float32 so vectors are the same whichever machine computed them.
    """
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32

"""Kernel choice: which implementation a quantized op runs through.

AUTO resolves by hardware and what is installed: Triton on CUDA when triton imports, the
torch reference path otherwise. TORCH and EMULATED always work on CPU.
"""
from __future__ import annotations

import enum
import functools
import logging
import os

import torch

from litevar.models.core.device import device_of

log = logging.getLogger(__name__)


class KernelChoice(enum.Enum):
    AUTO = "auto"
    TRITON = "triton"  # @triton.jit kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1)
    TORCH = "torch"  # plain torch ops (torch._int_mm, dequant + matmul): the reference path
    EMULATED = "emulated"  # fake quant: quantize-dequantize, then a float matmul


@functools.cache
def triton_available() -> bool:
    """True when triton imports (imported on the first call only, never at module import)."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        log.debug("triton unavailable: %s", e)
        return False
    return True


def interpret_mode() -> bool:
    """True when TRITON_INTERPRET=1: Triton kernels then run on CPU tensors (slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runs_on(device: torch.device | str) -> bool:
    """Whether a Triton kernel can run on tensors of `device` in this process."""
    dev = device_of(device)
    return (dev.triton_native or (dev.triton_interpreted and interpret_mode())) and triton_available()


def resolve(choice: KernelChoice | str, device: torch.device | str) -> KernelChoice:
    """Turn AUTO into a concrete choice for `device`; check that TRITON can run there."""
    choice = KernelChoice(choice)
    dev = device_of(device)
    if choice is KernelChoice.AUTO:
        return KernelChoice.TRITON if dev.triton_native and triton_available() else KernelChoice.TORCH
    if choice is KernelChoice.TRITON and not triton_runs_on(dev.torch):
        why = "triton does not import" if dev.triton_native else (
            f"tensors are on {dev.type}; use CUDA or set TRITON_INTERPRET=1 before kernels are imported")
        raise ValueError(f"KernelChoice.TRITON cannot run: {why}. Use KernelChoice.TORCH "
                         "or KernelChoice.AUTO instead.")
    return choice

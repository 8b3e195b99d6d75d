"""Compute dtypes: the names the commands take and the autocast context of one."""
from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, dtype_name: str | None):
    """Autocast to a runtime dtype ('fp32', 'bf16', 'fp16'; None or 'fp32': none), e.g. a plan's."""
    dtype = DTYPES[dtype_name or "fp32"]
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)

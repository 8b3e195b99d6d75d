"""The host's share of a generation: how many operators a model family dispatches.

A GPU runs the coarse scales of a VAR-style generation faster than the host can dispatch their
operators, so a described GPU's overhead is the operators dispatched times the host's cost per
operator (the catalogue's `host_dispatch_us`, or the one `litevar calibrate` measures). The count
is the family's, not the device's: it is counted here, by running the family's own model at toy
width under a dispatch counter, at two depths and two schedules, and fitted as

    ops(S, D) = a + b * S + c * S * D        (S scales, D blocks)

which is exact for a model whose every scale runs the same operators per block and per scale.
The decode adds a fixed number (`decode`). Nothing is assumed about a family: a new one is
counted the same way.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

log = logging.getLogger(__name__)

DEPTHS = (1, 2)
SCHEDULES = ((1, 2, 3), (1, 2))  # the first is loaded, the others share its weights where the family can


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> int:
    """ATen operators `fn()` dispatches."""
    with torch.no_grad(), _Counter() as c:
        fn()
    return c.n


@dataclass(frozen=True)
class HostOps:
    """ops(S, D) = a + b S + c S D for the transformer phase, plus `decode` for the decode."""

    a: float
    b: float
    c: float
    decode: float

    def count(self, scales: int, depth: int) -> float:
        return self.a + self.b * scales + self.c * scales * depth + self.decode

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "c": self.c, "decode": self.decode}


@cache
def host_ops(family_name: str) -> HostOps:
    """The operator counts of `family_name` (cached per process; a second or two on a CPU)."""
    from litevar.models.core.family import ModelFlags, get_family
    family = get_family(family_name)
    rows, y, decode = [], [], 0
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    for depth in DEPTHS:
        loaded = family.load(ModelFlags(family=family_name, random_init=True, depth=depth, patch_nums=SCHEDULES[0]),
                             cpu)
        for pns in SCHEDULES:
            try:
                vae, model = family.model_for_schedule(*loaded, pns)
            except NotImplementedError:
                vae, model = family.load(ModelFlags(family=family_name, random_init=True, depth=depth,
                                                    patch_nums=pns), cpu)
            rows.append([1.0, len(pns), len(pns) * depth])
            y.append(count_ops(family.transformer_phase(model, 1, "fp32")))
            if not decode:
                latent = family.random_latent(vae, pns[-1] * vae.downsample, cpu)
                decode = count_ops(lambda vae=vae, latent=latent: family.decode(vae, latent))
    coef, *_ = np.linalg.lstsq(np.array(rows), np.array(y, dtype=float), rcond=None)
    a, b, c = (float(v) for v in coef)
    log.info("host ops of %s: %.0f + %.0f S + %.0f S D, decode %d", family_name, a, b, c, decode)
    return HostOps(a, b, c, float(decode))

"""Token sampling with the official semantics (same generator draws, same tokens per seed)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_with_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                             rng: torch.Generator | None = None, num_samples: int = 1) -> torch.Tensor:
    """Top-k, then nucleus (top-p) filtering in place, then a multinomial draw -> (B, l, n)."""
    B, l, V = logits_BlV.shape
    if top_k > 0:
        kth = logits_BlV.topk(min(top_k, V), largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False  # always keep the most likely token
        logits_BlV.masked_fill_(drop_sorted.scatter(sorted_idx.ndim - 1, sorted_idx, drop_sorted), -torch.inf)
    replacement = num_samples >= 0
    probs_NV = logits_BlV.softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs_NV, num_samples=abs(num_samples), replacement=replacement,
                             generator=rng).view(B, l, abs(num_samples))


def gumbel_softmax_with_rng(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, eps: float = 1e-10,
                            dim: int = -1, rng: torch.Generator | None = None) -> torch.Tensor:
    if rng is None:
        return F.gumbel_softmax(logits=logits, tau=tau, hard=hard, eps=eps, dim=dim)
    gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(generator=rng).log()
    y_soft = ((logits + gumbels) / tau).softmax(dim)
    if not hard:
        return y_soft
    index = y_soft.max(dim, keepdim=True)[1]
    y_hard = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft

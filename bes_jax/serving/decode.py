"""Running one batch: a greedy decode of exactly ``n_out`` new tokens.

One function shared by the in-process worker, the model process (:mod:`bes_jax.serving.runner`)
and the profiler, so the latency the profile measures is the latency the pool pays. No early
stop at EOS: the output length, hence the batch time, is what the profile assumed.
"""
from __future__ import annotations

from typing import Sequence

from bes_jax.serving.models import PAD_ID


def greedy_decode(model, prompts: Sequence[Sequence[int]], n_out: int, dev: str) -> list[list[int]]:
    """Greedy decode of exactly ``n_out`` new tokens for a left-padded batch (KV cache)."""
    import torch
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    out = []
    with torch.inference_mode():
        res = model(input_ids=ids, attention_mask=mask, use_cache=True)
        for step in range(n_out):
            nxt = res.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            out.append(nxt)
            if step == n_out - 1:
                break
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            res = model(input_ids=nxt, attention_mask=mask, past_key_values=res.past_key_values, use_cache=True)
    return torch.cat(out, dim=1).cpu().tolist() if out else [[] for _ in prompts]

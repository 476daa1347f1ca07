"""Model specs: the OPT dimensions the pool can build, and how one is loaded.

Kept apart from the pool because the profiler (parameter counts, which OPT size a tiny model
stands in for) and the live routers need the presets without any of the serving machinery.

The tiny family exists for CPU runs: its sizes are chosen for a clear latency ratio (about
1 : 4 : 12 at batch 1 on one CPU thread) while a batch of 8 on the large one stays under about
0.2 s. Weights are random (``OPTConfig`` at the preset's dimensions, seeded) unless
``weights="pretrained"``, which calls ``from_pretrained`` on a hub name or a local directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# OPT's reserved ids: <s>=0, <pad>=1, </s>=2, <unk>=3.
PAD_ID, BOS_ID, EOS_ID = 1, 2, 2


@dataclass(frozen=True)
class ModelSpec:
    """Dimensions of one OPT-architecture model."""

    name: str
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int = 50272
    max_positions: int = 2048
    hub_id: Optional[str] = None  # where real weights live, when asked for
    #: for tiny models: the OPT size they stand in for (qualities are borrowed from it)
    stands_in_for: Optional[str] = None

    def opt_config(self):
        from transformers import OPTConfig
        return OPTConfig(vocab_size=self.vocab, hidden_size=self.hidden, num_hidden_layers=self.layers,
                         num_attention_heads=self.heads, ffn_dim=self.ffn,
                         max_position_embeddings=self.max_positions, word_embed_proj_dim=self.hidden,
                         do_layer_norm_before=True, pad_token_id=PAD_ID, bos_token_id=BOS_ID,
                         eos_token_id=EOS_ID, dropout=0.0, attention_dropout=0.0)


#: OPT paper Table 1 (see ../shared/docs/OPT_FACTS.md) and a tiny family for CPU runs.
PRESETS: dict[str, ModelSpec] = {
    "opt-125m": ModelSpec("opt-125m", 768, 12, 12, 3072, hub_id="facebook/opt-125m"),
    "opt-1.3b": ModelSpec("opt-1.3b", 2048, 24, 32, 8192, hub_id="facebook/opt-1.3b"),
    "opt-6.7b": ModelSpec("opt-6.7b", 4096, 32, 32, 16384, hub_id="facebook/opt-6.7b"),
    "tiny-s": ModelSpec("tiny-s", 64, 2, 2, 256, vocab=260, max_positions=512, stands_in_for="opt-125m"),
    "tiny-m": ModelSpec("tiny-m", 256, 4, 4, 1024, vocab=260, max_positions=512, stands_in_for="opt-1.3b"),
    "tiny-l": ModelSpec("tiny-l", 512, 6, 8, 2048, vocab=260, max_positions=512, stands_in_for="opt-6.7b"),
}
POOL_PRESETS = {"tiny": ("tiny-s", "tiny-m", "tiny-l"), "opt": ("opt-125m", "opt-1.3b", "opt-6.7b")}


def param_count(spec: ModelSpec) -> int:
    """Parameters of an OPT model with tied embeddings (the position table has 2 extra rows)."""
    h, f = spec.hidden, spec.ffn
    per_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
    return spec.vocab * h + (spec.max_positions + 2) * h + spec.layers * per_layer + 2 * h


def load_model(spec: ModelSpec, weights: str, source: Optional[str], dtype: str, device: str, seed: int):
    """An ``OPTForCausalLM`` in eval mode on ``device``: random (seeded) or ``from_pretrained``.

    Takes only picklable arguments, so a model process (:mod:`bes_jax.serving.runner`) can load
    the same weights from the same tuple."""
    import torch
    from transformers import OPTForCausalLM
    dt = getattr(torch, dtype)
    if weights == "pretrained":
        model = OPTForCausalLM.from_pretrained(source, dtype=dt)
    else:
        torch.manual_seed(seed)
        model = OPTForCausalLM(spec.opt_config()).to(dt)
    return model.to(device).eval()

"""Tokenizers: text <-> token ids for the pool's models.

Separate from the models because the choice depends only on where the weights come from: random
weights have no vocabulary of their own, so they get :class:`ByteTokenizer`, which needs no files
(tests and CPU runs stay offline); real weights get the real OPT tokenizer.
"""
from __future__ import annotations

from typing import Sequence

from bes_jax.serving.models import PAD_ID


class ByteTokenizer:
    """Offline tokenizer: one token per UTF-8 byte, id = byte + 4 (ids 0..3 are OPT's specials).

    Works for any vocabulary of at least 260 ids, so it maps into the tiny models' vocabulary
    and into the real OPT one alike. Decoding drops ids outside the byte range.
    """

    offset = 4
    pad_id = PAD_ID

    def __init__(self, vocab_size: int = 260):
        if vocab_size < 256 + self.offset:
            raise ValueError(f"ByteTokenizer needs a vocabulary of at least {256 + self.offset} ids, got {vocab_size}")
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - self.offset for i in ids if self.offset <= int(i) < self.offset + 256)
        return data.decode("utf-8", errors="replace")


class HFTokenizer:
    """The real OPT tokenizer (only used when weights come from the hub or a local directory)."""

    pad_id = PAD_ID

    def __init__(self, source: str):
        from transformers import AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(source)
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=True)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

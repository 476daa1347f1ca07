"""Engines the router forwards to: any OpenAI-compatible HTTP endpoint (vLLM, SGLang, TGI,
``transformers serve``) and the in-process PyTorch pool, behind one :class:`Engine` interface.

``bes-serve pool=engines`` (:mod:`.gateway`) routes OpenAI requests over them; ``bes-profile
--engine`` (:mod:`.profiler`) fits a live engine's iteration model. See docs/serving.md.
"""
from bes_jax.serving.engines.base import Engine, EngineError, UpstreamReply

__all__ = ["Engine", "EngineError", "UpstreamReply"]

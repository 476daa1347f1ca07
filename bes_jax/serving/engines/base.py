"""The engine interface: what the gateway needs from anything that serves one model.

An engine takes an OpenAI request body (already addressed to it: its own model id, no
``bes_jax`` fields) and either answers it whole (:meth:`Engine.submit`) or streams its SSE events
(:meth:`Engine.stream`). Failures are :class:`EngineError` with a ``kind`` the gateway acts on:
``connect``/``timeout``/``server`` mask the engine and are retried elsewhere, ``client`` (the
engine refused this request, 4xx) is passed back to the caller as is.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional

#: kinds of EngineError that say the engine (not the request) is at fault
ENGINE_FAULTS = ("connect", "timeout", "server", "protocol")


class EngineError(Exception):
    """An engine failed a request. ``kind``: connect, timeout, server (5xx), protocol (a reply
    that is not the OpenAI format), client (4xx: the request's fault, not masked)."""

    def __init__(self, kind: str, message: str, status: Optional[int] = None, body: Optional[dict] = None):
        super().__init__(message)
        self.kind, self.message, self.status, self.body = kind, message, status, body

    @property
    def engine_fault(self) -> bool:
        return self.kind in ENGINE_FAULTS


def chunk_tokens(d: dict, kind: str) -> int:
    """Tokens a streamed chunk carries: one per chunk that has text, or that has an empty text and
    no finish reason (a token that decodes to nothing, e.g. a special token of a random model);
    vLLM and ``transformers serve`` send one chunk per token."""
    n = 0
    for ch in d.get("choices") or []:
        if kind == "chat":
            delta = ch.get("delta") or {}
            if (delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls")
                    or ("content" in delta and delta.get("content") is not None and not ch.get("finish_reason"))):
                n += 1
        elif ch.get("text") or ("text" in ch and not ch.get("finish_reason")):
            n += 1
    return n


@dataclass
class UpstreamReply:
    """A whole (non-streamed) answer."""

    status: int
    body: dict
    headers: dict = field(default_factory=dict)


class Engine(ABC):
    """One serving endpoint of one model of the pool (a replica, in the simulator's terms)."""

    #: the profile's model this engine serves
    model: str
    #: a printable identity (never includes credentials)
    name: str

    async def start(self) -> None:
        """Connect / discover what is needed before the first request (e.g. the upstream model id)."""

    @abstractmethod
    async def submit(self, path: str, body: dict) -> UpstreamReply:
        """Answer ``body`` on ``path`` (``/v1/completions`` or ``/v1/chat/completions``)."""

    @abstractmethod
    def stream(self, path: str, body: dict) -> "AsyncIterator[bytes]":
        """An async context manager whose value is an async iterator over SSE events (each one
        ``data: ...`` block without its trailing blank line). Entering it raises
        :class:`EngineError` if the engine refuses; the iteration may raise it mid-stream."""

    @abstractmethod
    async def health(self) -> bool:
        """True when the engine answers its health probe."""

    async def metrics(self) -> dict:
        """The engine's own load gauges when it publishes them (``running``, ``waiting``,
        ``kv_usage`` in 0..1), else ``{}``."""
        return {}

    async def close(self) -> None:
        """Release connections."""

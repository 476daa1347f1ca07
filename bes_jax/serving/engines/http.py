"""An OpenAI-compatible engine over HTTP (vLLM, SGLang, TGI, ``transformers serve``), with httpx.

The engine's own model id (what it expects in ``model``) is discovered from ``GET /v1/models``
unless configured; ``/health`` (falling back to ``/v1/models``) is the health probe; vLLM's
Prometheus gauges are scraped from ``/metrics`` on a short timeout and parsed with
``prometheus_client.parser``. The API key, when there is one, goes only into the
``Authorization`` header and is never part of :attr:`name`, a log line or an error.
"""
from __future__ import annotations

import contextlib
import json
import logging
from typing import Optional

from bes_jax.serving.engines.base import Engine, EngineError, UpstreamReply

log = logging.getLogger("bes_jax.serving.engines")

#: vLLM's gauges (the KV one was renamed in vLLM v1) -> what the router reads
VLLM_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:gpu_cache_usage_perc": "kv_usage",
    "vllm:kv_cache_usage_perc": "kv_usage",
}


def parse_engine_metrics(text: str) -> dict:
    """``{running, waiting, kv_usage}`` from a Prometheus exposition (summed over label sets,
    e.g. several served model names); keys the engine does not publish are absent."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = VLLM_GAUGES.get(s.name)
            if key is not None:
                out[key] = out.get(key, 0.0) + float(s.value)
    return out


class HttpEngine(Engine):
    def __init__(self, model: str, url: str, *, index: int = 0, api_key: Optional[str] = None,
                 served_model: Optional[str] = None, connect_timeout_s: float = 2.0,
                 read_timeout_s: float = 60.0, probe_timeout_s: float = 1.0,
                 metrics_timeout_s: float = 0.2, scrape_metrics: bool = True):
        import httpx
        self.model, self.url, self.index = model, url.rstrip("/"), index
        self.name = f"{model}#{index} {self.url}"
        self.served_model = served_model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=10.0, pool=10.0)
        self.probe_timeout_s, self.metrics_timeout_s = float(probe_timeout_s), float(metrics_timeout_s)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=self._timeout, limits=limits)
        self.scrape_metrics = bool(scrape_metrics)
        self._metrics_missing = False

    def __repr__(self):
        return f"HttpEngine({self.name!r})"

    # ------------------------------------------------------------------ discovery, health
    async def start(self) -> None:
        if self.served_model:
            return
        try:
            r = await self.client.get("/v1/models", timeout=self.probe_timeout_s * 5)
            data = r.json().get("data") or []
            if r.status_code == 200 and data and isinstance(data[0], dict) and data[0].get("id"):
                self.served_model = str(data[0]["id"])
        except Exception as e:  # an engine down at start is masked and probed; its id is found later
            log.warning("engine %s: could not list its models yet (%s)", self.name, type(e).__name__)

    async def health(self) -> bool:
        import httpx
        try:
            r = await self.client.get("/health", timeout=self.probe_timeout_s)
            if r.status_code == 404:
                r = await self.client.get("/v1/models", timeout=self.probe_timeout_s)
            ok = r.status_code == 200
        except (httpx.HTTPError, OSError):
            return False
        if ok and not self.served_model:
            await self.start()
        return ok and bool(self.served_model)

    async def metrics(self) -> dict:
        if not self.scrape_metrics or self._metrics_missing:
            return {}
        import httpx
        try:
            r = await self.client.get("/metrics", timeout=self.metrics_timeout_s)
        except (httpx.HTTPError, OSError):
            return {}
        if r.status_code == 404:  # e.g. transformers serve: stop asking
            self._metrics_missing = True
            return {}
        if r.status_code != 200:
            return {}
        try:
            return parse_engine_metrics(r.text)
        except Exception:  # not Prometheus text
            self._metrics_missing = True
            return {}

    # ------------------------------------------------------------------ requests
    def _addressed(self, body: dict) -> dict:
        if not self.served_model:
            raise EngineError("connect", f"engine {self.name} has not reported its model id (is it up?)")
        return {**body, "model": self.served_model}

    @staticmethod
    def _error_from(status: int, raw: bytes, name: str) -> EngineError:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        detail = raw[:300].decode("utf-8", "replace")
        kind = "server" if status >= 500 else "client"
        return EngineError(kind, f"engine {name} answered HTTP {status}: {detail}", status=status,
                           body=body if isinstance(body, dict) else None)

    def _transport(self, e: Exception) -> EngineError:
        import httpx
        if isinstance(e, httpx.TimeoutException):
            return EngineError("timeout", f"engine {self.name} timed out ({type(e).__name__})")
        return EngineError("connect", f"engine {self.name} unreachable: {type(e).__name__}: {e}")

    async def submit(self, path: str, body: dict) -> UpstreamReply:
        import httpx
        try:
            r = await self.client.post(path, json=self._addressed(body))
        except (httpx.HTTPError, OSError) as e:
            raise self._transport(e) from None
        if r.status_code >= 400:
            raise self._error_from(r.status_code, r.content, self.name)
        try:
            data = r.json()
        except ValueError:
            raise EngineError("protocol", f"engine {self.name} answered HTTP {r.status_code} with a body "
                                          f"that is not JSON: {r.text[:200]!r}") from None
        if not isinstance(data, dict):
            raise EngineError("protocol", f"engine {self.name} answered a JSON {type(data).__name__}, not an object")
        return UpstreamReply(r.status_code, data)

    @contextlib.asynccontextmanager
    async def stream(self, path: str, body: dict):
        import httpx
        try:
            async with self.client.stream("POST", path, json=self._addressed(body)) as r:
                if r.status_code >= 400:
                    raise self._error_from(r.status_code, await r.aread(), self.name)
                yield self._events(r)
        except (httpx.HTTPError, OSError) as e:
            raise self._transport(e) from None

    async def _events(self, r):
        """SSE events, one per blank-line-terminated block (comment lines dropped)."""
        import httpx
        buf: list[str] = []
        try:
            async for line in r.aiter_lines():
                if line == "":
                    if buf:
                        yield "\n".join(buf)
                        buf = []
                elif not line.startswith(":"):
                    buf.append(line)
            if buf:
                yield "\n".join(buf)
        except (httpx.HTTPError, OSError) as e:
            raise self._transport(e) from None

    async def close(self) -> None:
        await self.client.aclose()

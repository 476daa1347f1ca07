"""The in-process PyTorch pool (:mod:`bes_jax.serving.pool`) as an :class:`Engine`: one model of
the pool, served with the simulator's request-level batching (every token of a batch arrives at
its end, so a "stream" is one chunk with the whole text and a closing chunk).

``bes-serve pool=tiny`` keeps its own service (it routes under the pool lock on the pool's exact
queue state); this adapter lets the same pool sit behind the engine interface next to HTTP
engines, e.g. in tests or as a local fallback model.
"""
import asyncio
import contextlib
import time
import uuid

from bes_jax.serving.engines.base import Engine, EngineError, UpstreamReply


class PoolEngine(Engine):
    def __init__(self, pool, model: str, *, task: int = 0, default_max_tokens: int = 16):
        if model not in pool.model_names:
            raise ValueError(f"PoolEngine: model {model!r} is not in the pool ({pool.model_names})")
        self.pool, self.model, self.m = pool, model, pool.model_names.index(model)
        self.name = f"{model} (in-process pool)"
        self.task, self.default_max_tokens = int(task), int(default_max_tokens)

    async def _generate(self, body: dict):
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise EngineError("client", "the in-process pool serves /v1/completions with a non-empty string prompt",
                              status=400)
        n_out = int(body.get("max_tokens") or self.default_max_tokens)
        ids = self.pool.tokenizer.encode(prompt)
        limit = self.pool.max_prompt_tokens(n_out)
        if len(ids) > limit:
            raise EngineError("client", f"prompt is {len(ids)} tokens; at most {limit} fit with max_tokens={n_out}",
                              status=400)
        from bes_jax.serving.pool import ModelUnavailable, QueueFull, WorkerCrashed
        try:
            req = self.pool.submit(self.task, ids, n_out, lambda snap: self.m)
        except QueueFull as e:
            raise EngineError("server", f"{self.name}: {e}", status=503) from None
        except ModelUnavailable as e:
            raise EngineError("connect", f"{self.name}: {e}") from None
        try:
            res = await asyncio.wrap_future(req.future)
        except WorkerCrashed as e:
            raise EngineError("server", f"{self.name}: {e}", status=503) from None
        return ids, res

    @staticmethod
    def _check_path(path: str):
        if path != "/v1/completions":
            raise EngineError("client", f"the in-process pool serves /v1/completions only, not {path}", status=404)

    async def submit(self, path: str, body: dict) -> UpstreamReply:
        self._check_path(path)
        ids, res = await self._generate(body)
        return UpstreamReply(200, {
            "id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "created": int(time.time()),
            "model": self.model, "choices": [{"index": 0, "text": res.text, "finish_reason": "length"}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(res.token_ids),
                      "total_tokens": len(ids) + len(res.token_ids)}})

    @contextlib.asynccontextmanager
    async def stream(self, path: str, body: dict):
        self._check_path(path)
        ids, res = await self._generate(body)

        async def events():
            import json
            base = {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "created": int(time.time()),
                    "model": self.model}
            yield "data: " + json.dumps({**base, "choices": [{"index": 0, "text": res.text}]})
            yield "data: " + json.dumps({**base, "choices": [{"index": 0, "text": "", "finish_reason": "length"}],
                                         "usage": {"prompt_tokens": len(ids), "completion_tokens": len(res.token_ids),
                                                   "total_tokens": len(ids) + len(res.token_ids)}})
            yield "data: [DONE]"
        yield events()

    async def health(self) -> bool:
        return bool(self.pool.alive_models()[self.m])

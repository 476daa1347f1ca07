"""``pool=engines`` config: which URLs serve which model, and their credentials.

``pool.urls`` takes three forms, all in the profile's model order when unnamed:

* ``[URL_small, URL_medium, URL_large]``: one engine per model;
* ``[[URL, URL], [URL], [URL]]``: one or more engines per model;
* ``{model_name: URL or [URL, ...]}``: by name (every profile model must appear).

An engine entry may also be a mapping ``{url, api_key, api_key_env, served_model}``. Engine API
keys come from the entry, else ``pool.engine_api_key_env`` (an environment variable name), else
``pool.engine_api_key``; they are kept out of every printed name and error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit


@dataclass(frozen=True)
class EngineEntry:
    model: str
    url: str
    api_key: Optional[str] = None
    served_model: Optional[str] = None

    def __repr__(self):  # never print the key
        return f"EngineEntry(model={self.model!r}, url={self.url!r}, api_key={'***' if self.api_key else None})"


def _check_url(u, where: str) -> str:
    if not isinstance(u, str) or not u.strip():
        raise ValueError(f"{where} = {u!r}: expected a base URL such as 'http://127.0.0.1:8001'")
    parts = urlsplit(u.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{where} = {u!r}: not an http(s) base URL (e.g. 'http://127.0.0.1:8001')")
    if parts.username or parts.password:
        raise ValueError(f"{where}: put credentials in api_key / api_key_env, not in the URL")
    u = u.strip().rstrip("/")
    return u[:-3] if u.endswith("/v1") else u  # the OpenAI base URL form is accepted too


def _entry(model: str, e, where: str, default_key: Optional[str]) -> EngineEntry:
    if isinstance(e, dict):
        unknown = sorted(set(e) - {"url", "api_key", "api_key_env", "served_model"})
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown} (an engine has url, api_key, api_key_env, served_model)")
        key = e.get("api_key")
        env = e.get("api_key_env")
        if env:
            if env not in os.environ:
                raise ValueError(f"{where}.api_key_env = {env!r}: environment variable not set")
            key = os.environ[env]
        return EngineEntry(model, _check_url(e.get("url"), f"{where}.url"), key or default_key,
                           e.get("served_model") or None)
    return EngineEntry(model, _check_url(e, where), default_key)


def parse_engine_urls(urls, model_names, *, api_key: Optional[str] = None,
                      api_key_env: Optional[str] = None) -> list[EngineEntry]:
    """Engines (model-major, in the profile's model order) from ``pool.urls``."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
        if isinstance(urls, (DictConfig, ListConfig)):
            urls = OmegaConf.to_container(urls, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    names = list(model_names)
    default_key = api_key or None
    if api_key_env:
        if api_key_env not in os.environ:
            raise ValueError(f"pool.engine_api_key_env = {api_key_env!r}: environment variable not set")
        default_key = os.environ[api_key_env]
    if urls is None or urls == [] or urls == {} or urls == "???":
        raise ValueError(f"pool.urls is required for pool=engines: one or more base URLs per model {names}, "
                         "e.g. pool.urls=[http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003]")
    if isinstance(urls, str):
        urls = [urls]
    if isinstance(urls, dict):
        missing = [n for n in names if n not in urls]
        extra = [k for k in urls if k not in names]
        if extra:
            raise ValueError(f"pool.urls: model(s) {extra} are not in the profile (its models: {names})")
        if missing:
            raise ValueError(f"pool.urls: no engine for model(s) {missing} (profile models: {names})")
        per_model = [urls[n] for n in names]
    else:
        if len(urls) != len(names):
            raise ValueError(f"pool.urls has {len(urls)} entries, the profile has {len(names)} models {names}: "
                             "give one URL (or a list of URLs) per model, in this order, or a mapping by name")
        per_model = list(urls)
    out: list[EngineEntry] = []
    for n, group in zip(names, per_model):
        group = group if isinstance(group, list) else [group]
        if not group:
            raise ValueError(f"pool.urls[{n!r}]: empty list; every model needs at least one engine")
        for k, e in enumerate(group):
            out.append(_entry(n, e, f"pool.urls[{n!r}][{k}]", default_key))
    seen = {}
    for e in out:
        if e.url in seen:
            raise ValueError(f"pool.urls: {e.url} is listed for both {seen[e.url]!r} and {e.model!r}")
        seen[e.url] = e.model
    return out

"""bes_jax: learned best-effort LLM serving in JAX.

Layout: ``profile`` (latency/quality tables), ``latency`` (analytic latency model),
``env`` (the vectorized serving simulator), ``reference`` (plain-Python twin),
``workloads``, ``routers``, ``eval`` (metrics), ``agents`` (Double-DQN), ``serving``.
"""
from pathlib import Path

__version__ = "0.1.0"

#: Repository root (conf/, profiles/ live there; the package is installed editable).
REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO_ROOT / "profiles"
CONF_DIR = REPO_ROOT / "conf"

"""bes_jax: learned best-effort LLM serving in JAX.

Layout: ``profile`` (latency/quality tables), ``latency`` (analytic latency model),
``env`` (the vectorized serving simulator), ``reference`` (plain-Python twin),
``workloads``, ``routers``, ``eval`` (metrics), ``agents`` (Double-DQN), ``serving``.
"""
from pathlib import Path

__version__ = "0.1.0"

#: The package directory: ``conf/`` (Hydra configs), ``profiles/`` (shipped profiles) and ``data/``
#: (shipped trace samples, ``pkg:NAME`` in configs) are package data inside it.
PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR / "conf"
PROFILES_DIR = PACKAGE_DIR / "profiles"
DATA_DIR = PACKAGE_DIR / "data"
#: The directory above the package. In a source checkout that is the repository (scripts/, docs/,
#: tests/; ``../shared/`` next to it); in an installed wheel it is site-packages: only scripts and
#: tests, which run from a checkout, use it.
REPO_ROOT = PACKAGE_DIR.parent

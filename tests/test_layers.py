"""Layers: `bes_jax/cli/` is command wiring only. No library module (everything under bes_jax/
except bes_jax/cli) imports bes_jax.cli, at module level or inside a function, and importing
every library module leaves bes_jax.cli unimported."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import bes_jax

PKG = Path(bes_jax.__file__).resolve().parent


def library_modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if len(parts) > 1 and parts[1] == "cli":
            continue
        out[".".join(parts)] = path
    return out


def _imported_names(path: Path, module: str) -> list[str]:
    names = []
    pkg_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(pkg_parts[:len(pkg_parts) - node.level + 1] + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def test_no_library_module_imports_the_cli():
    mods = library_modules()
    assert "bes_jax.agents.training" in mods and "bes_jax.eval.baselines" in mods and "bes_jax.workloads.from_config" in mods
    bad = {m: sorted({n for n in _imported_names(p, m) if n == "bes_jax.cli" or n.startswith("bes_jax.cli.")})
           for m, p in mods.items()}
    bad = {m: v for m, v in bad.items() if v}
    assert not bad, f"library modules importing bes_jax.cli: {bad}"


def test_importing_the_library_does_not_load_the_cli():
    code = (
        "import importlib, json, sys\n"
        f"mods = {sorted(library_modules())!r}\n"
        "skipped = {}\n"
        "for m in mods:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ImportError as e:\n"
        "        if (e.name or '').startswith('bes_jax'):\n"
        "            raise\n"
        "        skipped[m] = str(e)  # an optional third-party dependency (e.g. the serve extra)\n"
        "print(json.dumps({'cli': sorted(k for k in sys.modules if k == 'bes_jax.cli' or k.startswith('bes_jax.cli.')),\n"
        "                  'skipped': skipped}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={"JAX_PLATFORMS": "cpu", **__import__("os").environ})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["cli"] == [], out

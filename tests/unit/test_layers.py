"""The layers of DESIGN.md, enforced: the flow is one way (profile -> bundle
-> analysis -> config -> runtime -> bench), each rule has one home, and a
constant the C layer needs is pinned equal to its Python home.

Imports are read from the source (every ``import``/``cimport``, module
level or inside a function: a lazy import is an edge all the same).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import pgo

ROOT = Path(pgo.__file__).parent
CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\s+(.+)|c?import\s+([\w.]+))",
                           re.M)


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in ``path``."""
    text = path.read_text(encoding="utf-8")
    out: list[tuple[str, list[str]]] = []
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                out += [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.append((node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.ImportFrom):
                raise AssertionError(f"{path}: a relative import; pgo imports absolutely")
        return out
    # Cython: strip the docstrings and C strings first, so prose is not read
    # as an import.
    text = re.sub(r'"""(.*?)"""', "", text, flags=re.S)
    for m in CYTHON_IMPORT.finditer(text):
        if m.group(1):
            names = re.sub(r"[()\s]", " ", m.group(2)).replace(",", " ").split()
            out.append((m.group(1), [n for n in names if n != "as"]))
        else:
            out.append((m.group(3), []))
    return out


SOURCES = sorted(p for p in ROOT.rglob("*") if p.suffix in (".py", ".pyx", ".pxd"))
GRAPH = {_module(p): _imports(p) for p in SOURCES}


def _pgo_edges(module: str) -> set[str]:
    return {m for m, _ in GRAPH[module] if m == "pgo" or m.startswith("pgo.")}


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_was_read():
    # A reader that silently found nothing would make every rule below pass.
    assert len(GRAPH) > 40
    assert "pgo.analysis.optimizer" in _pgo_edges("pgo.analysis.classify") | {
        "pgo.analysis.optimizer"}
    assert "pgo.config" in _pgo_edges("pgo.analysis.optimizer")
    assert "pgo._core._base" in _pgo_edges("pgo._core.arena")


def test_core_imports_nothing_of_pgo_but_core_and_errors():
    bad = {(m, e) for m in GRAPH if _in(m, "pgo._core")
           for e in _pgo_edges(m) if not _in(e, "pgo._core", "pgo._errors")}
    assert not bad


@pytest.mark.parametrize("layer", ["pgo.config", "pgo.bundle", "pgo.analysis", "pgo._sizes",
                                   "pgo._errors"])
def test_plain_data_layers_never_import_core_runtime_or_profiling(layer):
    bad = {(m, e) for m in GRAPH if _in(m, layer) for e in _pgo_edges(m)
           if _in(e, "pgo._core", "pgo.runtime", "pgo.profiling", "pgo.bench", "pgo.commands")}
    assert not bad


def test_runtime_never_imports_analysis_profiling_or_commands():
    bad = {(m, e) for m in GRAPH if _in(m, "pgo.runtime") for e in _pgo_edges(m)
           if _in(e, "pgo.analysis", "pgo.profiling", "pgo.commands", "pgo.bench")}
    assert not bad


def test_nothing_imports_commands():
    bad = {(m, e) for m in GRAPH if not _in(m, "pgo.commands") and m != "pgo.__main__"
           for e in _pgo_edges(m) if _in(e, "pgo.commands")}
    assert not bad


def test_no_private_name_is_imported_across_modules():
    # `from pgo.x import _helper` ties two modules by a name neither
    # promises to keep; modules whose own name is private (pgo._sizes)
    # are fine, their names are what they offer.
    bad = {(m, e, n) for m in GRAPH for e, names in GRAPH[m] if _in(e, "pgo")
           for n in names if n.startswith("_") and not n.startswith("__")
           and f"{e}.{n}" not in GRAPH}
    assert not bad


def test_the_sizes_the_c_layer_uses_are_pgo_sizes():
    from pgo import _sizes
    from pgo._core import numpy_bridge

    assert numpy_bridge.SMALL_BLOCK_BYTES == _sizes.SMALL_BLOCK_BYTES
    assert numpy_bridge.HUGEPAGE_MIN_BYTES == _sizes.HUGEPAGE_MIN_BYTES


def test_config_patterns_are_what_analysis_decides_between():
    from pgo import config
    from pgo.analysis import classify

    assert set(classify.STRATEGY) == set(config.PATTERNS)


def test_plain_numbers_never_use_exponent_notation():
    from pgo._sizes import fmt_plain
    assert [fmt_plain(v) for v in (41823.0, 1.25, 1.0, 0.0312, 250.0, -1500.0)] == \
        ["41,823", "1.25", "1", "0.0312", "250", "-1,500"]

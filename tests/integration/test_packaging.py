"""Every package of the source tree is installed (pyproject lists them)."""

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed_in_pyproject():
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not next to the source tree")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pgo").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)

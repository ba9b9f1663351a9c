"""What the integration tests share: the real CLI in a subprocess, and the
example bundles next to the tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
EXAMPLES = Path(__file__).resolve().parents[2] / "profiles" / "examples"


@pytest.fixture
def pgo_cli():
    """``pgo_cli(*args, cwd=..., timeout=300)``: ``python -m pgo ARGS``, its
    output captured."""
    def run(*args, cwd, timeout=300):
        return subprocess.run([sys.executable, "-m", "pgo", *map(str, args)], cwd=cwd, env=ENV,
                              capture_output=True, text=True, timeout=timeout)
    return run


@pytest.fixture
def example_bundles():
    if not EXAMPLES.is_dir():
        pytest.skip("example bundles not next to the tests")
    return EXAMPLES

"""README.md's Python examples run as written (against the installed pgo)."""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if README.exists() else []


@pytest.mark.skipif(not BLOCKS, reason="README.md is not next to the tests")
@pytest.mark.parametrize("code", BLOCKS, ids=[f"example{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code):
    proc = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", "import numpy as np\nimport pgo\n" + code],
        capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir(),
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

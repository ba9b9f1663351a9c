"""numpy's own tests on pgo memory: scripts/numpy_suite.py runs a slice of
numpy's installed test suite twice, plain and with a pgo Router (slab,
arena and cache routes) installed as numpy's global data-memory handler,
and the outcome counts must be the same.

The full slice (five files, several minutes) is the script's default run;
here CI runs a small one that still sends arrays down every route.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "numpy_suite.py"

# Small enough for CI (both runs together take about 25 s on two cores,
# normal or test build), and every route serves arrays in it: all four files
# use the slab and the arena, test_umath's arrays over 1 MiB the cache.
CI_FILES = ("test_indexing.py", "test_shape_base.py", "test_umath.py", "test_numeric.py")
CI_MARKERS = "not slow"
CI_KEYWORD = None


def _load_script():
    spec = importlib.util.spec_from_file_location("numpy_suite", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("numpy_suite", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def suite():
    assert SCRIPT.is_file(), f"{SCRIPT} is missing"
    return _load_script()


# -- the script's own logic (fast) -----------------------------------------------

def test_parse_summary(suite):
    assert suite.parse_summary("....\n316 passed, 1 deselected in 0.54s\n") == {
        "passed": 316, "deselected": 1}
    text = "x\n= 3 failed, 10 passed, 2 skipped, 1 xfailed, 1 xpassed, 1 warning, 2 errors in 2.00s =\n"
    assert suite.parse_summary(text) == {
        "failed": 3, "passed": 10, "skipped": 2, "xfailed": 1, "xpassed": 1,
        "warnings": 1, "errors": 2}
    assert suite.parse_summary("1 error in 0.10s (0:00:00)") == {"errors": 1}
    assert suite.parse_summary("no tests ran in 0.01s") == {}
    # A crash: no summary line at all.
    assert suite.parse_summary("....\nFatal Python error: Segmentation fault\n") is None


def _run(name, counts, rc=0):
    return {"name": name, "counts": counts, "returncode": rc, "timed_out": False,
            "wall_s": 1.0, "log": f"{name}.log", "outcomes": {}, "per_file": {}}


def _stats(allocs=(5, 5, 5), errors=0, handler="pgo-numpy-suite"):
    names = ("SlabAllocator", "ArenaAllocator", "CacheAllocator")
    return {"router": {"name": "pgo-numpy-suite", "errors": errors, "fallback": 0,
                       "routes": [{"min_bytes": i, "max_bytes": None, "allocator": n,
                                   "allocations": a}
                                  for i, (n, a) in enumerate(zip(names, allocs))]},
            "allocators": {}, "installed_at_end": True, "handler_at_end": handler}


def test_compare_accepts_identical_runs(suite):
    plain = _run("plain", {"passed": 10, "skipped": 2})
    pgo = _run("pgo", {"passed": 10, "skipped": 2, "warnings": 3})
    pgo["pgo_stats"] = _stats()
    problems, differing = suite.compare(plain, pgo)
    assert problems == [] and differing == []


@pytest.mark.parametrize("change, expected", [
    (lambda p: p["counts"].update(passed=9, failed=1), "passed: 10 plain, 9 with pgo"),
    (lambda p: p["counts"].update(xfailed=1), "xfailed: 0 plain, 1 with pgo"),
    (lambda p: p.update(counts=None, returncode=-11), "killed by signal 11"),
    (lambda p: p.update(timed_out=True), "timed out"),
    (lambda p: p.update(pgo_stats=_stats(allocs=(5, 0, 5))), "ArenaAllocator"),
    (lambda p: p.update(pgo_stats=_stats(errors=2)), "router errors: 2"),
    (lambda p: p.update(pgo_stats=_stats(handler="default_allocator")), "handler at the end"),
    (lambda p: p.update(pgo_stats=None), "no router stats"),
    (lambda p: p.update(outcomes={"t::a": "failed"}), "1 tests changed outcome"),
])
def test_compare_reports_each_difference(suite, change, expected):
    plain = _run("plain", {"passed": 10})
    plain["outcomes"] = {"t::a": "passed"}
    pgo = _run("pgo", {"passed": 10})
    pgo["outcomes"] = {"t::a": "passed"}
    pgo["pgo_stats"] = _stats()
    change(pgo)
    problems, _ = suite.compare(plain, pgo)
    assert any(expected in p for p in problems), problems


# -- the real thing -------------------------------------------------------------------

@pytest.mark.slow
def test_numpy_slice_same_outcomes_with_pgo(suite, tmp_path):
    pytest.importorskip("hypothesis", reason="numpy's conftest.py needs hypothesis")
    try:
        suite.resolve_files(CI_FILES)
    except FileNotFoundError as exc:
        pytest.skip(f"numpy's tests are not installed: {exc}")

    res = suite.run_suite(CI_FILES, keyword=CI_KEYWORD, markers=CI_MARKERS, timeout=600,
                          log_dir=tmp_path)
    report = suite.format_report(res)
    plain, pgo = res["plain"], res["pgo"]

    assert plain["counts"] is not None, report
    assert pgo["counts"] is not None, report
    # A slice that collected nothing would compare equal; it must not pass.
    assert plain["counts"].get("passed", 0) >= 1000, report
    for key in suite.COMPARED:
        assert plain["counts"].get(key, 0) == pgo["counts"].get(key, 0), report
    assert plain["returncode"] == pgo["returncode"], report

    stats = pgo["pgo_stats"]
    assert stats is not None, report
    assert [r["allocator"] for r in stats["router"]["routes"]] == [
        "SlabAllocator", "ArenaAllocator", "CacheAllocator"]
    for route in stats["router"]["routes"]:
        assert route["allocations"] > 0, report
    assert stats["router"]["errors"] == 0, report
    assert stats["handler_at_end"] == stats["router"]["name"], report
    assert res["differing_tests"] == [], report
    assert res["ok"], report

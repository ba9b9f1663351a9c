"""`pgo analyze` and `pgo merge`: the real CLI on real bundles."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pgo.targets

from pgo import bundle, config

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
EXAMPLES = Path(__file__).resolve().parents[2] / "profiles" / "examples"
TARGETS = Path(pgo.targets.__file__).resolve().parent


def pgo(*args, cwd, timeout=180):
    return subprocess.run([sys.executable, "-m", "pgo", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def examples():
    if not EXAMPLES.is_dir():
        pytest.skip("example bundles not next to the tests")
    return EXAMPLES


def test_analyze_writes_a_config_that_loads_and_is_reproducible(examples, tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    p1 = pgo("analyze", str(examples / "pipeline"), "-o", str(a), cwd=tmp_path)
    p2 = pgo("analyze", str(examples / "pipeline"), "-o", str(b), "-q", cwd=tmp_path)
    assert p1.returncode == p2.returncode == 0, p1.stderr
    assert a.read_bytes() == b.read_bytes()
    cfg = config.load(a)
    assert [sc.allocator for sc in cfg.size_classes] == ["cache"]
    assert cfg.profile == str(examples / "pipeline")
    assert "numpy 1.0 MiB..up -> cache" in p1.stdout and f"wrote {a}" in p1.stdout
    assert p2.stdout == ""


def test_analyze_explain_and_json(examples, tmp_path):
    proc = pgo("analyze", str(examples / "scoped_temps"), "-o", str(tmp_path / "c.toml"),
               "--explain", "--top", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for text in ("Sites → pattern → strategy", "Clusters", "scoped-temporaries", "cache",
                 "while __main__:filter_tile runs -> cache"):
        assert text in proc.stdout
    proc = pgo("analyze", str(examples / "records"), "-o", str(tmp_path / "r.toml"), "--json",
               cwd=tmp_path)
    plan = json.loads(proc.stdout)
    assert {"decisions", "clusters", "suggestions", "config", "bytes_by_strategy"} <= set(plan)
    assert config.loads(plan["config"]).gc.full_collection == "growth"
    assert any("__slots__" in s for s in plan["suggestions"])
    assert all(d["strategy"] == "system" for d in plan["decisions"])


def test_analyze_errors(tmp_path):
    proc = pgo("analyze", str(tmp_path / "nope"), cwd=tmp_path)
    assert proc.returncode == 1 and "no such bundle" in proc.stderr
    assert not (tmp_path / "pgo.toml").exists()


def test_merge_runs_and_analyze_the_merged_bundle(tmp_path):
    runs = []
    for i, tiles in enumerate(("60", "120")):
        out = tmp_path / f"run{i}"
        proc = pgo("profile", "-q", "--no-cpu", "-o", str(out), str(TARGETS / "scoped_temps.py"),
                   "--tiles", tiles, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        runs.append(out)
    merged = tmp_path / "merged"
    proc = pgo("merge", *map(str, runs), "-o", str(merged), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = bundle.load(merged)
    assert len(m.runs) == 2 and m.complete
    single = [bundle.load(r) for r in runs]
    assert m.manifest["duration_s"] == pytest.approx(sum(b.manifest["duration_s"] for b in single))
    assert m.gc["generations"][0]["collections"] == \
        sum(b.gc["generations"][0]["collections"] for b in single)
    from pgo.analysis.features import extract
    sites = {s.name: s for s in extract(m) if s.domain == "numpy"}
    per_run = [{s.name: s for s in extract(b) if s.domain == "numpy"} for b in single]
    name = "__main__:filter_tile:19"
    assert sites[name].count == pytest.approx(sum(r[name].count for r in per_run))
    proc = pgo("analyze", str(merged), "-o", str(tmp_path / "m.toml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [s.function for s in config.load(tmp_path / "m.toml").sites] == ["__main__:filter_tile"]
    assert pgo("show", str(merged), cwd=tmp_path).returncode == 0


def test_merge_refuses_mismatched_bundles_unless_forced(examples, tmp_path):
    out = tmp_path / "m"
    proc = pgo("merge", str(examples / "pipeline"), str(examples / "records"), "-o", str(out),
               cwd=tmp_path)
    assert proc.returncode == 1
    assert "another program" in proc.stderr and "--force" in proc.stderr
    assert not out.exists()
    proc = pgo("merge", str(examples / "pipeline"), str(examples / "records"), "-o", str(out),
               "--force", cwd=tmp_path)
    assert proc.returncode == 0 and "merged despite" in proc.stderr
    assert any("another program" in w for w in bundle.load(out).manifest["warnings"])
    proc = pgo("merge", str(examples / "pipeline"), "-o", str(tmp_path / "one"), cwd=tmp_path)
    assert proc.returncode == 1 and "at least two" in proc.stderr


def test_the_gc_plan_measures_the_peak_heap_as_the_runtime_counts_it(tmp_path):
    # A heap of containers that never become garbage, then dropped: the plan
    # counts the profile as a fruitless collection at the heap's peak, in
    # the runtime's units (sys.getallocatedblocks()), which this program
    # prints at its peak.  Sampling (one block per 32 KiB) is unbiased, so
    # the estimate is close to the truth.
    job = tmp_path / "heap.py"
    job.write_text(
        "import sys\n"
        "keep = [{'i': i, 'l': [i, str(i)]} for i in range(400_000)]\n"
        "print(sys.getallocatedblocks())\n"
        "del keep\n")
    proc = pgo("profile", "-q", "--no-cpu", "-o", str(tmp_path / "p"), str(job), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    truth = int(proc.stdout.split()[-1])
    proc = pgo("analyze", "-q", str(tmp_path / "p"), "-o", str(tmp_path / "c.toml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan = config.load(tmp_path / "c.toml").gc
    assert plan.thresholds == (0, 0, 0) and plan.full_collection == "growth"
    assert 0.8 * truth <= plan.peak_heap_blocks <= 1.2 * truth, (plan.peak_heap_blocks, truth)


def test_analyze_refuses_a_failed_run_and_warns_on_a_stopped_one(tmp_path):
    (tmp_path / "crash.py").write_text(
        "import sys\nimport numpy as np\nkeep = [np.ones(2000) for _ in range(2000)]\n"
        "sys.exit(int(sys.argv[1]))\n")
    for code in (1, 130):
        proc = pgo("profile", "--no-cpu", "-q", "-o", str(tmp_path / f"b{code}"), "crash.py",
                   str(code), cwd=tmp_path)
        assert proc.returncode == code, proc.stderr
    failed = pgo("analyze", str(tmp_path / "b1"), "-o", "f.toml", "-q", cwd=tmp_path)
    assert failed.returncode == 1
    assert "the profiled run failed (exit code 1)" in failed.stderr
    assert "--allow-failed" in failed.stderr and not (tmp_path / "f.toml").exists()
    forced = pgo("analyze", str(tmp_path / "b1"), "-o", "f.toml", "-q", "--allow-failed",
                 cwd=tmp_path)
    assert forced.returncode == 0 and (tmp_path / "f.toml").exists()
    assert "warning:" in forced.stderr and "failed (exit code 1)" in forced.stderr
    stopped = pgo("analyze", str(tmp_path / "b130"), "-o", "s.toml", "-q", cwd=tmp_path)
    assert stopped.returncode == 0 and (tmp_path / "s.toml").exists()
    assert "was stopped (exit code 130)" in stopped.stderr and stopped.stdout == ""


@pytest.mark.parametrize("mib, cached", [(2, False), (40, True)])
def test_a_numpy_cache_only_where_glibc_would_give_the_blocks_back(tmp_path, mib, cached):
    # A one-off 16 MiB block at start, then batches of three temporaries
    # freed when the batch's function returns, as feature_store makes them:
    # of 2-4 MiB glibc keeps them in its heap (the one-off raised its
    # thresholds; a cache would only add RSS); of 40-80 MiB it maps and
    # unmaps every one (the cache's pages stay).
    import textwrap
    (tmp_path / "batches.py").write_text(textwrap.dedent(f"""
        import numpy as np
        start = float(np.ones(2 << 20).sum())
        x = np.ones(({mib} << 20) // 8)

        def batch():
            s = x * 2.0
            t = -s
            i = np.argsort(t[:16]).astype(np.int64).repeat(2 * t.size // 16)
            return float(s[0] + t[0] + i[0])

        print(max(batch() for _ in range(40)))
    """))
    proc = pgo("profile", "-q", "--no-cpu", "-o", "b", "--", "python", "batches.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = pgo("analyze", "b", "-o", "pgo.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = config.load(tmp_path / "pgo.toml")
    assert bool(cfg.size_classes) is cached, proc.stdout
    assert ("left out: no numpy cache" in proc.stdout) is not cached, proc.stdout

"""`pgo bench` and `pgo report`: real runs of real programs, and the
statistics they report."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pgo.bench.runner import find_library
from pgo.bench.stats import compare

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def pgo(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "pgo", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "job.py").write_text(textwrap.dedent("""
        import gc, sys
        import numpy as np
        keep = [[i] for i in range(30000)]          # objects for the GC to scan
        for _ in range(20):
            a = np.ones(1 << 18) * 2.0              # 2 MiB temporaries
        print("done", len(keep))
    """))
    (tmp_path / "pgo.toml").write_text(textwrap.dedent("""
        [pgo]
        version = 1
        [gc]
        thresholds = [50000, 20, 100]
        [[numpy.size_class]]
        min_bytes = 1048576
        allocator = "cache"
    """))
    return tmp_path


def test_bench_measures_every_arm_interleaved(project):
    peers = ["gc-freeze", "gc-off"] + (["jemalloc"] if find_library("jemalloc") else [])
    proc = pgo("bench", "-c", "pgo.toml", "-n", "3", "--peers", ",".join(peers), "-o", "b.json",
               "-q", "--", sys.executable, "job.py", cwd=project)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((project / "b.json").read_text())
    assert doc["arms"] == ["baseline", "config", *peers]
    assert len(doc["runs"]) == 3 * len(doc["arms"])
    rounds = [r["round"] for r in doc["runs"]]
    assert rounds == sorted(rounds)                       # A B C, A B C, ... after a warm-up
    for r in doc["runs"]:
        assert r["exit_code"] == 0 and not r.get("error")
        assert r["wall_s"] > 0 and r["max_rss_kib"] > 0 and r["minor_faults"] > 0
        assert len(r["gc_collections"]) == 3
    cfg_runs = [r for r in doc["runs"] if r["arm"] == "config"]
    assert all(r["runtime"]["numpy"]["routes"][0]["allocations"] >= 20 for r in cfg_runs)
    off = [r for r in doc["runs"] if r["arm"] == "gc-off"]
    assert all(r["gc_pauses"] == 0 for r in off)
    s = doc["summary"]
    for arm in doc["arms"][1:]:
        w = s[arm]["wall_s"]
        assert w["n"] == 3 and w["ci"][0] <= w["ratio"] <= w["ci"][1] and 0 <= w["p"] <= 1
    html = (project / "b.html").read_text()
    assert "data:image/png;base64," in html and "http" not in html.split("<img")[1][:60]
    # One plot per metric (nothing cut off), units in the table, the
    # baseline is the reference (not "not significant" against itself),
    # and no p of exactly 0.
    assert html.count("data:image/png;base64,") == 4
    assert html.count("the reference") == 6 and " MiB<br>" in html
    assert "p=0<" not in html and "p=0 " not in html and "p=0.000" not in html
    for text in ("pgo bench:", "baseline", "config", "vs baseline", "wrote b.json",
                 "config, time: ", "config, peak RSS: "):
        assert text in proc.stdout
    v = doc["verdict"]
    assert v["max_rss_increase_percent"] == 10.0 and v["time_ratio"] == s["config"]["wall_s"]["ratio"]
    assert "Verdict" in html
    # The same runs judged against a stricter memory bound: flagged, on
    # stderr too, and the bound is kept for `pgo report`.
    strict = pgo("bench", "-c", "pgo.toml", "-n", "2", "--max-rss-increase", "0", "-o", "s.json",
                 "-q", "--", sys.executable, "job.py", cwd=project)
    sv = json.loads((project / "s.json").read_text())["verdict"]
    if sv["rss_increase_percent"] > 0:
        assert sv["rss_over"] and "over the 0% allowed" in strict.stdout
        assert "buys its speed with memory" in strict.stderr
    rebuilt = pgo("report", "s.json", "-o", "s.html", cwd=project)
    assert rebuilt.returncode == 0 and "config, peak RSS" in rebuilt.stdout
    assert "allowed" in (project / "s.html").read_text()


def test_report_rebuilds_and_refuses_other_files(project):
    assert pgo("bench", "-n", "2", "--peers", "gc-off", "-o", "b.json", "-q", "job.py",
               cwd=project).returncode == 0
    proc = pgo("report", "b.json", "-o", "r.html", cwd=project)
    assert proc.returncode == 0 and (project / "r.html").exists()
    (project / "x.json").write_text('{"format": "other"}')
    proc = pgo("report", "x.json", cwd=project)
    assert proc.returncode == 1 and "not a pgo bench file" in proc.stderr
    (project / "y.json").write_text('{"format": "pgo-bench", "version": 1, "runs": 3}')
    assert "must be lists" in pgo("report", "y.json", cwd=project).stderr


def test_bench_errors_before_running(project):
    (project / "bad.toml").write_text("[pgo]\nversion = 7\n")
    proc = pgo("bench", "-c", "bad.toml", "job.py", cwd=project)
    assert proc.returncode == 2 and "version 7 is not supported" in proc.stderr
    proc = pgo("bench", "--peers", "hoard", "job.py", cwd=project)
    assert proc.returncode == 1 and "unknown peer 'hoard'" in proc.stderr
    (project / "fail.py").write_text("raise SystemExit(3)\n")
    proc = pgo("bench", "-n", "2", "-q", "fail.py", cwd=project)
    assert proc.returncode == 1 and "baseline arm failed on its warm-up run" in proc.stderr


def test_verdict_words_and_flags():
    from pgo.bench.report import verdict

    def summary(time_ratio, significant, rss_ratio):
        return {"config": {
            "wall_s": {"ratio": time_ratio, "median": time_ratio, "baseline_median": 1.0,
                       "ci": [time_ratio * 0.98, time_ratio * 1.02], "p": 0.002 if significant
                       else 0.4, "significant": significant},
            "max_rss_kib": {"ratio": rss_ratio, "median": rss_ratio * 102400.0,
                            "baseline_median": 102400.0}}}
    fast = verdict(summary(0.5, True, 1.04))
    assert fast["time"].startswith("time: 2.00x faster than the baseline")
    assert "+4.0% (104 vs 100 MiB), within the 10% allowed" in fast["rss"]
    assert not fast["rss_over"]
    costly = verdict(summary(0.8, True, 1.25), max_rss_increase=10)
    assert costly["rss_over"] and "+25.0%" in costly["rss"] and "over the 10% allowed" in costly["rss"]
    same = verdict(summary(1.01, False, 1.0))
    assert same["time"].startswith("time: no significant difference")
    assert verdict({"baseline": {}}) is None


def test_statistics():
    rng = np.random.default_rng(1)
    base = list(1.0 + 0.01 * rng.standard_normal(9))
    fast = list(0.5 + 0.01 * rng.standard_normal(9))
    same = list(1.0 + 0.01 * rng.standard_normal(9))
    c = compare(base, fast)
    assert 0.45 < c["ratio"] < 0.55 and c["ci"][1] < 1 and c["significant"] and c["p"] < 0.01
    c = compare(base, same)
    assert c["ci"][0] < 1 < c["ci"][1] and not c["significant"]
    assert compare(base, base)["ratio"] == 1.0
    assert compare([], fast)["ratio"] is None
    assert compare(base, fast) == compare(base, fast)      # seeded: reproducible


def test_the_config_arm_checks_the_config_against_the_target_not_the_probe(project, tmp_path):
    # Every arm runs through `python -m pgo.bench.probe`; the config must be
    # compared with the program benched (job.py), not with the probe.
    from pgo._target import Target
    target = Target("script", str(project / "job.py"), [], [sys.executable])
    base = (project / "pgo.toml").read_text()

    def probe_stderr(program: str) -> str:
        cfg = tmp_path / f"{program}.toml"
        cfg.write_text(base.replace("version = 1", f'version = 1\nprogram = "{program}"', 1))
        spec = {"config": str(cfg), "target": target.to_json(),
                "result": str(tmp_path / "result.json")}
        proc = subprocess.run([sys.executable, "-m", "pgo.bench.probe", json.dumps(spec)],
                              cwd=project, env=ENV, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    assert "was made for" not in probe_stderr("job.py")
    assert "was made for other.py, not job.py" in probe_stderr("other.py")

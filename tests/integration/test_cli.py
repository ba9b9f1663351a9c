"""The real `pgo` command line, run in subprocesses."""

import os
import subprocess
import tempfile
import sys

import pgo


def run_pgo(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "pgo", *args],
        # Outside the checkout: `-m` puts cwd first on sys.path, and the source
        # tree's pgo/ (without built extensions) must not shadow the install.
        cwd=tempfile.gettempdir(),
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
        capture_output=True, text=True, timeout=timeout,
    )


def test_version():
    proc = run_pgo("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"pgo {pgo.__version__}"


def test_help_lists_demo():
    proc = run_pgo("--help")
    assert proc.returncode == 0
    assert "demo" in proc.stdout
    assert "profile" in proc.stdout.lower()


def test_no_command_prints_help_and_fails():
    proc = run_pgo()
    assert proc.returncode == 2
    assert "usage: pgo" in proc.stdout


def test_unknown_command_is_an_error():
    proc = run_pgo("nonsense")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_demo_allocators_quick_runs_every_allocator():
    proc = run_pgo("demo", "--allocators", "--quick", "--repeat", "1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in ("StackAllocator", "LinearAllocator", "ArenaAllocator", "SlabAllocator"):
        assert name in out
    assert "np.empty" in out
    assert "Temporaries that are written" in out and "arena.empty" in out
    assert out.count("AllocatorError") == 3
    # Every pattern gives back everything it allocated: the live column is 0.
    stats_rows = [line.split() for line in out.splitlines()
                  if line.strip().startswith(("StackAllocator ", "LinearAllocator ",
                                              "ArenaAllocator ", "SlabAllocator "))]
    assert len(stats_rows) == 4
    for row in stats_rows:
        assert row[1] == row[2], row          # allocations == frees
        assert row[-1] == "0", row            # nothing alive


def test_demo_rejects_bad_repeat():
    proc = run_pgo("demo", "--allocators", "--repeat", "0")
    assert proc.returncode == 2
    assert "--repeat" in proc.stderr
    proc = run_pgo("demo", "--runs", "1")
    assert proc.returncode == 2 and "--runs" in proc.stderr


def test_demo_runs_the_whole_loop(tmp_path):
    proc = run_pgo("demo", "--quick", "-n", "2", "-o", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    for step in ("1. Profile", "$ pgo profile", "2. Analyze", "$ pgo analyze",
                 "Sites → pattern → strategy", "3. Benchmark", "$ pgo bench", "Before/after:",
                 "Report:"):
        assert step in out, step
    assert (tmp_path / "pgo.toml").exists() and (tmp_path / "bench.html").exists()
    assert "data:image/png;base64," in (tmp_path / "bench.html").read_text()


def test_import_pgo_and_the_launchers_do_not_load_numpy():
    # pgo profile / pgo run start a target without putting numpy's objects
    # into a program that never imports numpy; the names load on first use.
    code = ("import sys, pgo, pgo.commands, pgo.profiling.launcher, pgo.config; "
            "assert 'numpy' not in sys.modules, 'numpy loaded'; "
            "assert set(pgo.__all__) == set(pgo._WHERE) | {'AllocatorError', 'ConfigError', "
            "'PgoError', 'PoolError', 'ProfileFormatError', 'ProfilerError', '__version__'}; "
            "pgo.ArenaAllocator; assert 'numpy' in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(),
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr

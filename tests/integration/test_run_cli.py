"""`pgo run`: the real CLI applying real configs to real programs."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pgo.targets

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
TARGETS = Path(pgo.targets.__file__).resolve().parent


def pgo(*args, cwd, timeout=180):
    return subprocess.run([sys.executable, "-m", "pgo", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


JOB = textwrap.dedent("""
    import sys, threading
    import numpy as np
    import helper

    def tile(n):
        a = np.ones(n)              # routed while tile() runs
        return float((a * 2).sum())

    def big():
        return float(np.zeros(1 << 18).sum())   # 2 MiB: the cache's size class

    if __name__ == "__main__":
        print("argv", sys.argv[1:], __name__, helper.VALUE)
        print(sum(tile(4096) for _ in range(50)))
        t = threading.Thread(target=big); t.start(); t.join()
        sys.exit(int(sys.argv[1]))
""")
CONFIG = textwrap.dedent("""
    [pgo]
    version = 1

    [gc]
    thresholds = [20000, 10, 10]
    freeze_after_startup = false
    full_collection = "growth"
    growth_factor = 2.0

    [[numpy.size_class]]
    min_bytes = 1048576
    allocator = "cache"

    [[site]]
    function = "__main__:tile"
    allocator = "arena"
""")


@pytest.fixture
def project(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    (tmp_path / "pgo.toml").write_text(CONFIG)
    return tmp_path


def test_run_applies_everything_and_changes_nothing_else(project):
    plain = subprocess.run([sys.executable, "job.py", "3"], cwd=project, env=ENV,
                           capture_output=True, text=True)
    proc = pgo("run", "--config", "pgo.toml", "--stats", "stats.json", "--", sys.executable,
               "job.py", "3", cwd=project)
    assert proc.returncode == plain.returncode == 3
    assert proc.stdout == plain.stdout and "argv ['3'] __main__ 42" in proc.stdout
    st = json.loads((project / "stats.json").read_text())
    assert st["gc"]["thresholds"][:2] == [20000, 10]
    assert st["gc"]["full_collection"] == "growth"
    assert st["sites"]["calls"] == {"__main__:tile": 50}
    assert st["sites"]["allocators"]["__main__:tile"]["allocations"] >= 100
    # The thread's 2 MiB array went to the cache (threads get the router).
    assert st["numpy"]["routes"][0]["allocations"] >= 1
    assert st["numpy"]["errors"] == 0


def test_module_form(project):
    pkg = project / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "main.py").write_text("import numpy as np\nfrom . import part\n\ndef tile(n):\n"
                                 "    return np.ones(n).sum()\n\nprint(part.X, tile(10))\n")
    (pkg / "part.py").write_text("X = 'part'\n")
    (project / "m.toml").write_text("[pgo]\nversion = 1\n[[site]]\nfunction = \"__main__:tile\"\n"
                                    "allocator = \"arena\"\n")
    proc = pgo("run", "-c", "m.toml", "--stats", "s.json", "-m", "pkg.main", "x", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "part 10.0\n"
    assert json.loads((project / "s.json").read_text())["sites"]["calls"] == {"__main__:tile": 1}


def test_bad_config_stops_before_the_program_runs(project):
    (project / "bad.toml").write_text("[pgo]\nversion = 1\n[[site]]\nfunction = \"a:b\"\n"
                                      "allocator = \"heap\"\n")
    (project / "marker.py").write_text("open('ran', 'w').write('yes')\n")
    proc = pgo("run", "-c", "bad.toml", "marker.py", cwd=project)
    assert proc.returncode == 2
    assert "bad.toml:5: site[0].allocator: unknown allocator 'heap'" in proc.stderr
    assert not (project / "ran").exists()
    proc = pgo("run", "-c", "missing.toml", "marker.py", cwd=project)
    assert proc.returncode == 2 and "no such config file" in proc.stderr
    assert not (project / "ran").exists()


def test_crash_is_reported_with_its_signal(project):
    (project / "crash.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    proc = pgo("run", "-c", "pgo.toml", "crash.py", cwd=project)
    assert proc.returncode == 128 + signal.SIGSEGV
    assert "killed by SIGSEGV" in proc.stderr


def test_exceptions_look_as_under_python(project):
    (project / "boom.py").write_text("def f():\n    raise KeyError('x')\n\nf()\n")
    plain = subprocess.run([sys.executable, "boom.py"], cwd=project, capture_output=True,
                           text=True)
    proc = pgo("run", "-c", "pgo.toml", "boom.py", cwd=project)
    assert proc.returncode == plain.returncode == 1
    assert proc.stderr.strip() == plain.stderr.strip()


@pytest.mark.parametrize("name,args", [("scoped_temps.py", ["--tiles", "150"]),
                                       ("records.py", ["--records", "20000"])])
def test_profile_analyze_run_on_example_targets(tmp_path, name, args):
    if not (TARGETS / name).is_file():
        pytest.skip("examples not next to the tests")
    assert pgo("profile", "-q", "--no-cpu", "-o", "b", str(TARGETS / name), *args,
               cwd=tmp_path).returncode == 0
    assert pgo("analyze", "-q", "b", "-o", "c.toml", cwd=tmp_path).returncode == 0
    plain = subprocess.run([sys.executable, str(TARGETS / name), *args], cwd=tmp_path,
                           capture_output=True, text=True)
    proc = pgo("run", "-c", "c.toml", "--stats", "s.json", str(TARGETS / name), *args,
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == plain.stdout
    st = json.loads((tmp_path / "s.json").read_text())
    if name == "scoped_temps.py":
        assert st["sites"]["calls"]["__main__:filter_tile"] == 150


def test_children_use_the_installed_pgo_not_a_pgo_folder_in_the_working_directory(project):
    # README's `pip install . && pgo demo` runs in a checkout, whose pgo/
    # has no compiled core: pgo's child processes must not import it.
    shadow = project / "pgo"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the working directory shadows pgo')\n")
    console = ["-c", "import sys; sys.path.pop(0); from pgo.commands import main; sys.exit(main())"]
    for argv in (["run", "-c", "pgo.toml", "job.py", "0"],
                 ["profile", "-q", "--no-cpu", "-o", "b", "job.py", "0"],
                 ["bench", "-n", "2", "-q", "-o", "b.json", "job.py", "0"]):
        proc = subprocess.run([sys.executable, *console, *argv], cwd=project, env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (argv, proc.stderr[-2000:])
        assert "shadows pgo" not in proc.stderr


def test_a_config_for_another_program_or_a_missing_function_is_said(project):
    # The identity comes from `pgo profile` through `pgo analyze`.
    prof = pgo("profile", "--no-cpu", "-q", "-o", "b", "job.py", "0", cwd=project)
    assert prof.returncode == 0, prof.stderr
    assert pgo("analyze", "b", "-o", "made.toml", "-q", cwd=project).returncode == 0
    made = (project / "made.toml").read_text()
    assert 'program = "job.py"' in made and "program_sha256 = " in made
    assert "numpy = " in made
    (project / "other.py").write_text("print('other ran')\n")
    ok = pgo("run", "-c", "made.toml", "job.py", "0", cwd=project)
    assert ok.returncode == 0 and "warning" not in ok.stderr.lower(), ok.stderr
    other = pgo("run", "-c", "made.toml", "other.py", cwd=project)
    assert other.returncode == 0 and "other ran" in other.stdout
    assert "made.toml was made for job.py, not other.py" in other.stderr
    strict = pgo("run", "--strict", "-c", "made.toml", "other.py", cwd=project)
    assert strict.returncode == 2 and "other ran" not in strict.stdout
    assert "made for job.py, not other.py" in strict.stderr
    (project / "job.py").write_text(JOB + "\n# edited\n")
    edited = pgo("run", "-c", "made.toml", "job.py", "0", cwd=project)
    assert edited.returncode == 0 and "job.py has changed since it was profiled" in edited.stderr
    # A [[site]] naming a function that is not there: said on stderr at exit.
    (project / "typo.toml").write_text(CONFIG.replace("__main__:tile", "__main__:tiles")
                                       + '\n[[site]]\nfunction = "nowhere.mod:f"\n'
                                         'allocator = "arena"\n')
    typo = pgo("run", "-c", "typo.toml", "job.py", "0", cwd=project)
    assert typo.returncode == 0, typo.stderr
    assert "[[site]] __main__:tiles routed nothing: module __main__ has no function tiles" \
        in typo.stderr
    assert "[[site]] nowhere.mod:f routed nothing: module nowhere.mod was never imported" \
        in typo.stderr


def test_a_gc_plan_made_at_one_size_holds_at_half_and_twice_it(tmp_path):
    # records.py keeps every record: collections find nothing at any size.
    # The plan comes from ratios (garbage per object allocated, objects per
    # block of peak heap), so a run at 0.5x or 2x the profiled input makes
    # no automatic collection and no full one, where CPython's own rule
    # makes more the larger the run (counts, not times, are asserted).
    records = TARGETS / "records.py"
    if not records.is_file():
        pytest.skip("examples not next to the tests")
    assert pgo("profile", "-q", "--no-cpu", "-o", "b", str(records), "--records", "100000",
               cwd=tmp_path).returncode == 0
    assert pgo("analyze", "-q", "b", "-o", "c.toml", cwd=tmp_path).returncode == 0
    from pgo import config
    plan = config.load(tmp_path / "c.toml").gc
    assert plan.thresholds == (0, 0, 0) and plan.full_collection == "growth"
    for n in (50_000, 200_000):
        proc = pgo("run", "-c", "c.toml", "--stats", f"s{n}.json", str(records),
                   "--records", str(n), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        gc_stats = json.loads((tmp_path / f"s{n}.json").read_text())["gc"]
        assert gc_stats["policy_full_collections"] == 0, (n, gc_stats)
        assert gc_stats["collections_under_plan"] == [0, 0, 0], (n, gc_stats)
    # CPython's own rule on the larger run, for contrast.
    plain = subprocess.run(
        [sys.executable, "-c", "import gc, runpy, sys; sys.argv = ['r', '--records', '200000'];"
         f" runpy.run_path({str(records)!r}, run_name='__main__');"
         " print(sum(s['collections'] for s in gc.get_stats()))"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert int(plain.stdout.split()[-1]) > 100

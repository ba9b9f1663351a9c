"""`pgo profile` and `pgo show`: the real CLI on real programs, in
subprocesses.  The program must behave exactly as under `python`, and the
bundle must be there (or, for a program that cannot start, nothing)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pgo.targets

from pgo import bundle

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
EXAMPLES = Path(pgo.targets.__file__).resolve().parent


def pgo(*args, cwd, timeout=180, env=None):
    return subprocess.run([sys.executable, "-m", "pgo", *args], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def python(*args, cwd, timeout=60):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def project(tmp_path):
    """A small program with a sibling module and a package."""
    (tmp_path / "helper.py").write_text("def scale(x):\n    return x * 2\n")
    (tmp_path / "job.py").write_text(textwrap.dedent("""
        import sys
        import numpy as np
        import helper

        def work(n):
            total = 0.0
            for i in range(n):
                a = np.ones(1000 + i)        # the site
                total += float(helper.scale(a).sum())
            return total

        if __name__ == "__main__":
            print("argv", sys.argv[1:], "name", __name__)
            print("total", work(int(sys.argv[1])))
            print("to stderr", file=sys.stderr)
            sys.exit(int(sys.argv[2]))
    """))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "util.py").write_text("VALUE = 7\n")
    (pkg / "main.py").write_text(textwrap.dedent("""
        import sys
        from .util import VALUE
        print("pkg", __name__, VALUE, sys.argv[1:])
        sys.exit(3)
    """))
    (tmp_path / "boom.py").write_text(textwrap.dedent("""
        def inner():
            raise ValueError("boom")

        inner()
    """))
    return tmp_path


def test_script_runs_as_under_python_and_bundle_is_complete(project):
    plain = python("job.py", "50", "5", cwd=project)
    out = project / "b"
    # Objects are sampled about once per --sample-bytes allocated: at the
    # default 32 KiB this little program makes 1-5 samples, and none at all
    # now and then (it failed CI once); at 512 B it makes hundreds.
    proc = pgo("profile", "--sample-bytes", "512", "-o", str(out), "--", sys.executable, "job.py",
               "50", "5", cwd=project)
    assert proc.returncode == plain.returncode == 5
    assert proc.stdout == plain.stdout
    assert "to stderr" in proc.stderr and "argv ['50', '5'] name __main__" in proc.stdout
    b = bundle.load(out)
    assert b.complete and b.manifest["exit"] == {"code": 5, "signal": None}
    assert b.manifest["command"][1:] == ["job.py", "50", "5"]
    names = {(s["qualname"], s["line"]) for s in b.event_sites["sites"]}
    assert ("work", 9) in names
    ev = b.events.events
    sites = [s["id"] for s in b.event_sites["sites"] if s["qualname"] == "work" and s["line"] == 9]
    # np.ones makes small scalars too: the 50 arrays are the 8000+ byte ones.
    assert ((ev["site"] == sites[0]) & (ev["kind"] == 1) & (ev["size"] >= 8000)).sum() == 50
    assert b.objects is not None and len(b.objects.events) > 0
    assert b.gc is not None and b.gc["thresholds"]
    for name in ("events", "objects", "gc"):
        assert b.manifest["collectors"][name]["status"] == "ok"
    assert b.manifest["collectors"]["cpu"]["status"] in ("ok", "failed", "missing")


def test_the_profiler_leaves_no_cyclic_garbage_in_the_program(tmp_path):
    # A program may count on gc.collect() finding nothing it did not make
    # (pyperformance's gc_traversal asserts it: it failed about 1 run in 6
    # under pgo profile).  The profiler's thread rewrites event_sites.json
    # whenever new sites appear; json.dumps with an indent builds reference
    # cycles (the pure-Python encoder's closures).
    (tmp_path / "collect.py").write_text(textwrap.dedent("""
        import gc, time
        import numpy as np
        # 120 numpy allocation sites, met one after another over ~1.5 s, so
        # that the profiler's flushes keep finding new ones.
        fns = {}
        exec("".join(f"def f{i}():\\n    return np.ones(8)\\n" for i in range(120)), {"np": np}, fns)
        gc.collect()
        found = []
        for i in range(120):
            fns[f"f{i}"]()
            time.sleep(0.0125)
            found.append(gc.collect())
        print("collected", sum(found), "in", sum(1 for n in found if n), "collections")
    """))
    proc = pgo("profile", "-q", "-o", str(tmp_path / "b"), "--", "python", "collect.py",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "collected 0 in 0 collections" in proc.stdout, proc.stdout


def test_the_trace_is_flushed_every_quarter_second_not_every_10_ms(tmp_path):
    # An allocation every 10 ms for about 1.2 s: each flush writes a partial
    # block, so the blocks count the flushes (it was one per 10 ms, with
    # tracemalloc off: the profiler's thread never slept longer).
    (tmp_path / "tick.py").write_text(textwrap.dedent("""
        import time
        import numpy as np
        for i in range(120):
            a = np.ones(16)
            time.sleep(0.01)
    """))
    out = tmp_path / "b"
    proc = pgo("profile", "-q", "--no-cpu", "-o", str(out), "--", "python", "tick.py",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    records = manifest["collectors"]["events"]["written"]
    assert records >= 240
    size = (out / "events.trace").stat().st_size
    blocks = (size - bundle.TRACE_HEADER.size - 16 - 48 * records) // 16
    assert 1 <= blocks <= 12, (blocks, manifest["duration_s"])


def test_module_with_relative_import_and_exit_code(project):
    proc = pgo("profile", "-q", "-o", str(project / "m"), "-m", "pkg.main", "x", "--flag",
               cwd=project)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "pkg __main__ 7 ['x', '--flag']\n"
    assert bundle.load(project / "m").manifest["exit"]["code"] == 3


def test_code_and_bare_script_forms(project):
    proc = pgo("profile", "-q", "--no-cpu", "-o", str(project / "c"), "--", sys.executable, "-c",
               "import sys; print(sys.argv)", "a", cwd=project)
    assert proc.returncode == 0 and proc.stdout == "['-c', 'a']\n"
    proc = pgo("profile", "-q", "--no-cpu", "-o", str(project / "s"), "job.py", "3", "0",
               cwd=project)
    assert proc.returncode == 0 and "argv ['3', '0']" in proc.stdout
    assert bundle.load(project / "s").complete


def test_uncaught_exception_prints_pythons_traceback_and_exit_1(project):
    plain = python("boom.py", cwd=project)
    proc = pgo("profile", "-q", "--no-cpu", "-o", str(project / "x"), "boom.py", cwd=project)
    assert proc.returncode == plain.returncode == 1
    assert proc.stderr.strip() == plain.stderr.strip()
    b = bundle.load(project / "x")
    assert b.complete and b.manifest["exit"]["code"] == 1


@pytest.mark.parametrize("argv,message", [
    (["nosuch.py"], "nosuch.py: no such file"),
    (["-m", "nosuch_module_xyz"], "No module named nosuch_module_xyz"),
    (["--", "python3"], "no program after the interpreter"),
])
def test_program_that_cannot_start_leaves_no_debris(project, argv, message):
    proc = pgo("profile", *argv, cwd=project)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (project / "profiles").exists()


def test_existing_output_directory_is_not_touched(project):
    out = project / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    proc = pgo("profile", "-o", str(out), "job.py", "1", "0", cwd=project)
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_default_bundle_goes_under_profiles(project):
    proc = pgo("profile", "--no-cpu", "job.py", "2", "0", cwd=project)
    assert proc.returncode == 0
    made = list((project / "profiles").iterdir())
    assert len(made) == 1 and made[0].name.startswith("job-")
    assert f"wrote profiles/{made[0].name}" in proc.stderr


def test_sigkill_leaves_a_bundle_that_loads_up_to_the_last_record(project):
    (project / "killed.py").write_text(textwrap.dedent("""
        import os, signal, time
        import numpy as np
        keep = []
        for i in range(3000):
            keep.append(np.ones(100 + i % 7))
        time.sleep(1.0)          # the profiler flushes every 0.25 s
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    out = project / "k"
    proc = pgo("profile", "--no-cpu", "-o", str(out), "killed.py", cwd=project)
    assert proc.returncode == 128 + signal.SIGKILL
    assert "killed by SIGKILL" in proc.stderr
    b = bundle.load(out)
    assert not b.complete
    assert b.manifest["exit"]["signal"] == "SIGKILL"
    assert any("truncated" in w for w in b.warnings), b.warnings
    births = (b.events.events["kind"] == 1) & (b.events.events["size"] >= 800)
    assert births.sum() >= 3000
    # The site table written while running names the program's line.
    assert any(s["qualname"] == "<module>" and s["line"] == 6 for s in b.event_sites["sites"])


def test_missing_py_spy_is_one_warning_and_the_rest_is_written(project):
    out = project / "p"
    proc = pgo("profile", "--py-spy", str(project / "no-py-spy"), "-o", str(out),
               "job.py", "5", "0", cwd=project)
    assert proc.returncode == 0
    assert proc.stderr.count("py-spy not found") == 1
    b = bundle.load(out)
    assert b.manifest["collectors"]["cpu"]["status"] == "missing"
    assert b.events is not None and b.gc is not None and b.cpu is None


def test_show_text_and_json(project):
    out = project / "sh"
    assert pgo("profile", "-q", "--no-cpu", "-o", str(out), "job.py", "100", "0",
               cwd=project).returncode == 0
    proc = pgo("show", str(out), cwd=project)
    assert proc.returncode == 0, proc.stderr
    for text in ("Top sites by bytes", "Top sites by count", "__main__:work:9", "GC:",
                 "Possible leaks", "Profiler overhead"):
        assert text in proc.stdout
    proc = pgo("show", "--json", str(out), cwd=project)
    s = json.loads(proc.stdout)
    top = [r for r in s["top_by_count"] if r["site"] == "__main__:work:9" and r["domain"] == "numpy"]
    # 100 arrays, and np.ones' scalar temporaries; all short-lived.
    assert top and top[0]["count"] >= 100 and top[0]["lifetime"] == "short"
    assert s["gc"]["collections"] >= 0 and s["complete"] is True


def test_show_on_a_corrupt_bundle_is_a_clear_error(project):
    out = project / "bad"
    assert pgo("profile", "-q", "--no-cpu", "-o", str(out), "job.py", "5", "0",
               cwd=project).returncode == 0
    data = bytearray((out / "events.trace").read_bytes())
    data[100] ^= 0x10
    (out / "events.trace").write_bytes(bytes(data))
    proc = pgo("show", str(out), cwd=project)
    assert proc.returncode == 1
    assert "events.trace: byte" in proc.stderr and "Traceback" not in proc.stderr
    proc = pgo("show", str(project / "nope"), cwd=project)
    assert proc.returncode == 1 and "no such bundle" in proc.stderr


def test_follow_children_profiles_spawned_and_forked_workers(project):
    (project / "parent.py").write_text(textwrap.dedent("""
        import multiprocessing as mp
        import subprocess, sys
        import numpy as np

        def square(n):
            return float((np.arange(n) ** 2).sum())

        if __name__ == "__main__":
            for method in ("spawn", "fork"):
                pool = mp.get_context(method).Pool(2)
                print(method, sum(pool.map(square, [1000] * 8)))
                pool.close()          # workers leave normally (terminate() would kill them)
                pool.join()
            subprocess.run([sys.executable, "-c", "import numpy; numpy.ones(5); print('kid')"],
                           check=True)
    """))
    out = project / "f"
    proc = pgo("profile", "-q", "--no-cpu", "--follow-children", "-o", str(out), "parent.py",
               cwd=project, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "kid" in proc.stdout
    b = bundle.load(out)
    kinds = {}
    for kid in b.children:
        t = kid.manifest["target"]
        kinds.setdefault("forked" if "forked_from" in t else t.get("kind"), []).append(kid)
    # 2 spawned pool workers (+ multiprocessing's resource tracker), 2
    # forked workers, 1 subprocess: each a complete bundle of its own.
    assert len(kinds.get("forked", [])) == 2, kinds
    assert len(kinds.get("child", [])) >= 3, kinds
    spawned = [k for k in kinds["child"] if "spawn_main" in " ".join(k.manifest["command"])]
    for workers in (kinds["forked"], spawned):
        assert len(workers) == 2
        assert all(kid.complete for kid in workers), [kid.warnings for kid in workers]
        # 8 tasks, each np.arange(1000) ** 2: two 8000-byte arrays, on
        # whichever worker took it.
        births = sum(int(((kid.events.events["kind"] == 1)
                          & (kid.events.events["size"] == 8000)).sum()) for kid in workers)
        assert births >= 16
    assert "children" in b.manifest
    assert all(k.manifest["pid"] != b.manifest["pid"] for k in b.children)


def test_from_tracemalloc_needs_trust_pickle(project):
    dump = project / "snap.dump"
    code = ("import tracemalloc; tracemalloc.start(); x = [str(i) for i in range(1000)]; "
            f"tracemalloc.take_snapshot().dump({str(dump)!r})")
    assert python("-c", code, cwd=project).returncode == 0
    proc = pgo("profile", "--from-tracemalloc", str(dump), "-o", str(project / "t"), cwd=project)
    assert proc.returncode == 2 and "--trust-pickle" in proc.stderr
    assert not (project / "t").exists()
    proc = pgo("profile", "--from-tracemalloc", str(dump), "--trust-pickle", "-o",
               str(project / "t"), cwd=project)
    assert proc.returncode == 0, proc.stderr
    b = bundle.load(project / "t")
    assert b.allocations["sites"]
    assert pgo("show", str(project / "t"), cwd=project).returncode == 0


@pytest.mark.parametrize("name", ["pipeline.py", "small_arrays.py", "scoped_temps.py",
                                  "records.py"])
def test_example_targets_profile_cleanly(tmp_path, name):
    if not (EXAMPLES / name).is_file():
        pytest.skip("examples are not next to the tests")
    small = {"pipeline.py": ["--frames", "2", "--size", "500000"],
             "small_arrays.py": ["--particles", "200", "--steps", "5"],
             "scoped_temps.py": ["--tiles", "50"],
             "records.py": ["--records", "20000"]}[name]
    out = tmp_path / "b"
    proc = pgo("profile", "-q", "--no-cpu", "-o", str(out), str(EXAMPLES / name), *small,
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    b = bundle.load(out)
    assert b.complete and not b.warnings


CHECKED_IN = Path(__file__).resolve().parents[2] / "profiles" / "examples"


@pytest.mark.parametrize("name", ["pipeline", "small_arrays", "scoped_temps", "records"])
def test_checked_in_example_bundles_load_and_show_their_pattern(name):
    if not (CHECKED_IN / name).is_dir():
        pytest.skip("the example bundles are not next to the tests")
    from pgo.analysis.summary import summarize
    b = bundle.load(CHECKED_IN / name)
    assert b.complete and not b.warnings
    s = summarize(b)
    numpy_top = [r for r in s["top_by_bytes"] if r["domain"] == "numpy"]
    if name == "pipeline":
        # 48 MB temporaries (and their 6 MB masks), all dead within a frame.
        for r in numpy_top[:4]:
            assert r["max_size"] >= 40e6 and r["alive_at_end"] == 0
            assert r["lifetime"] in ("short", "medium")
    elif name == "small_arrays":
        top = [r for r in s["top_by_count"] if r["domain"] == "numpy"][0]
        assert top["max_size"] <= 128 and top["lifetime"] == "short"
    elif name == "scoped_temps":
        assert any(r["site"].startswith("__main__:filter_tile") and 32 << 10 <= r["mean_size"]
                   <= 512 << 10 and r["lifetime"] == "short" for r in numpy_top)
    else:
        assert s["gc"]["collections"] > 100 and s["gc"]["share_of_wall"] > 0.2
        assert s["top_by_bytes"][0]["domain"] == "objects"


def test_pgos_own_start_up_collection_is_not_the_programs(project):
    # pgo collects and freezes its start-up heap before the program's first
    # line; that collection must not read as the program's GC time.
    (project / "tiny.py").write_text("import gc\ngc.disable()\nprint(sum(range(10)))\n")
    out = project / "tiny"
    proc = pgo("profile", "--no-cpu", "-q", "-o", str(out), "tiny.py", cwd=project)
    assert proc.returncode == 0, proc.stderr
    b = bundle.load(out)
    assert b.gc["pauses"]["duration_ns"] == [] and b.gc["total_pause_ns"] == 0
    assert [g["collections"] for g in b.gc["generations"]] == [0, 0, 0]
    assert b.gc["freeze_count_at_end"] > 0          # the heap was frozen all the same

"""The GC policy and Python versions: it runs on CPython 3.11-3.13, whose
collector it knows, and refuses a GC plan anywhere else (3.14's collector
is incremental in 3.14.0-3.14.4 and generational again from 3.14.5) with
a ConfigError that names the version, before anything is applied."""

import collections
import gc
import os
import subprocess
import sys
import textwrap

import pytest

import pgo
from pgo.config import Config, GCPlan, SizeClassRule
from pgo.runtime import apply
from pgo.runtime.gc_policy import SUPPORTED_PYTHONS, UNREACHABLE, GCPolicy, check_python

VersionInfo = collections.namedtuple("VersionInfo", "major minor micro releaselevel serial")
PLAN = GCPlan(thresholds=(1000, 5, 10), full_collection="growth", growth_factor=2.0,
              freeze_after_startup=True, startup_s=0.0)


# The GC thresholds, the frozen generation and numpy's handler, as they were.
pytestmark = pytest.mark.usefixtures("restore_gc")


def as_python(monkeypatch, *version):
    monkeypatch.setattr(sys, "version_info", VersionInfo(*version, "final", 0))


def test_the_suite_runs_on_a_supported_python():
    # CI runs this suite on each of them (.ci/run): a new version is added
    # to SUPPORTED_PYTHONS when it passes there, not before.
    assert SUPPORTED_PYTHONS == ((3, 11), (3, 12), (3, 13))
    assert sys.version_info[:2] in SUPPORTED_PYTHONS
    check_python()


@pytest.mark.parametrize("version", [(3, 11, 0), (3, 12, 9), (3, 13, 0), (3, 13, 5)])
def test_known_versions_are_accepted(monkeypatch, version):
    as_python(monkeypatch, *version)
    policy = GCPolicy(GCPlan(thresholds=(1000, 5, 10), full_collection="growth",
                             growth_factor=2.0))
    policy.start()
    try:
        assert gc.get_threshold() == (1000, 5, UNREACHABLE)
    finally:
        policy.stop()


@pytest.mark.parametrize("version", [(3, 14, 0), (3, 14, 4), (3, 14, 5), (3, 15, 0),
                                     (3, 10, 13), (4, 0, 0)])
def test_unknown_versions_are_refused_before_anything_changes(monkeypatch, version):
    as_python(monkeypatch, *version)
    before = gc.get_threshold()
    callbacks = list(gc.callbacks)
    v = ".".join(map(str, version))
    with pytest.raises(pgo.ConfigError, match=rf"CPython {v}\b") as e:
        GCPolicy(PLAN)
    msg = str(e.value)
    assert "[gc]" in msg and "Remove the [gc] table" in msg
    assert "3.11, 3.12, 3.13" in msg
    assert gc.get_threshold() == before and gc.callbacks == callbacks
    assert gc.get_freeze_count() == 0


def test_the_refusal_says_what_3_14_does_and_names_the_config(monkeypatch):
    as_python(monkeypatch, 3, 14, 2)
    with pytest.raises(pgo.ConfigError) as e:
        GCPolicy(PLAN, source="job/pgo.toml")
    msg = str(e.value)
    assert msg.startswith("job/pgo.toml: [gc]: ")
    assert "incrementally" in msg and "3.14.5" in msg


def test_start_checks_again(monkeypatch):
    policy = GCPolicy(PLAN)
    before = gc.get_threshold()
    as_python(monkeypatch, 3, 14, 0)
    with pytest.raises(pgo.ConfigError, match=r"CPython 3\.14\.0"):
        policy.start()
    assert gc.get_threshold() == before and policy._on_gc not in gc.callbacks


def test_other_implementations_and_free_threaded_builds_are_refused(monkeypatch):
    monkeypatch.setattr(sys.implementation, "name", "pypy")
    with pytest.raises(pgo.ConfigError, match=r"pypy 3\.\d+\.\d+ \(the policy drives CPython"):
        check_python()
    monkeypatch.undo()
    monkeypatch.setattr(sys, "abiflags", "t", raising=False)
    with pytest.raises(pgo.ConfigError, match=r"\(free-threaded\) \(the free-threaded build"):
        check_python()


def test_apply_refuses_without_applying_the_rest(monkeypatch):
    as_python(monkeypatch, 3, 14, 0)
    before = gc.get_threshold()
    cfg = Config(gc=PLAN, size_classes=(SizeClassRule(1 << 20, None, "cache"),))
    with pytest.raises(pgo.ConfigError, match=r"CPython 3\.14\.0"):
        apply(cfg)
    # The router of the same config was not installed, and nothing is active.
    assert pgo.installed() is None and pgo.runtime.active() is None
    assert gc.get_threshold() == before
    # Without its [gc] table the same config applies.
    rt = apply(Config(size_classes=cfg.size_classes))
    try:
        assert pgo.installed() is rt.router
    finally:
        rt.stop()


# A `python3.14` for `pgo run`: this interpreter, saying it is 3.14.0.
FAKE_PYTHON = textwrap.dedent("""\
    #!{exe}
    import collections, sys
    V = collections.namedtuple("V", "major minor micro releaselevel serial")
    sys.version_info = V(3, 14, 0, "final", 0)
    assert sys.argv[1] == "-c"
    code, sys.argv = sys.argv[2], ["-c", *sys.argv[3:]]
    exec(compile(code, "<string>", "exec"), {{"__name__": "__main__"}})
""")


def test_pgo_run_reports_the_refusal_and_does_not_run_the_program(tmp_path):
    (tmp_path / "pgo.toml").write_text(
        "[pgo]\nversion = 1\n\n[gc]\nthresholds = [20000, 10, 10]\n\n"
        "[[numpy.size_class]]\nmin_bytes = 1048576\nallocator = \"cache\"\n")
    (tmp_path / "job.py").write_text("open('ran', 'w').close()\nprint('ran')\n")
    fake = tmp_path / "bin" / "python3.14"
    fake.parent.mkdir()
    fake.write_text(FAKE_PYTHON.format(exe=sys.executable))
    fake.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-m", "pgo", "run", "--config", "pgo.toml", "--",
                           str(fake), "job.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    # A config refused in the child: exit 2, as for one that does not load.
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("pgo run: error: "), proc.stderr
    assert "pgo.toml: [gc]: " in proc.stderr or "[gc]: " in proc.stderr
    assert "CPython 3.14.0" in proc.stderr and "Remove the [gc] table" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "ran").exists()

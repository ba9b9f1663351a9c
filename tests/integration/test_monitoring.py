"""Monitoring: the Prometheus exporter of a process under `pgo run
--metrics-port`, the alert rules (promtool), the Grafana dashboard's
expressions, and a real Prometheus server scraping a real `pgo run`.

promtool and prometheus are Debian packages (.ci/run installs them); where
one is absent its test skips and says so."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))

# Holds three 2 MiB arrays from the cache (nothing cached: utilization 1.0)
# and makes collections, then waits to be scraped.
PROGRAM = textwrap.dedent("""
    import gc, sys, time
    import numpy as np
    keep = [np.ones(1 << 18) for _ in range(3)]
    junk = []
    for i in range(20000):
        a = [i]; a.append(a); junk.append(a)
    gc.collect()
    print("ready", flush=True)
    time.sleep(float(sys.argv[1]))
""")
CONFIG = textwrap.dedent("""
    [pgo]
    version = 1

    [gc]
    thresholds = [5000, 10, 10]
    full_collection = "growth"
    growth_factor = 4.0
    profiled_gc_share = 0.25

    [[numpy.size_class]]
    min_bytes = 1048576
    allocator = "cache"
    headroom_percent = 10
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


@pytest.fixture
def served(tmp_path):
    """`pgo run --metrics-port` on PROGRAM: (port, process)."""
    (tmp_path / "job.py").write_text(PROGRAM)
    (tmp_path / "pgo.toml").write_text(CONFIG)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pgo", "run", "-c", "pgo.toml",
                             "--metrics-port", str(port), "job.py", "120"], cwd=tmp_path,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() else "")
        yield port, proc
    finally:
        proc.kill()
        proc.wait()


def exported_names(text):
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def test_pgo_run_serves_the_metrics(served):
    port, _ = served
    text = fetch(f"http://127.0.0.1:{port}/metrics")
    names = exported_names(text)
    for name in ("allocator_utilization_ratio", "allocator_allocations_total", "allocator_bytes",
                 "allocator_fragmentation_ratio", "allocator_resets_total",
                 "allocator_lock_contention_total", "pool_hit_rate",
                 "gc_pressure_reduction_ratio", "pgo_gc_pause_seconds_bucket",
                 "pgo_gc_frozen_objects", "python_gc_collections_total", "python_info",
                 "process_resident_memory_bytes"):
        assert name in names, name
    cache = 'allocator_type="CacheAllocator",rule="numpy.size_class[0]"'
    assert f'allocator_allocations_total{{{cache}}} 3.0' in text
    assert f'allocator_bytes{{{cache},state="in_use"}} 6.291456e+06' in text
    assert f'allocator_utilization_ratio{{{cache}}} 1.0' in text
    assert re.search(r"^pgo_gc_pause_seconds_count [1-9]", text, re.M)


def test_the_launcher_serves_and_the_program_never_imports_prometheus_client(tmp_path):
    # The exporter runs in pgo run's own process; the program only answers
    # with a snapshot.  The process metrics are the program's (its RSS
    # holds a 256 MiB array; the launcher's does not), and so are the GC
    # counters.
    (tmp_path / "job.py").write_text(textwrap.dedent("""
        import gc, os, sys, time
        import numpy as np
        keep = np.ones(1 << 25)              # 256 MiB, touched
        for _ in range(7):
            gc.collect(0)
        print("ready", flush=True)
        while not os.path.exists("scraped"):
            time.sleep(0.05)
        print("prometheus_client" in sys.modules, flush=True)
    """))
    (tmp_path / "pgo.toml").write_text(CONFIG)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pgo", "run", "-c", "pgo.toml",
                             "--metrics-port", str(port), "job.py"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        text = fetch(f"http://127.0.0.1:{port}/metrics")
        rss = float(re.search(r"^process_resident_memory_bytes (\S+)", text, re.M).group(1))
        assert rss >= 256 << 20, rss
        gen0 = float(re.search(r'^python_gc_collections_total{generation="0"} (\S+)', text,
                               re.M).group(1))
        assert gen0 >= 7
        info = re.search(r"^python_info{(.*)} 1.0", text, re.M).group(1)
        assert f'minor="{sys.version_info.minor}"' in info
        (tmp_path / "scraped").touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == "False"
    finally:
        proc.kill()
        proc.wait()


def test_a_port_in_use_is_a_clear_error(tmp_path):
    (tmp_path / "job.py").write_text("print('ran')\n")
    (tmp_path / "pgo.toml").write_text(CONFIG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "pgo", "run", "-c", "pgo.toml",
                               "--metrics-port", str(port), "job.py"], cwd=tmp_path, env=ENV,
                              capture_output=True, text=True, timeout=120)
        prof = subprocess.run([sys.executable, "-m", "pgo", "profile", "--no-cpu", "-o", "b",
                               "--metrics-port", str(port), "job.py"], cwd=tmp_path, env=ENV,
                              capture_output=True, text=True, timeout=120)
    for p in (proc, prof):
        assert p.returncode == 2 and "ran" not in p.stdout
        assert f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}" in p.stderr
    assert not (tmp_path / "b").exists()         # refused before anything was made


def test_metrics_are_off_unless_asked():
    # `import pgo` and the runtime never import the exporter.
    out = subprocess.run([sys.executable, "-c", "import sys, pgo, pgo.runtime; "
                          "print('pgo.metrics' in sys.modules, 'prometheus_client' in sys.modules)"],
                         env=ENV, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool on PATH (Debian: apt-get install prometheus); .ci/run installs it")
    check = subprocess.run([promtool, "check", "rules", str(MONITORING / "alerts.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS: 5 rules found" in check.stdout, check.stderr
    test = subprocess.run([promtool, "test", "rules", str(MONITORING / "alerts_test.yml")],
                          capture_output=True, text=True, timeout=60, cwd=MONITORING)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    # Every alert has a test that fires it and one that does not.
    tests = (MONITORING / "alerts_test.yml").read_text()
    for alert in re.findall(r"- alert: (\w+)", (MONITORING / "alerts.yml").read_text()):
        blocks = re.findall(rf"alertname: {alert}\n\s+exp_alerts:(.*?)(?=\n\s+- eval_time|\n\s+- name|\Z)",
                            tests, re.S)
        assert any(b.strip() == "[]" for b in blocks), f"{alert}: no test where it does not fire"
        assert any("exp_labels" in b for b in blocks), f"{alert}: no test where it fires"


def _metric_names(expr):
    # Identifiers that are metrics: not functions, keywords, labels or
    # Grafana variables.
    expr = re.sub(r"\{[^}]*\}", "", expr)              # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)             # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    keywords = {"and", "or", "unless", "le", "bool"}
    out = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[m.end():].lstrip().startswith("("):
            continue                                   # a function
        if m.group(0) not in keywords and not m.group(0).startswith("__"):
            out.add(m.group(0))
    return out


def test_every_dashboard_and_alert_expression_uses_exported_metrics(served):
    port, _ = served
    names = exported_names(fetch(f"http://127.0.0.1:{port}/metrics"))
    dash = json.loads((MONITORING / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 12
    exprs += re.findall(r"expr: (.*)", (MONITORING / "alerts.yml").read_text())
    for expr in exprs:
        used = _metric_names(expr)
        assert used, expr
        missing = {m for m in used if m not in names and not re.fullmatch(r"\d.*", m)}
        assert not missing, f"{expr}: {missing} not exported"


def test_a_real_prometheus_scrapes_pgo_run_and_fires_an_alert(served, tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("no prometheus on PATH (Debian: apt-get install prometheus); .ci/run "
                    "installs it")
    port, _ = served
    # The rules as shipped, with their `for:` waits cut so one fires in a test.
    rules = re.sub(r"for: \d+m", "for: 0s", (MONITORING / "alerts.yml").read_text())
    (tmp_path / "rules.yml").write_text(rules)
    (tmp_path / "prometheus.yml").write_text(textwrap.dedent(f"""
        global:
          scrape_interval: 1s
          evaluation_interval: 1s
        rule_files: [rules.yml]
        scrape_configs:
          - job_name: pgo
            static_configs:
              - targets: ["127.0.0.1:{port}"]
    """))
    web = free_port()
    server = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api = f"http://127.0.0.1:{web}/api/v1"
    try:
        deadline = time.monotonic() + 90
        value = firing = None
        while time.monotonic() < deadline and (value is None or not firing):
            time.sleep(1)
            try:
                q = urllib.parse.quote('allocator_allocations_total{job="pgo"}')
                res = json.loads(fetch(f"{api}/query?query={q}"))["data"]["result"]
                value = res[0]["value"][1] if res else None
                alerts = json.loads(fetch(f"{api}/alerts"))["data"]["alerts"]
                firing = [a for a in alerts if a["state"] == "firing"
                          and a["labels"]["alertname"] == "AllocatorUtilizationHigh"]
            except OSError:
                continue
        assert value == "3", value
        assert firing and firing[0]["labels"]["allocator_type"] == "CacheAllocator", firing
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_pgo_profile_serves_the_metrics_too(tmp_path):
    (tmp_path / "job.py").write_text(PROGRAM)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pgo", "profile", "--no-cpu", "-q", "-o", "b",
                             "--metrics-port", str(port), "job.py", "3"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        text = fetch(f"http://127.0.0.1:{port}/metrics")
        assert "pgo_gc_pause_seconds_count" in text and "python_info" in text
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        proc.kill()


def test_two_ports_a_busy_port_and_the_pause_histogram_in_process():
    # In a child: the process-wide state of prometheus_client stays out of
    # the test runner.
    code = textwrap.dedent("""
        import gc, socket, urllib.request
        import pgo.metrics as m
        def port():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0)); return s.getsockname()[1]
        class Registry:          # a CollectorRegistry, made at the first scrape
            reg = None
            def register(self, c):
                from prometheus_client import CollectorRegistry
                if Registry.reg is None:
                    Registry.reg = CollectorRegistry()
                Registry.reg.register(c)
            def collect(self):
                return Registry.reg.collect() if Registry.reg else iter(())
        reg = Registry()
        busy = socket.socket(); busy.bind(("127.0.0.1", 0)); busy.listen()
        try:
            m.start_http_server(busy.getsockname()[1], registry=reg)
            raise SystemExit("bound a busy port")
        except OSError:
            pass
        a, b = port(), port()
        import sys
        m.start_http_server(a, registry=reg)             # after the failure: no duplicate
        # Nothing is imported for the exporter until the first scrape.
        assert "prometheus_client.exposition" not in sys.modules
        m.start_http_server(b, registry=reg)             # a second port: the same collector
        assert m.start_http_server(a, registry=reg) is m.start_http_server(a, registry=reg)
        for _ in range(3):
            gc.collect()
        for p in (a, b):
            text = urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics").read().decode()
            counts = [float(l.split()[-1]) for l in text.splitlines()
                      if l.startswith("pgo_gc_pause_seconds_bucket")]
            assert counts == sorted(counts) and counts[-1] >= 3, counts
            assert text.count("# TYPE pgo_gc_pause_seconds histogram") == 1
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "ok", out.stderr

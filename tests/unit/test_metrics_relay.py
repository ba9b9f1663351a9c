"""The socket-pair protocol between `pgo run --metrics-port`'s launcher
(Relay) and the program (answer): in one process, with the program's side
real (pgo.metrics_relay.answer) or a scripted stand-in."""

import json
import os
import socket
import struct
import sys
import threading
import time

import pytest

pytest.importorskip("prometheus_client", reason="prometheus_client is not installed")

from pgo import metrics, metrics_relay


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def relay():
    r = metrics_relay.Relay(free_port())
    yield r
    r.close()


def test_the_program_answers_with_its_snapshot(relay):
    metrics_relay.answer(os.dup(relay.child_fd()))
    snap = relay.snapshot()
    assert snap is not None and "error" not in snap
    assert snap["python"]["minor"] == str(os.sys.version_info.minor)
    assert len(snap["gc_stats"]) >= 2 and snap["pauses"]["count"] >= 0
    assert relay.snapshot() is not None                   # and again


def test_a_failing_snapshot_is_reported_and_the_next_one_still_comes(relay, monkeypatch):
    metrics_relay.answer(os.dup(relay.child_fd()))
    real = metrics.snapshot
    monkeypatch.setattr(metrics, "snapshot", lambda *a: 1 / 0)
    snap = relay.snapshot()
    assert snap == {"error": "ZeroDivisionError: division by zero"}
    monkeypatch.setattr(metrics, "snapshot", real)
    snap = relay.snapshot()
    assert snap is not None and "sources" in snap


def test_a_late_answer_is_dropped_not_served_to_the_next_scrape(relay, monkeypatch):
    # The program (a stand-in) answers the first request after the scrape
    # gave up; the second scrape must get its own answer, not that one.
    monkeypatch.setattr(metrics_relay, "ANSWER_TIMEOUT_S", 0.2)
    conn = socket.socket(fileno=os.dup(relay.child_fd()))

    def program():
        with conn:
            for _ in range(2):
                (seq,) = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))
                if seq == 1:
                    time.sleep(0.5)
                data = json.dumps({"answer_to": seq}).encode()
                conn.sendall(struct.pack("!II", seq, len(data)) + data)

    t = threading.Thread(target=program)
    t.start()
    assert relay.snapshot() is None                   # timed out
    time.sleep(0.5)                                   # the late answer is in the pipe now
    assert relay.snapshot() == {"answer_to": 2}
    t.join()


def test_a_garbled_stream_stops_the_questions(relay):
    conn = socket.socket(fileno=os.dup(relay.child_fd()))
    with conn:
        conn.sendall(struct.pack("!II", 1, metrics_relay.MAX_ANSWER_BYTES + 1))
        assert relay.snapshot() is None
        assert relay._broken
        assert relay.snapshot() is None               # asks no more


def test_close_stops_the_server_before_and_after_a_scrape():
    import urllib.request
    for scrape in (False, True):
        r = metrics_relay.Relay(free_port())
        port = r.sock.getsockname()[1]
        metrics_relay.answer(os.dup(r.child_fd()))
        r.started(os.getpid())
        if scrape:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
            assert b"allocator_utilization_ratio" in text or b"pgo_gc_frozen_objects" in text
        r.close()
        assert not r._server.thread.is_alive()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_without_prometheus_client_metrics_port_is_a_clear_error(monkeypatch):
    from pgo._errors import CommandError
    monkeypatch.setitem(sys.modules, "prometheus_client", None)     # as if not installed
    with pytest.raises(CommandError, match="--metrics-port needs prometheus_client") as e:
        metrics_relay.Relay(free_port())
    assert e.value.exit_code == 2

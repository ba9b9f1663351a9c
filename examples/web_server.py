"""A real HTTP server with per-request buffers and objects from pgo's pools,
load-tested from a second process, with and without pooling.

    python3 examples/web_server.py [--requests 4000] [--concurrency 4] [--body 262144]

For each mode (``plain``, then ``pooled``) it starts the server in a child
process on 127.0.0.1 (a free port), runs the load generator in another
child process, and stops the server.  The server
(``http.server.ThreadingHTTPServer``, HTTP/1.1 keep-alive) answers
``POST /transform``: it reads the body into a request buffer, and renders a
response of the same size (a JSON header line with the body's CRC-32, then
the body with its bytes reversed in blocks) into a response buffer.

- ``plain``: both buffers are new ``bytearray``s and the header is built
  with string formatting, as most handlers do;
- ``pooled``: both buffers come from a ``pgo.BufferPool`` and the header
  from a ``pgo.StringBuilder`` kept in a ``pgo.ObjectPool``, handed back
  when the response is written (even when the handler fails).

The load generator keeps one connection per worker thread, bounded in
requests and in time, checks every response (size and CRC), and reports
requests/s and latency percentiles.  The summary (JSON on stdout) has both
modes, the ratio, and the pooled server's pool statistics: every buffer
and builder must be back in its pool when the load ends.

    python3 examples/web_server.py serve --mode pooled     # just the server
    python3 examples/web_server.py load --port N ...       # just the load
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import zlib

import pgo

HEADER_MAX = 256


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "Server"

    def log_message(self, format: str, *args: object) -> None:   # quiet
        pass

    def do_GET(self) -> None:
        if self.path != "/stats":
            self.send_error(404)
            return
        body = json.dumps(self.server.stats()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        if self.path != "/transform":
            self.send_error(404)
            return
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.send_error(411)
            return
        if not 0 < n <= 16 << 20:
            self.send_error(413)
            return
        self.server.transform(self, n)


def _read_into(rfile, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        k = rfile.readinto(view[got:])
        if not k:
            return False
        got += k
    return True


def _render(src: memoryview, dst: memoryview, header: bytes) -> int:
    """header + body with each 4 KiB block reversed: a transform that
    touches every byte of both buffers."""
    h = len(header)
    dst[:h] = header
    n = len(src)
    for i in range(0, n, 4096):
        block = src[i:i + 4096]
        dst[h + i:h + i + len(block)] = block[::-1]
    return h + n


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, mode: str) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.mode = mode
        self.buffers = pgo.BufferPool(max_bytes=256 << 20)
        self.builders: pgo.ObjectPool[pgo.StringBuilder] = pgo.ObjectPool(
            lambda: pgo.StringBuilder(HEADER_MAX), reset=lambda sb: sb.reset(), max_size=64)
        self.served = 0
        self.inflight = 0
        self._done = threading.Condition()

    def stats(self) -> dict:
        # A client has its last response before that handler has handed
        # its buffers back: wait (briefly) for the requests in flight.
        with self._done:
            self._done.wait_for(lambda: self.inflight == 0, timeout=5)
            return {"mode": self.mode, "served": self.served, "inflight": self.inflight,
                    "buffers": self.buffers.stats(), "builders": self.builders.stats()}

    def transform(self, h: Handler, n: int) -> None:
        with self._done:
            self.inflight += 1
        try:
            if self.mode == "pooled":
                self._pooled(h, n)
            else:
                self._plain(h, n)
        finally:
            with self._done:
                self.inflight -= 1
                self.served += 1
                self._done.notify_all()

    def _plain(self, h: Handler, n: int) -> None:
        body = bytearray(n)
        view = memoryview(body)
        if not _read_into(h.rfile, view):
            return
        header = (json.dumps({"crc": zlib.crc32(view), "size": n}) + "\n").encode()
        out = bytearray(len(header) + n)
        size = _render(view, memoryview(out), header)
        self._send(h, memoryview(out)[:size])

    def _pooled(self, h: Handler, n: int) -> None:
        with self.buffers.buffer(n) as view, self.builders.take() as sb, \
                self.buffers.buffer(n + HEADER_MAX) as out:
            if not _read_into(h.rfile, view[:n]):
                return
            sb.append('{"crc": ')
            sb.append(str(zlib.crc32(view[:n])))
            sb.append(', "size": ')
            sb.append(str(n))
            sb.append("}\n")
            size = _render(view[:n], out, memoryview(sb))
            self._send(h, out[:size])

    @staticmethod
    def _send(h: Handler, payload: memoryview) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)


def serve(args: argparse.Namespace) -> int:
    server = Server(args.port, args.mode)
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever(poll_interval=0.05)
    server.server_close()
    return 0


def load(args: argparse.Namespace) -> int:
    body = bytes((i * 7 + 3) & 0xFF for i in range(256)) * (args.body // 256 + 1)
    body = body[:args.body]
    crc = zlib.crc32(body)
    lock = threading.Lock()
    next_request = [0]
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + args.duration

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
        mine = []
        try:
            while time.monotonic() < deadline:
                with lock:
                    if next_request[0] >= args.requests:
                        break
                    next_request[0] += 1
                t0 = time.perf_counter()
                conn.request("POST", "/transform", body=body,
                             headers={"Content-Type": "application/octet-stream"})
                resp = conn.getresponse()
                data = resp.read()
                mine.append(time.perf_counter() - t0)
                line, _, rest = data.partition(b"\n")
                meta = json.loads(line)
                if resp.status != 200 or meta["crc"] != crc or len(rest) != len(body) \
                        or rest[:4096] != body[:4096][::-1]:
                    with lock:
                        errors.append(f"bad response: status {resp.status}, {meta}")
        except (OSError, http.client.HTTPException, ValueError) as e:
            with lock:
                errors.append(f"{type(e).__name__}: {e}")
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
    conn.request("GET", "/stats")
    server_stats = json.loads(conn.getresponse().read())
    conn.close()
    lat = sorted(latencies)
    print(json.dumps({
        "requests": len(lat), "errors": len(errors), "first_errors": errors[:3],
        "seconds": round(elapsed, 4),
        "requests_per_s": round(len(lat) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(statistics.median(lat) * 1e3, 3) if lat else None,
        "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3, 3) if lat else None,
        "server": server_stats,
    }))
    return 0


def run_mode(mode: str, args: argparse.Namespace) -> dict:
    me = os.path.abspath(__file__)
    server = subprocess.Popen([sys.executable, me, "serve", "--mode", mode, "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline() if server.stdout else ""
        if not line.startswith("port "):
            raise RuntimeError(f"the {mode} server did not start (it said {line!r})")
        port = int(line.split()[1])
        proc = subprocess.run([sys.executable, me, "load", "--port", str(port),
                               "--requests", str(args.requests),
                               "--concurrency", str(args.concurrency),
                               "--body", str(args.body), "--duration", str(args.duration)],
                              capture_output=True, text=True, timeout=args.duration + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"the load generator failed: {proc.stderr[-2000:]}")
        return json.loads(proc.stdout)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    s = sub.add_parser("serve", help="run only the server")
    s.add_argument("--mode", choices=("plain", "pooled"), default="pooled")
    s.add_argument("--port", type=int, default=8000)
    ld = sub.add_parser("load", help="run only the load generator")
    ld.add_argument("--port", type=int, required=True)
    for p in (parser, ld):
        p.add_argument("--requests", type=int, default=4000, help="total requests, at most")
        p.add_argument("--concurrency", type=int, default=4, help="connections (threads)")
        p.add_argument("--body", type=int, default=256 << 10, help="request body bytes")
        p.add_argument("--duration", type=float, default=30.0, help="seconds, at most")
    args = parser.parse_args(argv)
    if args.role == "serve":
        return serve(args)
    if args.role == "load":
        return load(args)
    results = {mode: run_mode(mode, args) for mode in ("plain", "pooled")}
    plain, pooled = results["plain"], results["pooled"]
    results["pooled_vs_plain"] = {
        "requests_per_s": round(pooled["requests_per_s"] / plain["requests_per_s"], 3)
        if plain["requests_per_s"] else None,
        "p99": round(pooled["p99_ms"] / plain["p99_ms"], 3) if plain["p99_ms"] else None,
    }
    print(json.dumps(results, indent=1))
    return 0 if plain["errors"] == pooled["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

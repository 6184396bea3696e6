"""What the side-by-side cluster benchmarks share (bench/etcd, bench/cluster): the processes
and temp dirs they start, always cleaned up (finally, atexit, SIGTERM; PDEATHSIG if the
benchmark itself is killed), free loopback ports, and the summary of timing samples.
Python 3.11 standard library only."""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HOST = "127.0.0.1"

# Everything started, so that cleanup() can always find it.
PROCS: list[subprocess.Popen] = []
TMPDIRS: list[str] = []
SETTINGS = {"keep_dir": False, "name": "bench"}


def log(msg: str) -> None:
    # UTC wall-clock time, to line up with the servers' own logs.
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}"
    print(f"[{SETTINGS['name']} {stamp}] {msg}", file=sys.stderr, flush=True)


def cleanup() -> None:
    """Kill every process still running and remove the temp dirs (idempotent)."""
    for p in PROCS:
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    for p in PROCS:
        try:
            p.wait(timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            pass
    PROCS.clear()
    while TMPDIRS:
        d = TMPDIRS.pop()
        if SETTINGS["keep_dir"]:
            log(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


def on_sigterm(signum, _frame):
    # Raising here unwinds through the finally blocks; atexit runs after.
    raise SystemExit(128 + signum)


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if this process dies (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_ports(n: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """n distinct free ports on loopback, TCP or UDP (sockets held open until all are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, kind)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def summary(samples: list[float]) -> dict:
    return {
        "samples_s": [round(s, 3) for s in samples],
        "median_s": round(statistics.median(samples), 3),
        "min_s": round(min(samples), 3),
        "max_s": round(max(samples), 3),
    }


def put_loop(clients: int, seconds: float, endpoints: list[tuple[str, int]], path: str,
             body_of, verdict, server_cpu) -> dict:
    """The throughput loop both side-by-side benchmarks run, so that their figures compare:
    `clients` threads, client i on one keep-alive connection to endpoints[i % len], each
    doing 20 warm-up requests, then sequential POSTs of body_of(i, seq) to `path` for
    `seconds`, all released at once. verdict(status, body bytes) is None when a request
    counts as done, else a short name for what went wrong (a failed connection is named by
    its exception). server_cpu() reads the servers' utime+stime.

    Returns the sorted latencies of the requests done (seconds), an errors Counter, and the
    figures: puts, errors, puts_per_s, p50_ms, p99_ms, server and client CPU per put."""
    import collections
    import http.client
    import os
    import threading

    start: dict = {}

    def begin() -> None:
        # The barrier's action runs once, before any client is released.
        start["cpu"] = server_cpu()
        start["own"] = os.times()
        start["t"] = time.perf_counter()
        start["stop_at"] = start["t"] + seconds

    barrier = threading.Barrier(clients + 1, action=begin)
    results: list[tuple[list[float], collections.Counter]] = [([], collections.Counter())] * clients
    headers = {"Content-Type": "application/json"}

    def client(i: int) -> None:
        endpoint = endpoints[i % len(endpoints)]
        conn = http.client.HTTPConnection(*endpoint, timeout=10)
        lats, errors, seq = [], collections.Counter(), 0

        def one() -> str | None:
            nonlocal conn, seq
            body = body_of(i, seq)
            seq += 1
            try:
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                return verdict(resp.status, resp.read())
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = http.client.HTTPConnection(*endpoint, timeout=10)
                return "client timeout" if isinstance(e, TimeoutError) else type(e).__name__

        for _ in range(20):  # warm-up: connection set up, caches hot
            one()
        barrier.wait()
        stop_at = start["stop_at"]
        while True:
            t = time.perf_counter()
            if t >= stop_at:
                break
            err = one()
            if err is None:
                lats.append(time.perf_counter() - t)
            else:
                errors[err] += 1
        conn.close()
        results[i] = (lats, errors)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait(timeout=120)  # raises if a client died before the start
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start["t"]
    cpu = server_cpu() - start["cpu"]
    own0, own1 = start["own"], os.times()
    client_cpu = (own1.user - own0.user) + (own1.system - own0.system)

    lats = sorted(x for r in results for x in r[0])
    errors: collections.Counter = collections.Counter()
    for r in results:
        errors.update(r[1])
    puts = len(lats)

    def pct(p: float) -> float | None:
        return round(lats[min(len(lats) - 1, int(p * len(lats)))] * 1000, 2) if lats else None

    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "puts": puts,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "puts_per_s": round(puts / elapsed, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "server_cpu_us_per_put": round(cpu / puts * 1e6, 1) if puts else None,
        "client_cpu_us_per_put": round(client_cpu / puts * 1e6, 1) if puts else None,
    }

#!/usr/bin/env python3
"""etcd reference benchmark: leader failover time and put throughput.

Starts real etcd processes on loopback (free ports, one data dir each under a
temp dir, etcd's default fsync) and talks to them through etcd's v3 JSON
gateway. Prints one JSON object on stdout; progress goes to stderr.

  failover    3 members: SIGKILL the leader, put through another member until
              a put succeeds; seconds from kill to first success, --kills times.
  throughput  --clients threads doing sequential ~100-byte puts for --seconds,
              against 1 member and against 3 members; puts/s, p50/p99 latency
              and server CPU (utime+stime of the members) per put.

Python 3.11 standard library only. Every etcd started here is killed and the
temp dir removed on exit (finally, atexit, SIGTERM; PDEATHSIG if we are killed).
"""

from __future__ import annotations

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), ".."))
from procs import (  # noqa: E402  (bench/procs.py, shared with the other side-by-side script)
    HOST, PROCS, SETTINGS, TMPDIRS, cleanup, die_with_parent, free_ports, log, on_sigterm, put_loop,
    summary,
)

import argparse
import atexit
import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
VALUE_B64 = base64.b64encode(b"v" * 100).decode()  # the ~100-byte value of every put

# --------------------------------------------------------------------------
# The v3 JSON gateway


class Gateway:
    """Path prefix of the gRPC JSON gateway: `/v3` from etcd 3.4 on (3.4.23
    still answers `/v3beta` too, no longer `/v3alpha`); 3.3 had only the
    older two."""

    prefix: str | None = None  # found by detect() on the first member that answers

    @classmethod
    def detect(cls, port: int) -> str:
        for prefix in ("/v3", "/v3beta", "/v3alpha"):
            try:
                call(port, f"{prefix}/maintenance/status", "{}", timeout=1.0)
            except Exception:
                continue
            cls.prefix = prefix
            return prefix
        raise RuntimeError("no v3 JSON gateway answered /maintenance/status")


def call(port: int, path: str, body: str, timeout: float) -> dict:
    """One POST on a fresh connection; raises on any error or non-200 answer."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        return json.loads(data)
    finally:
        conn.close()


def put_body(key: str) -> str:
    return json.dumps({"key": base64.b64encode(key.encode()).decode(), "value": VALUE_B64})


def put(port: int, key: str, timeout: float) -> None:
    call(port, f"{Gateway.prefix}/kv/put", put_body(key), timeout)


def status(port: int, timeout: float = 1.0) -> dict:
    if Gateway.prefix is None:
        log(f"gateway prefix: {Gateway.detect(port)}")
    return call(port, f"{Gateway.prefix}/maintenance/status", "{}", timeout)


# --------------------------------------------------------------------------
# Members and clusters


class Member:
    def __init__(self, name: str, base: str):
        self.name = name
        self.client_port, self.peer_port = free_ports(2)
        self.data_dir = os.path.join(base, name)
        self.log_path = os.path.join(base, f"{name}.log")
        self.proc: subprocess.Popen | None = None
        self.id: str | None = None  # member id as the gateway prints it (decimal string)

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    def start(self, etcd: str, initial_cluster: str, state: str, token: str, flags: list[str]) -> None:
        cmd = [
            etcd,
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", token,
            "--logger", "zap",
            *flags,
        ]
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        logf.close()
        PROCS.append(self.proc)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """utime+stime of the running process, from /proc/PID/stat."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            # Fields after the ")" that ends the command name; utime, stime are 14, 15.
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Cluster:
    def __init__(self, n: int, etcd: str, flags: list[str], base: str):
        self.etcd = etcd
        self.flags = flags
        self.dir = tempfile.mkdtemp(prefix=f"etcd{n}-", dir=base)
        self.token = os.path.basename(self.dir)
        self.members = [Member(f"m{i}", self.dir) for i in range(n)]
        self.initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def start(self) -> None:
        for m in self.members:
            m.start(self.etcd, self.initial, "new", self.token, self.flags)
        self.wait_healthy()
        for m in self.members:
            m.id = status(m.client_port)["header"]["member_id"]

    def restart(self, m: Member) -> None:
        """Restart a killed member on its own data dir with the same flags."""
        m.start(self.etcd, self.initial, "existing", self.token, self.flags)
        self.wait_healthy()

    def stop(self) -> None:
        for m in self.members:
            m.kill()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every member answers status with a leader, all agree on it, and
        a put through every member succeeds."""
        deadline = time.monotonic() + timeout
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            for m in self.members:
                if not m.alive():
                    raise RuntimeError(f"etcd {m.name} exited (code {m.proc.returncode}); see {m.log_path}")
            try:
                leaders = {status(m.client_port).get("leader", "0") for m in self.members}
                if len(leaders) == 1 and "0" not in leaders:
                    for m in self.members:
                        put(m.client_port, "health", 2.0)
                    return
            except Exception as e:  # not up yet
                last_err = e
            time.sleep(0.1)
        raise RuntimeError(f"cluster not healthy after {timeout:.0f} s: {last_err}")

    def leader(self) -> Member:
        ids = {m.id: m for m in self.members}
        for m in self.members:
            lid = status(m.client_port).get("leader")
            if lid in ids:
                return ids[lid]
        raise RuntimeError("no leader found")


# --------------------------------------------------------------------------
# Measurements


def bench_failover(args, base: str) -> dict:
    cluster = Cluster(3, args.etcd, args.flags, base)
    log("failover: starting 3 members")
    samples, attempt_counts = [], []
    try:
        cluster.start()
        for k in range(args.kills):
            time.sleep(args.settle)  # let followers catch up before the next kill
            victim = cluster.leader()
            target = next(m for m in cluster.members if m is not victim)
            t0 = time.monotonic()
            victim.kill()
            attempts = 0
            while True:
                attempts += 1
                t_req = time.monotonic()
                try:
                    put(target.client_port, f"failover/{k}", args.put_timeout)
                    break
                except Exception:
                    if time.monotonic() - t0 > 120:
                        raise RuntimeError("no put succeeded within 120 s of the kill")
                    # Immediate refusals ("no leader", proposal dropped) would
                    # otherwise spin and steal a core from the election.
                    if time.monotonic() - t_req < 0.005:
                        time.sleep(0.005)
            dt = time.monotonic() - t0
            samples.append(dt)
            attempt_counts.append(attempts)
            log(f"failover {k + 1}/{args.kills}: killed {victim.name}, put via {target.name} "
                f"ok after {dt:.3f} s ({attempts} attempts)")
            cluster.restart(victim)
    finally:
        cluster.stop()
    return {"members": 3, "kills": args.kills, "put_timeout_s": args.put_timeout,
            **summary(samples), "attempts": attempt_counts}


def bench_throughput(args, base: str, n: int) -> dict:
    cluster = Cluster(n, args.etcd, args.flags, base)
    log(f"throughput: starting {n} member(s), {args.clients} clients, {args.seconds} s")
    try:
        cluster.start()
        figures = put_loop(
            args.clients, args.seconds, [(HOST, m.client_port) for m in cluster.members],
            f"{Gateway.prefix}/kv/put", lambda i, seq: put_body(f"bench/{i}/{seq % 1000}"),
            lambda status, _body: None if status == 200 else str(status),
            lambda: sum(m.cpu_seconds() for m in cluster.members))
    finally:
        cluster.stop()
    res = {"members": n, **figures}
    log(f"throughput {n} member(s): {res['puts_per_s']} puts/s, p50 {res['p50_ms']} ms, "
        f"p99 {res['p99_ms']} ms, server {res['server_cpu_us_per_put']} us/put")
    return res


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--etcd", default=shutil.which("etcd"), help="etcd binary (default: etcd on PATH)")
    ap.add_argument("--kills", type=int, default=5, help="leader kills in the failover test")
    ap.add_argument("--clients", type=int, default=16, help="client threads in the throughput test")
    ap.add_argument("--seconds", type=float, default=10, help="length of each throughput run")
    ap.add_argument("--only", choices=["failover", "throughput"], help="run one test only")
    ap.add_argument("--election-timeout", type=int, default=1000, help="ms (etcd default 1000)")
    ap.add_argument("--heartbeat-interval", type=int, default=100, help="ms (etcd default 100)")
    ap.add_argument("--put-timeout", type=float, default=0.5, help="per-request timeout while failing over, s")
    ap.add_argument("--settle", type=float, default=1.0, help="pause before each kill, s")
    ap.add_argument("--keep-dir", action="store_true", help="keep data dirs and member logs")
    args = ap.parse_args()
    if not args.etcd or not os.access(args.etcd, os.X_OK):
        ap.error("no etcd binary: run bench/etcd/setup.sh or pass --etcd PATH")
    SETTINGS["keep_dir"] = args.keep_dir
    SETTINGS["name"] = "etcd-bench"
    args.flags = ["--election-timeout", str(args.election_timeout),
                  "--heartbeat-interval", str(args.heartbeat_interval)]

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_sigterm)
    base = tempfile.mkdtemp(prefix="etcd-bench-")  # honours TMPDIR
    TMPDIRS.append(base)

    version = subprocess.run([args.etcd, "--version"], capture_output=True, text=True).stdout
    out = {
        "etcd_version": version.split("\n")[0].split(":")[-1].strip(),
        "etcd": args.etcd,
        "election_timeout_ms": args.election_timeout,
        "heartbeat_interval_ms": args.heartbeat_interval,
        "cores": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),  # other work skews every figure
    }
    try:
        if args.only in (None, "failover"):
            out["failover"] = bench_failover(args, base)
        if args.only in (None, "throughput"):
            rf1 = bench_throughput(args, base, 1)
            rf3 = bench_throughput(args, base, 3)
            out["throughput"] = {
                "rf1": rf1,
                "rf3": rf3,
                "ratio_rf3_rf1": round(rf3["puts_per_s"] / rf1["puts_per_s"], 2) if rf1["puts_per_s"] else None,
            }
        out["gateway_prefix"] = Gateway.prefix
    finally:
        cleanup()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Prism cluster benchmark: leader failover time and put throughput, the
counterpart of bench/etcd/etcd_bench.py (same client style, timeouts and loops,
so the numbers compare).

Starts real `prism-server --cluster` processes on loopback (free ports, one
data dir each under a temp dir, one CA and one certificate for 127.0.0.1 and
localhost shared by the nodes, mutual TLS between them) and talks to their HTTP
API. With --netns each node runs in a network namespace of its own instead, made
by the tests' harness (`prism-testnet`, tests/netns), which can also cut links. Node 1 bootstraps, the others join through it with --peers. Every test
writes into a collection `bench` with one shard. Prints one JSON object on
stdout; progress goes to stderr.

  failover    3 nodes, replication factor 3: SIGKILL the node leading shard 0
              (moved first, best effort, to the node leading the metadata
              group, so that both fail at once), put through another node
              until a put is acknowledged; seconds from kill to the first
              acknowledged put, --kills times, restarting the node in between.
              With --netns --fault partition the node is cut off from the
              others (both ways) instead, and the cut healed in between.
  search      3 nodes, a collection of 3 shards at RF 3 and --search-docs
              documents, --search-queries BM25 queries asked through each node in
              turn, one client; the same on one plain node: p50/p99 and server
              CPU per query, and the cluster/single ratios.
  idle        3 nodes, --idle-collections collections of 3 shards at RF 3 (300
              groups by default, a copy of each on every node), idle: each
              node's CPU, RSS and threads.
  throughput  --clients threads doing sequential one-document puts (~100-byte
              title) for --seconds: 1 node RF 1 (etcd's 1 member), 3 nodes
              RF 3 (etcd's 3 members), and 3 nodes RF 1; puts/s, p50/p99
              latency and server CPU (utime+stime of the nodes) per put.

A put is acknowledged when the answer is 201 with "successful_docs": 1; a 201
with 0 successful documents, any other status, a time-out or a broken
connection is a failure.

Python 3.11 standard library only. Every prism-server started here is killed
and the temp dir removed on exit (finally, atexit, SIGTERM; PDEATHSIG if we are
killed).
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
import collections
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
COLLECTION = "bench"
DOCS_PATH = f"/collections/{COLLECTION}/documents"
# The ~100-byte title of every put (etcd's value is 100 bytes).
TITLE = ("the quick brown fox jumps over the lazy dog while five boxing wizards "
         "jump quickly past the sphinxes")
assert len(TITLE) == 100
SCHEMA_FIELDS = {"title": {"type": "text"}, "n": {"type": "i64"}}
ACK = b'"successful_docs":1'  # in a 201's compact JSON, when the one document was written
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# --------------------------------------------------------------------------
# HTTP


def call(endpoint: tuple[str, int], method: str, path: str, body: object = None,
         timeout: float = 5.0) -> tuple[int, dict | None]:
    """One request to a node's (host, port) on a fresh connection: (status, JSON body or
    None). Raises on connection errors and time-outs, not on error statuses."""
    conn = http.client.HTTPConnection(*endpoint, timeout=timeout)
    try:
        data = body if body is None or isinstance(body, str) else json.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, data, headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, None
    finally:
        conn.close()


def put_body(doc_id: str, n: int) -> str:
    return json.dumps({"documents": [{"id": doc_id, "fields": {"title": TITLE, "n": n}}]})


def error_code(status: int, body: dict | None) -> str:
    """A short name for a refused put: `503 unavailable`, `201 successful_docs=0`, ..."""
    if status == 201:
        return f"201 successful_docs={(body or {}).get('successful_docs')}"
    code = ((body or {}).get("error") or {}).get("code") if isinstance(body, dict) else None
    return f"{status} {code}" if code else str(status)


def put(endpoint: tuple[str, int], doc_id: str, timeout: float) -> None:
    """One put on a fresh connection; raises unless it is acknowledged."""
    status, body = call(endpoint, "POST", DOCS_PATH, put_body(doc_id, 1), timeout)
    if status != 201 or not body or body.get("successful_docs") != 1:
        raise RefusedPut(error_code(status, body), body)


class RefusedPut(Exception):
    def __init__(self, code: str, body: dict | None):
        super().__init__(f"{code}: {json.dumps(body)[:300] if body else ''}")
        self.code = code


def failure_kind(e: Exception) -> str:
    if isinstance(e, RefusedPut):
        return e.code
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "client timeout"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    return type(e).__name__


# --------------------------------------------------------------------------
# Nodes and clusters


class TestNet:
    """The tests' private network (tests/netns, `prism-testnet N`): a network namespace and
    an address per node, and commands to cut links (`cut A,B C`, `partition A B,C`, `drop A
    P`, `heal`; nodes from 0). It deletes the network when its input closes, even when this
    script is killed."""

    def __init__(self, n: int, binary: str):
        self.proc = subprocess.Popen([binary, str(n)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
        PROCS.append(self.proc)
        layout = json.loads(self.proc.stdout.readline() or "{}")
        if not layout.get("isolated"):
            self.close()
            raise RuntimeError("--netns: network namespaces are unavailable (run as root)")
        self.places: list[dict] = layout["nodes"]

    def command(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"prism-testnet {line!r}: {answer or 'no answer'}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


class Node:
    def __init__(self, index: int, base: str, place: dict | None = None):
        """A node on loopback with free ports, or at `place` (a TestNet node: its own
        address and namespace, fixed ports)."""
        self.name = f"node-{index}"
        self.netns = place["netns"] if place else None
        self.host = place["ip"] if place else HOST
        if place:
            self.http_port, self.raft_port = 9200, 7700
        else:
            (self.http_port,) = free_ports(1)
            (self.raft_port,) = free_ports(1, socket.SOCK_DGRAM)
        self.data_dir = os.path.join(base, self.name)
        self.log_path = os.path.join(base, f"{self.name}.log")
        self.proc: subprocess.Popen | None = None
        self.args: list[str] = []  # the flags of its first start, reused on restarts

    @property
    def raft_addr(self) -> str:
        return f"{self.host}:{self.raft_port}"

    @property
    def endpoint(self) -> tuple[str, int]:
        """Where its HTTP API answers."""
        return (self.host, self.http_port)

    def start(self, binary: str, config: str, cwd: str, log_filter: str) -> None:
        env = dict(os.environ)
        env.update({
            "PRISM_CONFIG": config,
            "PRISM_HOST": self.host,
            "PRISM_PORT": str(self.http_port),
            "PRISM_DATA_DIR": self.data_dir,
            "PRISM_LOG": log_filter,
            "NO_COLOR": "1",
        })
        logf = open(self.log_path, "ab")
        # `ip netns exec` execs the server: the pid stays its own (kill, /proc/PID/stat).
        wrap = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen(
            [*wrap, binary, *self.args], stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT, env=env, cwd=cwd, preexec_fn=die_with_parent,
        )
        logf.close()
        PROCS.append(self.proc)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"prism-server {self.name} exited (code {self.proc.returncode}); "
                               f"see {self.log_path}")

    def cpu_seconds(self) -> float:
        """utime+stime of the running process, from /proc/PID/stat."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            # Fields after the ")" that ends the command name; utime, stime are 14, 15.
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until /health answers with a status other than `recovering` (as the tests wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                code, body = call(self.endpoint, "GET", "/health", timeout=1.0)
                if code in (200, 503) and isinstance(body, dict) and body.get("status") != "recovering":
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer /health within {timeout:.0f} s")


def voters_for(n: int) -> int:
    """Metadata voters: every node up to 3, 3 of 4, 5 of more."""
    return n if n <= 3 else (3 if n == 4 else 5)


def config_text(tls: str, connect_timeout_ms: int, request_timeout_ms: int) -> str:
    return f"""[cluster]
connect_timeout_ms = {connect_timeout_ms}
request_timeout_ms = {request_timeout_ms}

[cluster.tls]
enabled = true
cert_path = "{tls}/node-cert.pem"
key_path = "{tls}/node-key.pem"
ca_cert_path = "{tls}/ca-cert.pem"
skip_verify = false
"""


def make_certs(tls: str, addresses: list[str]) -> None:
    """One CA and one certificate for localhost, 127.0.0.1 and `addresses`, shared by every
    node (as tests/src/cluster.rs `write_certs` does), through scripts/generate-certs.sh."""
    if os.path.exists(os.path.join(tls, "node-cert.pem")):
        return
    script = os.path.join(REPO, "scripts", "generate-certs.sh")
    r = subprocess.run([script, *addresses], env={**os.environ, "TLS_DIR": tls},
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{script} failed: {r.stderr.strip() or r.stdout.strip()}")


class Cluster:
    def __init__(self, n: int, rf: int, args, base: str):
        self.args = args
        self.n, self.rf = n, rf
        self.dir = tempfile.mkdtemp(prefix=f"prism{n}-rf{rf}-", dir=base)
        self.net = TestNet(n, args.testnet_bin) if args.netns else None
        places = self.net.places if self.net else [None] * n
        # Loopback clusters share one certificate; namespaced ones name their own addresses.
        self.tls = os.path.join(self.dir if self.net else base, "tls")
        make_certs(self.tls, [p["ip"] for p in places if p])
        self.config = os.path.join(self.dir, "prism.toml")
        with open(self.config, "w") as f:
            f.write(config_text(self.tls, args.connect_timeout_ms, args.request_timeout_ms))
        self.nodes = [Node(i + 1, self.dir, places[i]) for i in range(n)]
        first = self.nodes[0]
        for node in self.nodes:
            node.args = ["--cluster", "--raft-addr", node.raft_addr, "--node-id", node.name]
            node.args += ["--bootstrap"] if node is first else ["--peers", first.raft_addr]
        self.timings: dict[str, float] = {}

    def _start_node(self, node: Node) -> None:
        node.start(self.args.prism_bin, self.config, self.dir, self.args.log)
        node.wait_ready()

    def start(self) -> None:
        t0 = time.monotonic()
        for node in self.nodes:  # one by one, each ready before the next joins
            self._start_node(node)
        self.wait_members()
        self.timings["members_s"] = round(time.monotonic() - t0, 2)
        t1 = time.monotonic()
        self.create_collection()
        self.wait_healthy()
        self.timings["collection_s"] = round(time.monotonic() - t1, 2)
        log(f"{self.n} node(s) up in {self.timings['members_s']} s, collection (RF {self.rf}) "
            f"led and in sync {self.timings['collection_s']} s later")

    def restart(self, node: Node) -> float:
        """Restart a killed node on its own data dir with the same flags (its --bootstrap,
        if any, is ignored by a node that already belongs to a cluster); seconds until the
        cluster is settled and every copy caught up."""
        t0 = time.monotonic()
        self._start_node(node)
        self.wait_members()
        self.wait_healthy()
        return time.monotonic() - t0

    def heal(self) -> float:
        """Lift every cut; seconds until the cluster is settled and every copy caught up."""
        t0 = time.monotonic()
        self.net.command("heal")
        self.wait_members()
        self.wait_healthy()
        return time.monotonic() - t0

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        if self.net:
            self.net.close()

    def live(self) -> list[Node]:
        return [m for m in self.nodes if m.alive()]

    def get(self, path: str, timeout: float = 2.0) -> dict:
        """GET `path` from the first live node answering 200."""
        last = None
        for node in self.live():
            try:
                code, body = call(node.endpoint, "GET", path, timeout=timeout)
                if code == 200 and isinstance(body, dict):
                    return body
                last = f"{node.name}: HTTP {code} {body}"
            except (OSError, http.client.HTTPException) as e:
                last = f"{node.name}: {e!r}"
        raise RuntimeError(f"no node answered {path}: {last}")

    def _poll(self, what: str, check, timeout: float):
        """Calls check() until it returns something other than None; raises with its last
        complaint (a str it returned via `_Wait`) after `timeout`."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc is not None:
                    node.check_alive()
            try:
                got = check()
                if not isinstance(got, _Wait):
                    return got
                last = got.why
            except Exception as e:  # not up yet
                last = repr(e)
            time.sleep(0.1)
        raise RuntimeError(f"{what}: not after {timeout:.0f} s; last seen: {last}")

    def wait_members(self, timeout: float = 60.0) -> dict:
        """Until /cluster/status lists every node, names a leader, and every node is
        settled (leader or follower; learners only beyond the voters)."""
        n = self.n

        def check():
            st = self.get("/cluster/status")
            nodes = st.get("nodes") or []
            states = [x.get("state") for x in nodes]
            learners = states.count("learner")
            ok = (len(nodes) == n and st.get("leader")
                  and all(s in ("leader", "follower", "learner") for s in states)
                  and learners == n - voters_for(n))
            return st if ok else _Wait(json.dumps(st))

        return self._poll(f"{n} settled members with a leader", check, timeout)

    def create_collection(self) -> None:
        body = {"fields": SCHEMA_FIELDS, "shards": 1, "replication_factor": self.rf}
        code, answer = call(self.nodes[-1].endpoint, "PUT", f"/collections/{COLLECTION}", body,
                            timeout=30.0)
        if code not in (200, 201):
            raise RuntimeError(f"PUT /collections/{COLLECTION}: HTTP {code} {answer}")

    def shard_copies(self) -> list[dict]:
        rep = self.get("/cluster/shards", timeout=5.0)
        return [c for c in rep.get("copies", []) if c.get("collection") == COLLECTION]

    def wait_led(self, timeout: float = 60.0) -> list[dict]:
        """Until shard 0 has a copy with role leader."""
        def check():
            copies = self.shard_copies()
            ok = any(c.get("role") == "leader" and c.get("shard") == 0 for c in copies)
            return copies if ok else _Wait(json.dumps(copies))
        return self._poll("a leader for every shard", check, timeout)

    def wait_healthy(self, timeout: float = 90.0) -> None:
        """The counterpart of etcd's wait_healthy: shard 0 led, a put through every node
        acknowledged, then every one of the RF copies caught up (lag 0)."""
        self.wait_led(timeout)

        def puts():
            for node in self.nodes:
                try:
                    put(node.endpoint, "health", 5.0)
                except Exception as e:
                    return _Wait(f"put via {node.name}: {e}")
            return True
        self._poll("a put acknowledged through every node", puts, timeout)

        def synced():
            copies = self.shard_copies()
            ok = (len(copies) == self.rf
                  and sum(c.get("role") == "leader" for c in copies) == 1
                  and all(c.get("lag") == 0 for c in copies))
            return copies if ok else _Wait(json.dumps(copies))
        self._poll(f"{self.rf} copies in sync", synced, timeout)

    def node_named(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise RuntimeError(f"no node named {name!r}")

    def shard_leader(self) -> str | None:
        for c in self.shard_copies():
            if c.get("shard") == 0 and c.get("role") == "leader":
                return c.get("node")
        return None

    def meta_leader(self) -> str | None:
        return self.get("/cluster/status").get("leader")

    def align_leaders(self, timeout: float = 10.0) -> bool:
        """Best effort: move shard 0's leadership to the metadata leader's node (POST
        /cluster/election), so that one kill takes both leaders. True when they coincide."""
        meta = self.meta_leader()
        if meta is None or self.shard_leader() == meta:
            return meta is not None
        endpoint = self.live()[0].endpoint
        try:
            code, body = call(endpoint, "POST", "/cluster/election",
                              {"collection": COLLECTION, "shard": 0, "node": meta}, timeout=5.0)
            if code != 200:
                log(f"election of {meta} for shard 0 refused: HTTP {code} {body}")
        except (OSError, http.client.HTTPException) as e:
            log(f"election of {meta} for shard 0 failed: {e!r}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.shard_leader() == meta and self.meta_leader() == meta:
                    return True
            except RuntimeError:
                pass
            time.sleep(0.1)
        return False


class _Wait:
    def __init__(self, why: str):
        self.why = why


# --------------------------------------------------------------------------
# Measurements


def bench_failover(args, base: str) -> dict:
    cluster = Cluster(3, 3, args, base)
    log("failover: starting 3 nodes, RF 3")
    samples, attempt_counts, both, failures, recoveries = [], [], [], [], []
    try:
        cluster.start()
        for k in range(args.kills):
            time.sleep(args.settle)  # let followers catch up before the next kill
            aligned = cluster.align_leaders() if not args.no_align else False
            leader = cluster.shard_leader()
            if leader is None:
                raise RuntimeError("shard 0 has no leader before the kill")
            victim = cluster.node_named(leader)
            meta = cluster.meta_leader()
            led_both = meta == victim.name
            target = next(m for m in cluster.nodes if m is not victim)
            seen: collections.Counter[str] = collections.Counter()
            timeline: list[list] = []  # [seconds since the kill when it ended, what failed]
            victim_i = cluster.nodes.index(victim)
            rest = ",".join(str(i) for i in range(3) if i != victim_i)
            t0 = time.monotonic()
            if args.fault == "partition":
                cluster.net.command(f"partition {victim_i} {rest}")
            else:
                victim.kill()
            attempts = 0
            while True:
                attempts += 1
                t_req = time.monotonic()
                try:
                    put(target.endpoint, f"failover-{k}", args.put_timeout)
                    break
                except Exception as e:
                    seen[failure_kind(e)] += 1
                    if len(timeline) < 40:
                        timeline.append([round(time.monotonic() - t0, 3), failure_kind(e)])
                    if time.monotonic() - t0 > 120:
                        raise RuntimeError(f"no put acknowledged within 120 s of the kill: {dict(seen)}")
                    # Immediate refusals (503 unavailable / no_quorum) would otherwise
                    # spin and steal a core from the election.
                    if time.monotonic() - t_req < 0.005:
                        time.sleep(0.005)
            dt = time.monotonic() - t0
            samples.append(dt)
            attempt_counts.append(attempts)
            both.append(led_both)
            failures.append({"counts": dict(seen), "timeline": timeline})
            done = "cut off" if args.fault == "partition" else "killed"
            log(f"failover {k + 1}/{args.kills}: {done} {victim.name} (shard 0 leader"
                f"{', metadata leader' if led_both else f'; metadata leader {meta}'}"
                f"{'' if aligned or args.no_align or led_both else ', alignment failed'}), "
                f"put via {target.name} ok after {dt:.3f} s ({attempts} attempts; failures {dict(seen)})")
            if args.fault == "partition":
                rec = cluster.heal()
                log(f"  healed the cut of {victim.name}: settled and caught up in {rec:.2f} s")
            else:
                rec = cluster.restart(victim)
                log(f"  restarted {victim.name}: settled and caught up in {rec:.2f} s")
            recoveries.append(rec)
    finally:
        cluster.stop()
    return {"nodes": 3, "replication_factor": 3, "kills": args.kills, "fault": args.fault,
            "network": "namespaces" if args.netns else "loopback",
            "put_timeout_s": args.put_timeout, **summary(samples), "attempts": attempt_counts,
            "victim_led_metadata_too": both, "failed_attempts": failures,
            "recovery_to_caught_up_s": [round(r, 2) for r in recoveries],
            "cluster_start": cluster.timings}


def bench_throughput(args, base: str, n: int, rf: int) -> dict:
    cluster = Cluster(n, rf, args, base)
    log(f"throughput: starting {n} node(s), RF {rf}, {args.clients} clients, {args.seconds} s")

    def verdict(status: int, data: bytes) -> str | None:
        if status == 201 and ACK in data:
            return None
        try:
            return error_code(status, json.loads(data))
        except ValueError:
            return str(status)

    try:
        cluster.start()
        figures = put_loop(
            args.clients, args.seconds, [m.endpoint for m in cluster.nodes], DOCS_PATH,
            lambda i, seq: put_body(f"c{i}-{seq % 1000}", seq), verdict,
            lambda: sum(m.cpu_seconds() for m in cluster.nodes))
    finally:
        cluster.stop()
    res = {"nodes": n, "replication_factor": rf, **figures, "cluster_start": cluster.timings}
    log(f"throughput {n} node(s) RF {rf}: {res['puts_per_s']} puts/s, p50 {res['p50_ms']} ms, "
        f"p99 {res['p99_ms']} ms, server {res['server_cpu_us_per_put']} us/put, "
        f"errors {res['error_kinds'] or 0}")
    return res


# --------------------------------------------------------------------------


def zipf_docs(count: int, seed: int) -> list[dict]:
    """Titles of 4-40 words drawn from 2,000 with a Zipf-like skew (as the ranking test)."""
    import random
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(2000)]
    docs = []
    for i in range(count):
        title = " ".join(words[int(rng.random() ** 4 * len(words))] for _ in range(rng.randint(4, 39)))
        docs.append({"id": f"doc-{i}", "fields": {"title": title, "n": i}})
    return docs


def bench_search(args, base: str) -> dict:
    """Search p50/p99 and server CPU per query: a 3-node cluster (3 shards, RF 3), asked
    through each node in turn, against one plain node, over the same documents and queries,
    one client, sequential."""
    import random
    docs = zipf_docs(args.search_docs, 20)
    rng = random.Random(7)
    queries = [" ".join(f"w{rng.randint(0, 149)}" for _ in range(rng.randint(1, 3)))
               for _ in range(args.search_queries)]
    out = {"documents": len(docs), "queries": len(queries)}

    def load(endpoint: tuple[str, int], write_status: int) -> None:
        for i in range(0, len(docs), 1000):
            code, answer = call(endpoint, "POST", "/collections/search/documents",
                                {"documents": docs[i:i + 1000]}, timeout=60.0)
            if code != write_status or (answer or {}).get("failed_docs"):
                raise RuntimeError(f"loading: HTTP {code} {answer}")
        call(endpoint, "POST", "/collections/search/refresh", {}, timeout=60.0)

    def run(endpoints: list[tuple[str, int]], procs: list[Node]) -> dict:
        body = lambda q: {"query": q, "limit": 10}  # noqa: E731
        for q in queries[:50]:  # warm-up
            call(endpoints[0], "POST", "/collections/search/search", body(q), timeout=10.0)
        cpu0 = sum(m.cpu_seconds() for m in procs)
        lats = []
        for i, q in enumerate(queries):
            t = time.perf_counter()
            code, answer = call(endpoints[i % len(endpoints)], "POST", "/collections/search/search", body(q),
                                timeout=10.0)
            lats.append(time.perf_counter() - t)
            if code != 200:
                raise RuntimeError(f"search {q!r}: HTTP {code} {answer}")
        cpu = sum(m.cpu_seconds() for m in procs) - cpu0
        lats.sort()
        return {"p50_ms": round(lats[len(lats) // 2] * 1000, 2),
                "p99_ms": round(lats[int(len(lats) * 0.99)] * 1000, 2),
                "server_cpu_us_per_query": round(cpu / len(queries) * 1e6, 1)}

    cluster = Cluster(3, 3, args, base)
    try:
        cluster.start()
        code, answer = call(cluster.nodes[0].endpoint, "PUT", "/collections/search",
                            {"fields": SCHEMA_FIELDS, "shards": 3}, timeout=30.0)
        if code not in (200, 201):
            raise RuntimeError(f"PUT /collections/search: HTTP {code} {answer}")
        time.sleep(2)
        load(cluster.nodes[0].endpoint, 201)
        out["cluster_3_nodes_3_shards_rf3"] = run([m.endpoint for m in cluster.nodes], cluster.nodes)
    finally:
        cluster.stop()
    single_dir = tempfile.mkdtemp(prefix="single-", dir=base)
    single = Node(0, single_dir)
    single.args = []
    config = os.path.join(single_dir, "prism.toml")
    open(config, "w").close()  # every default: a plain single node
    try:
        single.start(args.prism_bin, config, single_dir, args.log)
        single.wait_ready()
        code, answer = call(single.endpoint, "PUT", "/collections/search",
                            {"fields": SCHEMA_FIELDS, "shards": 3}, timeout=30.0)
        if code not in (200, 201):
            raise RuntimeError(f"single PUT /collections/search: HTTP {code} {answer}")
        load(single.endpoint, 201)
        out["single_node_3_shards"] = run([single.endpoint], [single])
    finally:
        single.kill()
    c, o = out["cluster_3_nodes_3_shards_rf3"], out["single_node_3_shards"]
    out["ratio_p50_cluster_single"] = round(c["p50_ms"] / o["p50_ms"], 2)
    out["ratio_cpu_cluster_single"] = round(c["server_cpu_us_per_query"] / o["server_cpu_us_per_query"], 2)
    log(f"search: cluster p50 {c['p50_ms']} ms, single {o['p50_ms']} ms "
        f"(ratio {out['ratio_p50_cluster_single']})")
    return out


def proc_status(node: Node) -> dict:
    fields = {}
    with open(f"/proc/{node.proc.pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return {"rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "threads": int(fields["Threads"])}


def bench_idle(args, base: str) -> dict:
    """Idle cost of many groups through cluster mode: 3 nodes, --idle-collections collections
    of 3 shards at RF 3 (so 3 x collections groups, a copy of each on every node); once every
    group is led and quiet, each node's CPU over --idle-seconds, RSS and threads."""
    cluster = Cluster(3, 3, args, base)
    collections_n = args.idle_collections
    try:
        cluster.start()
        cpu_before_groups = {m.name: proc_status(m) for m in cluster.nodes}
        retried = 0
        for i in range(collections_n):
            for attempt in range(5):
                code, answer = call(cluster.nodes[i % 3].endpoint, "PUT", f"/collections/idle{i}",
                                    {"fields": SCHEMA_FIELDS, "shards": 3}, timeout=60.0)
                # An unknown outcome (503) is retried, as the answer says is safe; the retry
                # may then find the collection made (409).
                if code in (200, 201) or (code == 409 and attempt > 0):
                    break
                if code != 503:
                    raise RuntimeError(f"PUT /collections/idle{i}: HTTP {code} {answer}")
                retried += 1
                log(f"PUT /collections/idle{i}: HTTP {code} {answer}; retrying")
                time.sleep(1.0)
            else:
                raise RuntimeError(f"PUT /collections/idle{i}: HTTP {code} {answer}")
        groups = 3 * collections_n

        def led():
            rep = cluster.get("/cluster/shards", timeout=10.0)
            leaders = sum(1 for c in rep.get("copies", [])
                          if c.get("collection", "").startswith("idle") and c.get("role") == "leader")
            return True if leaders == groups else _Wait(f"{leaders} of {groups} groups led")
        t0 = time.monotonic()
        cluster._poll(f"{groups} groups led", led, 300.0)
        ready_s = round(time.monotonic() - t0, 1)
        time.sleep(args.idle_settle)  # leaders go quiet once idle and followers hold everything
        cpu0 = {m.name: m.cpu_seconds() for m in cluster.nodes}
        t = time.monotonic()
        time.sleep(args.idle_seconds)
        elapsed = time.monotonic() - t
        nodes = {}
        for m in cluster.nodes:
            cpu = m.cpu_seconds() - cpu0[m.name]
            st = proc_status(m)
            nodes[m.name] = {"cpu_percent": round(cpu / elapsed * 100, 2),
                             "cpu_us_per_group_per_s": round(cpu / elapsed / groups * 1e6, 1),
                             **st, "rss_before_groups_mib": cpu_before_groups[m.name]["rss_mib"],
                             "threads_before_groups": cpu_before_groups[m.name]["threads"]}
    finally:
        cluster.stop()
    out = {"groups": groups, "copies_per_node": groups, "all_led_after_s": ready_s,
           "creations_retried": retried,
           "measured_s": round(elapsed, 1), "nodes": nodes}
    log(f"idle: {groups} groups, per node " + ", ".join(
        f"{k}: {v['cpu_percent']}% CPU, {v['rss_mib']} MiB, {v['threads']} threads" for k, v in nodes.items()))
    return out


def default_bin() -> str:
    for profile in ("release", "debug"):
        path = os.path.join(REPO, "target", profile, "prism-server")
        if os.access(path, os.X_OK):
            return path
    return os.path.join(REPO, "target", "release", "prism-server")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prism-bin", default=default_bin(),
                    help="prism-server binary (default: target/release/prism-server if built, "
                         "else target/debug/prism-server)")
    ap.add_argument("--kills", type=int, default=5, help="leader kills in the failover test")
    ap.add_argument("--clients", type=int, default=16, help="client threads in the throughput test")
    ap.add_argument("--seconds", type=float, default=10, help="length of each throughput run")
    ap.add_argument("--only", choices=["failover", "throughput", "search", "idle"],
                    help="run one test only")
    ap.add_argument("--search-docs", type=int, default=20000, help="documents in the search test")
    ap.add_argument("--search-queries", type=int, default=1000, help="queries in the search test")
    ap.add_argument("--idle-collections", type=int, default=100,
                    help="collections of 3 shards in the idle test (3 groups each)")
    ap.add_argument("--idle-settle", type=float, default=10.0, help="pause before measuring idle, s")
    ap.add_argument("--idle-seconds", type=float, default=20.0, help="idle measurement, s")
    ap.add_argument("--put-timeout", type=float, default=0.5, help="per-request timeout while failing over, s")
    ap.add_argument("--settle", type=float, default=1.0, help="pause before each kill, s")
    ap.add_argument("--no-align", action="store_true",
                    help="kill shard 0's leader as found, without first moving it to the metadata leader's node")
    ap.add_argument("--connect-timeout-ms", type=int, default=1000, help="[cluster] connect_timeout_ms")
    ap.add_argument("--request-timeout-ms", type=int, default=3000, help="[cluster] request_timeout_ms")
    ap.add_argument("--netns", action="store_true",
                    help="each node in a network namespace of its own (prism-testnet; needs root)")
    ap.add_argument("--fault", choices=["kill", "partition"], default="kill",
                    help="what the failover test does to the leader (partition needs --netns)")
    ap.add_argument("--log", default="warn", help="the nodes' PRISM_LOG filter")
    ap.add_argument("--keep-dir", action="store_true", help="keep data dirs and node logs")
    args = ap.parse_args()
    if not os.access(args.prism_bin, os.X_OK):
        ap.error(f"no prism-server binary at {args.prism_bin}: cargo build --release -p prism-server "
                 "or pass --prism-bin PATH")
    args.prism_bin = os.path.abspath(args.prism_bin)
    args.testnet_bin = os.path.join(os.path.dirname(args.prism_bin), "prism-testnet")
    if args.fault == "partition" and not args.netns:
        ap.error("--fault partition needs --netns")
    if args.netns and not os.access(args.testnet_bin, os.X_OK):
        ap.error(f"--netns needs {args.testnet_bin}: cargo build --release -p prism-testnet")
    SETTINGS["keep_dir"] = args.keep_dir
    SETTINGS["name"] = "prism-bench"

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_sigterm)
    base = tempfile.mkdtemp(prefix="prism-cluster-bench-")  # honours TMPDIR
    TMPDIRS.append(base)

    version = subprocess.run([args.prism_bin, "--version"], capture_output=True, text=True).stdout
    profile = os.path.basename(os.path.dirname(args.prism_bin))
    out = {
        "prism_version": version.strip().split(" ")[-1],
        "prism_server": args.prism_bin,
        "build": profile if profile in ("debug", "release") else "unknown",
        "connect_timeout_ms": args.connect_timeout_ms,
        "request_timeout_ms": args.request_timeout_ms,
        "cores": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),  # other work skews every figure
    }
    failed = False
    if out["build"] != "release":
        log(f"warning: {out['build']} build: throughput and CPU figures are meaningless")
    try:
        if args.only in (None, "failover"):
            out["failover"] = bench_failover(args, base)
        if args.only in (None, "throughput"):
            rf1 = bench_throughput(args, base, 1, 1)
            rf3 = bench_throughput(args, base, 3, 3)
            rf1_3 = bench_throughput(args, base, 3, 1)
            out["throughput"] = {
                "rf1": rf1,
                "rf3": rf3,
                "rf1_3nodes": rf1_3,
                "ratio_rf3_rf1": round(rf3["puts_per_s"] / rf1["puts_per_s"], 2) if rf1["puts_per_s"] else None,
            }
        # Each of these is reported even when another failed.
        for name, bench in (("search", bench_search), ("idle", bench_idle)):
            if args.only in (None, name):
                try:
                    out[name] = bench(args, base)
                except Exception as e:  # noqa: BLE001 (reported in the output)
                    log(f"{name} failed: {e!r}")
                    out[name] = {"error": repr(e)}
                    failed = True
    finally:
        cleanup()
    print(json.dumps(out, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

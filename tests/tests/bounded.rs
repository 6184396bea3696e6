//! No request can take the node down (issue 18): searches that run away in time or memory,
//! aggregations that ask for everything, idle sockets by the thousand and huge bulks each get
//! a bounded answer, and the node keeps serving everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_tests::{wait_until, Server};
use serde_json::{json, Value};

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: the fields start after its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

const WORDS: [&str; 5] = ["alpha", "beta", "gamma", "delta", "omega"];

/// `n` words cycling through a vocabulary of `vocabulary`, so that every phrase of those
/// words matches somewhere with enough slop.
fn text(n: usize, vocabulary: usize, shift: usize) -> String {
    (0..n)
        .map(|i| WORDS[(i * 7 + shift) % vocabulary])
        .collect::<Vec<_>>()
        .join(" ")
}

/// A phrase of `terms` words with `slop`.
fn phrase(terms: usize, slop: u32) -> String {
    let words: Vec<&str> = (0..terms).map(|i| WORDS[(i * 2) % 3]).collect();
    format!("\"{}\"~{slop}", words.join(" "))
}

fn create(server: &Server, name: &str) {
    let (s, b) = server.put_json(
        &format!("/collections/{name}"),
        &json!({"fields": {"title": {"type": "text"}, "tag": {"type": "keyword"},
            "year": {"type": "i64"}, "when": {"type": "date"},
            "e": {"type": "vector", "dimension": 3, "distance": "dot"}}}),
    );
    assert_eq!(s, 201, "{b}");
}

/// A collection whose documents make a query of many sloppy phrases cost about a
/// millisecond each: the runaway search of these tests.
fn load_runaway(server: &Server, name: &str, docs: usize) {
    create(server, name);
    let documents: Vec<Value> = (0..docs)
        .map(|i| json!({"id": format!("r{i}"), "fields": {"title": text(400, 3, i), "year": i}}))
        .collect();
    for chunk in documents.chunks(500) {
        let (s, b) = server.post_json(
            &format!("/collections/{name}/documents?refresh=true"),
            &json!({ "documents": chunk }),
        );
        assert_eq!(s, 201, "{b}");
    }
}

/// Forty 12-term phrases with slop 60, OR'd: each document costs milliseconds.
fn runaway_query() -> String {
    (0..40)
        .map(|i| phrase(12 + i % 3, 60))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Acceptance 1: every hostile search answers within its deadline with a 4xx or a 200 that
/// says `timed_out`, under a 2 GiB address-space cap; the server stays up and under the cap.
#[test]
fn hostile_searches_answer_within_their_deadline_under_an_address_space_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cap: u64 = 2 << 30;
    let server = Server::start_with_address_space(
        &dir.path().join("data"),
        &[("PRISM_SEARCH_DEFAULT_TIMEOUT_MS", "2000")],
        cap,
    );
    create(&server, "h");
    let (s, b) = server.post_json(
        "/collections/h/documents?refresh=true",
        &json!({"documents": [
            {"id": "long", "fields": {"title": text(90, 3, 0), "tag": "x", "year": 2020, "e": [1, 0, 0]}},
            {"id": "b", "fields": {"title": "beta gamma", "tag": "y", "year": -7, "e": [0, 1, 0]}}
        ]}),
    );
    assert_eq!(s, 201, "{b}");
    load_runaway(&server, "slow", 600);

    let long_phrase = format!(
        "\"{}\"~100",
        (0..3300)
            .map(|i| WORDS[i % 3])
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert!(long_phrase.len() > 16 << 10);
    let cases: Vec<(&str, &str, Value, u16)> = vec![
        (
            "a 20-term phrase with slop 20 (gigabytes before the tantivy patch)",
            "h",
            json!({"query": phrase(20, 20)}),
            200,
        ),
        (
            "a 16-term phrase with slop 20",
            "h",
            json!({"query": phrase(16, 20)}),
            200,
        ),
        (
            "a 16 KB phrase with slop 100",
            "h",
            json!({"query": long_phrase}),
            200,
        ),
        (
            "a phrase with slop 256",
            "h",
            json!({"query": phrase(3, 256)}),
            400,
        ),
        (
            "a runaway search, 300 ms timeout",
            "slow",
            json!({"query": runaway_query(), "timeout": "300ms"}),
            200,
        ),
        (
            "a runaway search with aggregations",
            "slow",
            json!({"query": runaway_query(), "timeout": 300, "aggregations": {"y": {"stats": {"field": "year"}}}}),
            200,
        ),
        (
            "top_hits of size 1e9",
            "h",
            json!({"limit": 0, "aggregations": {"t": {"top_hits": {"size": 1_000_000_000u64, "sort": [{"year": "desc"}]}}}}),
            400,
        ),
        (
            "top_hits of size 1e9 under terms",
            "h",
            json!({"limit": 0, "aggregations": {"t": {"terms": {"field": "tag"}, "aggs": {"h": {"top_hits": {"size": 1_000_000_000u64}}}}}}),
            400,
        ),
        (
            "terms of size 1e9",
            "h",
            json!({"limit": 0, "aggregations": {"t": {"terms": {"field": "tag", "size": 1_000_000_000u64}}}}),
            400,
        ),
        (
            "a composite source with interval 0",
            "h",
            json!({"limit": 0, "aggregations": {"c": {"composite": {"sources": [{"y": {"histogram": {"field": "year", "interval": 0}}}]}}}}),
            400,
        ),
        (
            "a histogram whose extended bounds make 1e12 buckets",
            "h",
            json!({"limit": 0, "aggregations": {"h": {"histogram": {"field": "year", "interval": 1, "extended_bounds": {"min": 0, "max": 1e12}}}}}),
            400,
        ),
        (
            "a date histogram whose extended bounds make 1e9 buckets",
            "h",
            json!({"limit": 0, "aggregations": {"h": {"date_histogram": {"field": "when", "fixed_interval": "1ms", "extended_bounds": {"min": 0, "max": 1e9}}}}}),
            400,
        ),
        (
            "a thousand percentiles",
            "h",
            json!({"limit": 0, "aggregations": {"p": {"percentiles": {"field": "year", "percents": vec![50; 1000]}}}}),
            400,
        ),
        (
            "highlights of 1e9 characters",
            "h",
            json!({"query": "beta", "highlight": {"fields": ["title"], "max_chars": 1_000_000_000u64}}),
            400,
        ),
        (
            "a timeout over the maximum",
            "h",
            json!({"query": "beta", "timeout": "10m"}),
            400,
        ),
        (
            "a timeout that is not a duration",
            "h",
            json!({"query": "beta", "timeout": "soon"}),
            400,
        ),
    ];
    for (name, collection, body, status) in cases {
        let timeout = body["timeout"].as_u64().unwrap_or(2000);
        let started = Instant::now();
        let (got, answer) = server.post_json(&format!("/collections/{collection}/search"), &body);
        let took = started.elapsed();
        assert_eq!(got, status, "{name}: {answer}");
        if status == 400 {
            assert_eq!(answer["error"]["code"], "invalid_query", "{name}: {answer}");
        }
        if name.starts_with("a runaway") {
            assert_eq!(answer["timed_out"], true, "{name}: {answer}");
        }
        assert!(
            took < Duration::from_millis(timeout + 1500),
            "{name}: answered after {took:?}"
        );
        eprintln!("{name}: {got} in {took:?}");
        assert_eq!(
            server.get("/health").0,
            200,
            "the server is down after {name}"
        );
    }
    // The phrase that blew up finds its document.
    let (_, answer) = server.post_json("/collections/h/search", &json!({"query": phrase(20, 20)}));
    assert_eq!(answer["results"][0]["id"], "long", "{answer}");
    let rss = server.peak_rss_bytes().unwrap();
    eprintln!(
        "peak RSS {} MiB under a {} MiB address-space cap",
        rss >> 20,
        cap >> 20
    );
    assert!(rss < cap);
}

/// Acceptance 2: with four times as many runaway searches in flight as there are cores,
/// `/health`, a write and a search of another collection each answer in under 100 ms at
/// p99; searches whose clients left stop; SIGTERM exits within its grace period.
#[test]
fn runaway_searches_leave_the_rest_of_the_node_responsive() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &[]);
    load_runaway(&server, "slow", 600);
    create(&server, "fast");
    let (s, b) = server.post_json(
        "/collections/fast/documents?refresh=true",
        &json!({"documents": [{"id": "a", "fields": {"title": "alpha beta", "year": 1}}]}),
    );
    assert_eq!(s, 201, "{b}");
    let pid = server.pid().unwrap();
    // The test before this one may leave gigabytes of dirty pages; their writeback would slow
    // this node's fsyncs, which is the disk's doing, not the runaway searches'.
    let synced = std::process::Command::new("sync").status();
    assert!(matches!(synced, Ok(s) if s.success()), "sync: {synced:?}");

    // Runaway searches with a long deadline, kept in flight by four clients per core.
    let stop = Arc::new(AtomicBool::new(false));
    let runaway: Vec<_> = (0..4 * cores())
        .map(|_| {
            let url = server.url("/collections/slow/search");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let body = json!({"query": runaway_query(), "timeout": "5s"});
                while !stop.load(Ordering::Relaxed) {
                    let _ = client.post(&url).json(&body).send();
                }
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        "the search threads to be busy",
        || (cpu_seconds(pid) > 1.0).then_some(()),
    );

    let p99 = |mut samples: Vec<Duration>| {
        samples.sort();
        samples[(samples.len() * 99).div_ceil(100) - 1]
    };
    let (mut health, mut writes, mut searches) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..100 {
        let t = Instant::now();
        assert_eq!(server.get("/health").0, 200);
        health.push(t.elapsed());
        let t = Instant::now();
        let (s, b) = server.post_json(
            "/collections/fast/documents",
            &json!({"documents": [{"id": format!("w{i}"), "fields": {"title": "written", "year": i}}]}),
        );
        assert_eq!(s, 201, "{b}");
        writes.push(t.elapsed());
        let t = Instant::now();
        let (s, b) = server.post_json("/collections/fast/search", &json!({"query": "alpha"}));
        assert_eq!(s, 200, "{b}");
        searches.push(t.elapsed());
    }
    let (health, writes, searches) = (p99(health), p99(writes), p99(searches));
    eprintln!("p99 under {} runaway searches: health {health:?}, write {writes:?}, search of another collection {searches:?}", 4 * cores());
    for (what, p) in [("health", health), ("write", writes), ("search", searches)] {
        assert!(p < Duration::from_millis(100), "{what} p99 {p:?}");
    }
    stop.store(true, Ordering::Relaxed);
    // Each runaway client ends after its search in flight, which its deadline ends.
    for t in runaway {
        t.join().unwrap();
    }
    let idle = wait_until(
        Duration::from_secs(2),
        "the CPU to fall to idle after the deadlines",
        || {
            let before = cpu_seconds(pid);
            std::thread::sleep(Duration::from_millis(300));
            let used = cpu_seconds(pid) - before;
            (used < 0.05).then_some(used)
        },
    );
    eprintln!("CPU once the runaway searches reached their deadline: {idle:.2} s over 0.3 s");

    // Clients that leave long before their searches' deadline: the searches are cancelled,
    // and the CPU falls to idle within a second.
    let left: Vec<_> = (0..4 * cores())
        .map(|_| {
            let url = server.url("/collections/slow/search");
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_millis(300))
                    .build()
                    .unwrap();
                let body = json!({"query": runaway_query(), "timeout": "30s"});
                assert!(
                    client.post(&url).json(&body).send().is_err(),
                    "the search answered"
                );
            })
        })
        .collect();
    for t in left {
        t.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_seconds(pid) - before;
    eprintln!("CPU in the second after the clients left (their deadline 30 s away): {used:.2} s");
    assert!(
        used < 0.1,
        "the searches of clients that left went on: {used:.2} s of CPU"
    );

    // SIGTERM with runaway searches in flight exits within the grace period.
    let client = reqwest::blocking::Client::new();
    let inflight: Vec<_> = (0..4 * cores())
        .map(|_| {
            let request = client
                .post(server.url("/collections/slow/search"))
                .json(&json!({"query": runaway_query(), "timeout": "60s"}));
            std::thread::spawn(move || {
                let _ = request.send();
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "searches in flight", || {
        let before = cpu_seconds(pid);
        std::thread::sleep(Duration::from_millis(200));
        (cpu_seconds(pid) - before > 0.1).then_some(())
    });
    let started = Instant::now();
    server.stop();
    let took = started.elapsed();
    eprintln!(
        "SIGTERM with {} searches in flight: exited in {took:?}",
        4 * cores()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    for t in inflight {
        let _ = t.join();
    }
}

/// Raises this process's open-file limit to `n` (soft), within the hard limit.
fn raise_open_files(n: u64) {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    rlimit::setrlimit(rlimit::Resource::NOFILE, n.min(hard), hard).unwrap();
}

/// Acceptance 3: a client holding (RLIMIT_NOFILE - 100) idle connections does not stop a
/// new client from being served within 2 s.
#[test]
fn idle_connections_never_lock_out_a_new_client() {
    let open_files: u64 = 4096;
    raise_open_files(open_files + 512);
    let dir = tempfile::tempdir().unwrap();
    // The server's own open-file limit, set as an operator would (ulimit -n).
    let server = Server::start_with_prlimits(
        &dir.path().join("data"),
        &[("PRISM_IDLE_TIMEOUT_MS", "60000")],
        &[&format!("--nofile={open_files}:{open_files}")],
    );
    let held: Vec<TcpStream> = (0..open_files - 100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", server.port)).ok())
        .collect();
    eprintln!("holding {} idle connections", held.len());
    assert!(held.len() as u64 >= open_files - 200);
    for attempt in 0..3 {
        let started = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        let took = started.elapsed();
        eprintln!("new client #{attempt}: served in {took:?}");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    drop(held);
}

/// Acceptance 4: four concurrent 88 MB NDJSON bulks against a server capped at 3 GB are each
/// served or refused (429 or 413); the server stays up, and every acknowledged document is
/// there after a SIGKILL and a restart.
#[test]
fn concurrent_huge_bulks_are_served_or_refused_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with_address_space(&dir.path().join("data"), &[], 3 << 30);
    create(&server, "bulk");
    let bulk = |prefix: &str, docs: usize| -> Vec<u8> {
        let mut body = Vec::with_capacity(docs * 90);
        for i in 0..docs {
            writeln!(
                body,
                "{{\"id\":\"{prefix}-{i:07}\",\"fields\":{{\"title\":\"document number {i} of a bulk\",\"year\":{i}}}}}"
            )
            .unwrap();
        }
        body
    };
    let send_all = |bodies: Vec<(String, Vec<u8>)>| -> Vec<(String, u16, Value)> {
        let threads: Vec<_> = bodies
            .into_iter()
            .map(|(prefix, body)| {
                let url = server.url("/collections/bulk/documents/bulk");
                std::thread::spawn(move || {
                    let response = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(600))
                        .build()
                        .unwrap()
                        .post(url)
                        .header("content-type", "application/x-ndjson")
                        .body(body)
                        .send()
                        .unwrap();
                    let status = response.status().as_u16();
                    let answer: Value = response.json().unwrap_or(Value::Null);
                    (prefix, status, answer)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    let huge: Vec<(String, Vec<u8>)> = (0..4)
        .map(|n| (format!("huge{n}"), bulk(&format!("huge{n}"), 1_000_000)))
        .collect();
    assert!(huge[0].1.len() > 85 << 20, "{}", huge[0].1.len());
    let mut acknowledged = Vec::new();
    for (prefix, status, answer) in send_all(huge) {
        eprintln!("88 MB bulk {prefix}: {status} {}", answer["error"]["code"]);
        assert!(
            matches!(status, 200 | 413 | 429),
            "{prefix}: {status} {answer}"
        );
        if status == 200 {
            acknowledged.push((prefix, 1_000_000));
        }
    }
    assert_eq!(server.get("/health").0, 200);
    // Bulks that fit are served side by side.
    let fitting: Vec<(String, Vec<u8>)> = (0..4)
        .map(|n| (format!("fit{n}"), bulk(&format!("fit{n}"), 50_000)))
        .collect();
    for (prefix, status, answer) in send_all(fitting) {
        eprintln!("4 MB bulk {prefix}: {status}");
        assert!(matches!(status, 200 | 429), "{prefix}: {status} {answer}");
        if status == 200 {
            assert_eq!(answer["successful_docs"], 50_000, "{answer}");
            acknowledged.push((prefix, 50_000));
        }
    }
    assert!(
        acknowledged.iter().any(|(p, _)| p.starts_with("fit")),
        "no bulk was served"
    );
    eprintln!(
        "peak RSS {} MiB under a 3 GiB cap",
        server.peak_rss_bytes().unwrap() >> 20
    );
    server.kill();
    server.start_again();
    for (prefix, docs) in acknowledged {
        for i in [0, docs / 2, docs - 1] {
            let (s, b) = server.get(&format!("/collections/bulk/documents/{prefix}-{i:07}"));
            assert_eq!(s, 200, "{prefix}-{i}: {b}");
        }
    }
}

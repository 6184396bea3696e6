//! Harness for multi-process tests: build and locate the real binaries, start a server on a
//! free loopback port with its own data directory, kill it, restart it, and poll conditions
//! with deadlines instead of sleeping.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod cluster;
pub mod dns;
pub mod nave;
pub use prism_testnet as netns;
pub mod raft_cluster;
pub mod ranking;

/// The directory holding this build's binaries (`target/debug` or `target/release`): the
/// executable's own directory for a binary, its parent for a test in `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable dir");
    if dir.ends_with("deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Builds `prism-server`, `prism` and `prism-bench` once per test process (a no-op when up to date) and
/// returns the path of `name`.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("PRISM_SKIP_BUILD").is_some() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // Not the variables cargo sets for this test binary: build scripts that track one
        // (ring's tracks CARGO_MANIFEST_DIR) would otherwise be rebuilt here, and again by
        // the next outer `cargo`, on every run.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_")
                || matches!(
                    &*key,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                )
            {
                cmd.env_remove(&*key);
            }
        }
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "prism-server",
            "-p",
            "prism-cli",
            "-p",
            "prism-bench",
            "--bins",
        ]);
        if profile_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing; run `cargo build --bins`",
        path.display()
    );
    path
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `check` until it returns `Some` or the deadline passes.
/// How long a server took to answer `/health`, and to be ready (every collection open).
#[derive(Debug, Clone, Copy)]
pub struct StartTimes {
    pub listening: Duration,
    pub ready: Duration,
}

pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `prism-server` process.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    /// The address it listens on and is reached at (127.0.0.1 unless placed elsewhere).
    pub host: String,
    /// The network namespace it runs in, if any.
    netns: Option<String>,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    pub client: reqwest::blocking::Client,
    /// When the running process first answered `/health`.
    listening_after: Option<Instant>,
    /// `prlimit` options the server runs under (`--as=BYTES`, `--nofile=N:N`).
    prlimits: Vec<String>,
}

impl Server {
    /// Starts a server on a fresh port over `data_dir`, with extra environment variables.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_with_args(data_dir, env, &[])
    }

    /// As [`Server::start`], with extra command-line flags.
    pub fn start_with_args(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut server = Self::unstarted(data_dir, env, args);
        server.spawn();
        server
    }

    /// As [`Server::start_with_args`], listening on `place`'s address and port `port`, in its
    /// network namespace if it has one.
    pub fn start_placed(
        data_dir: &Path,
        env: &[(&str, &str)],
        args: &[&str],
        place: &netns::NodePlace,
        port: u16,
    ) -> Server {
        let mut server = Self::unstarted(data_dir, env, args);
        server.host = place.ip.to_string();
        server.netns = place.netns.clone();
        server.port = port;
        server.spawn();
        server
    }

    /// As [`Server::start`], under an address-space limit (`ulimit -v`, through `prlimit`):
    /// an allocation past it fails, and Rust aborts the process.
    pub fn start_with_address_space(data_dir: &Path, env: &[(&str, &str)], bytes: u64) -> Server {
        Self::start_with_prlimits(data_dir, env, &[&format!("--as={bytes}")])
    }

    /// As [`Server::start`], under `prlimit` resource limits such as `--nofile=4096:4096`.
    pub fn start_with_prlimits(data_dir: &Path, env: &[(&str, &str)], limits: &[&str]) -> Server {
        let mut server = Self::unstarted(data_dir, env, &[]);
        server.prlimits = limits.iter().map(|l| l.to_string()).collect();
        server.spawn();
        server
    }

    fn unstarted(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Server {
        Server {
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            listening_after: None,
            port: free_port(),
            host: "127.0.0.1".into(),
            netns: None,
            data_dir: data_dir.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            // No proxy: the nodes may be on addresses of their own (198.18.x.x), which a
            // proxy from the environment would take.
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .no_proxy()
                .build()
                .unwrap(),
            prlimits: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        // PRISM_TEST_WRAPPER runs the server under another program, e.g. "valgrind -q".
        let mut wrapper = std::env::var("PRISM_TEST_WRAPPER").unwrap_or_default();
        if !self.prlimits.is_empty() {
            wrapper = format!("prlimit {} -- {wrapper}", self.prlimits.join(" "));
        }
        if let Some(ns) = &self.netns {
            // `ip netns exec` execs the program: the child's pid stays the server's.
            wrapper = format!("ip netns exec {ns} {wrapper}");
        }
        let mut words = wrapper.split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut cmd = Command::new(program);
                cmd.args(words).arg(binary("prism-server"));
                cmd
            }
            None => Command::new(binary("prism-server")),
        };
        cmd.env("PRISM_PORT", self.port.to_string())
            .env("PRISM_HOST", &self.host)
            .env("PRISM_DATA_DIR", &self.data_dir)
            // PRISM_TEST_LOG sets the servers' log filter, e.g. "warn,prism_server::cluster=debug".
            .env(
                "PRISM_LOG",
                std::env::var("PRISM_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .current_dir(self.data_dir.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(&self.args);
        cmd
    }

    fn spawn(&mut self) {
        self.spawn_timed();
    }

    /// Starts the server and waits until it is ready (`/health` no longer says
    /// `recovering`); returns how long its port took to answer `/health` at all.
    fn spawn_timed(&mut self) -> Duration {
        let started = Instant::now();
        self.spawn_unready();
        self.wait_ready(|_| {});
        self.listening_after
            .map_or(Duration::ZERO, |at| at - started)
    }

    /// Starts the server process without waiting for it.
    fn spawn_unready(&mut self) {
        let child = self.command().spawn().expect("start prism-server");
        self.child = Some(child);
        self.listening_after = None;
    }

    /// Waits until the server answers `/health` with a status other than `recovering`,
    /// handing every answer it gets on the way to `seen`.
    pub fn wait_ready(&mut self, mut seen: impl FnMut(&Value)) {
        let url = self.url("/health");
        let client = self.client.clone();
        let child = self.child.as_mut().expect("started");
        let mut listening = self.listening_after;
        wait_until(
            Duration::from_secs(120),
            "the server to answer /health, recovered",
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("prism-server exited during start-up: {status}");
                }
                // 503 while recovering, with the progress in the body.
                let health: Value = client
                    .get(&url)
                    .send()
                    .ok()
                    .filter(|r| r.status().is_success() || r.status().as_u16() == 503)?
                    .json()
                    .ok()?;
                listening.get_or_insert_with(Instant::now);
                seen(&health);
                (health["status"] != "recovering").then_some(())
            },
        );
        self.listening_after = listening;
    }

    /// Restarts a stopped server without waiting for it to be ready: see
    /// [`Server::wait_ready`].
    pub fn start_again_unready(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.spawn_unready();
    }

    /// Runs the server binary over this data directory in the foreground and returns its
    /// exit status and stderr (for start-up failures).
    pub fn run_second_instance(&self) -> (std::process::ExitStatus, String) {
        let mut cmd = self.command();
        cmd.env("PRISM_PORT", free_port().to_string())
            .stderr(Stdio::piped());
        let out = cmd.output().expect("run prism-server");
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    }

    /// Process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Peak resident memory of the running server (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{}", self.host, self.port, path)
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: no shutdown hooks, no final checkpoint.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stays, answering nothing, until [`Server::resume`].
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status();
        }
    }

    /// SIGCONT after [`Server::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("prism-server did not stop within 30 s of SIGTERM");
        }
    }

    /// Sets an environment variable for the server's next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts a stopped or killed server again and returns how long it took to answer.
    pub fn start_again(&mut self) -> Duration {
        self.start_again_timed().ready
    }

    /// Restarts a stopped server and times the two stages of its start.
    pub fn start_again_timed(&mut self) -> StartTimes {
        assert!(self.child.is_none(), "the server is still running");
        let started = Instant::now();
        let listening = self.spawn_timed();
        StartTimes {
            listening,
            ready: started.elapsed(),
        }
    }

    /// The value of one Prometheus sample on `/metrics`, e.g.
    /// `prism_cluster_stats_cache_total{result="hit"}` (0 when absent).
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        into_parts(self.client.get(self.url(path)).send())
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        into_parts(self.client.delete(self.url(path)).send())
    }

    pub fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send_raw("PUT", path, body.to_string().into_bytes())
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send_raw("POST", path, body.to_string().into_bytes())
    }

    /// [`Server::send_raw`], with a transport failure as an error instead of a panic.
    pub fn try_send_raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> reqwest::Result<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = self
            .client
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()?;
        Ok(into_parts(Ok(response)))
    }

    pub fn send_raw(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        into_parts(
            self.client
                .request(method, self.url(path))
                .header("content-type", "application/json")
                .body(body)
                .send(),
        )
    }
}

fn into_parts(response: reqwest::Result<reqwest::blocking::Response>) -> (u16, Value) {
    let response = response.expect("request reached the server");
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Asserts that a vector read back is the one written, each f32 component equal or its
/// neighbour: a cosine field keeps unit vectors and their norms, and multiplies back.
pub fn assert_vector_as_written(got: &[f32], written: &[f32]) {
    assert_eq!(got.len(), written.len(), "{got:?} is not {written:?}");
    for (a, b) in got.iter().zip(written) {
        let ulps = (i64::from(a.to_bits() as i32) - i64::from(b.to_bits() as i32)).abs();
        assert!(ulps <= 1, "{got:?} is not {written:?}");
    }
}

/// The OpenAPI document a server serves (`GET /openapi.json`), to hold its answers to.
pub struct ApiDocument {
    document: Value,
}

impl ApiDocument {
    pub fn of(server: &Server) -> ApiDocument {
        let (status, document) = server.get("/openapi.json");
        assert_eq!(status, 200, "{document}");
        assert_eq!(document["openapi"], "3.1.0");
        ApiDocument { document }
    }

    pub fn operations(&self) -> Vec<(String, String)> {
        let mut all = Vec::new();
        for (route, item) in self.document["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                all.push((method.to_uppercase(), route.clone()));
            }
        }
        all
    }

    /// Asserts that the document lists `status` for `method route` (`/collections/{name}`, as
    /// the document spells it), and that a JSON `body` matches the schema it gives.
    pub fn assert_answer(&self, method: &str, route: &str, status: u16, body: &Value) {
        let what = format!("{method} {route} answered {status} {body}");
        let operation = &self.document["paths"][route][method.to_lowercase()];
        assert!(
            operation.is_object(),
            "{what}: the document has no such operation"
        );
        let answer = &operation["responses"][status.to_string()];
        assert!(
            answer.is_object(),
            "{what}: the document does not list {status}"
        );
        let Some(schema) = answer["content"]["application/json"].get("schema") else {
            return;
        };
        let mut schema = schema.clone();
        schema["components"] = self.document["components"].clone();
        let validator = jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("{what}: the document's schema does not load: {e}"));
        let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{what}: breaks the document: {errors:?}");
    }
}

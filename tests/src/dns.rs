//! A tiny authoritative DNS server on 127.0.0.1 (UDP, ephemeral port) for discovery tests:
//! SRV and A/AAAA records that a test sets and replaces while it runs, and answer modes that
//! simulate an outage (SERVFAIL, or no answer at all). Unknown names get NXDOMAIN.
//!
//! It runs on its own thread with a blocking socket, so both `#[tokio::test]`s and blocking
//! process tests can use it; dropping the [`DnsServer`] stops the thread.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// How the server answers every query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AnswerMode {
    /// From the records.
    #[default]
    Normal,
    /// SERVFAIL to every query.
    ServFail,
    /// Every query dropped unanswered.
    Silent,
}

/// What the server answers.
#[derive(Default)]
struct Zone {
    /// SRV name → (target, port).
    srv: HashMap<String, Vec<(String, u16)>>,
    /// Host name → addresses (A or AAAA by family).
    ips: HashMap<String, Vec<IpAddr>>,
    mode: AnswerMode,
}

/// Records are served with a long TTL: a client under test must not cache them.
const TTL: u32 = 3600;

/// A running DNS server; see the module documentation.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Lower-case, without the trailing dot: the key of the record maps.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn answer(zone: &Zone, request: &Message) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    let Some(query) = request.queries().first() else {
        response.set_response_code(ResponseCode::FormErr);
        return response;
    };
    response.add_query(query.clone());
    if zone.mode == AnswerMode::ServFail {
        response.set_response_code(ResponseCode::ServFail);
        return response;
    }
    let name = key(&query.name().to_ascii());
    let mut known = false;
    if let Some(targets) = zone.srv.get(&name) {
        known = true;
        if query.query_type() == RecordType::SRV {
            for (target, port) in targets {
                let target = Name::from_str(&format!("{}.", key(target)))
                    .unwrap_or_else(|e| panic!("SRV target {target:?}: {e}"));
                response.add_answer(Record::from_rdata(
                    query.name().clone(),
                    TTL,
                    RData::SRV(SRV::new(10, 10, *port, target)),
                ));
            }
        }
    }
    if let Some(ips) = zone.ips.get(&name) {
        known = true;
        for ip in ips {
            let rdata = match (ip, query.query_type()) {
                (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            response.add_answer(Record::from_rdata(query.name().clone(), TTL, rdata));
        }
    }
    if !known {
        response.set_response_code(ResponseCode::NXDomain);
    }
    response
}

fn serve(
    socket: UdpSocket,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        // A read timeout, so that the stop flag is seen.
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        queries.fetch_add(1, Ordering::Relaxed);
        let reply = {
            let zone = zone.lock().unwrap_or_else(|e| e.into_inner());
            if zone.mode == AnswerMode::Silent {
                continue;
            }
            answer(&zone, &request)
        };
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, from);
        }
    }
}

impl DnsServer {
    /// Binds 127.0.0.1 on an ephemeral UDP port and starts answering, with no records.
    pub fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the DNS server's UDP socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set the DNS socket's read timeout");
        let addr = socket.local_addr().expect("DNS server address");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let queries = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("test-dns-server".into())
            .spawn({
                let (zone, queries, stop) = (zone.clone(), queries.clone(), stop.clone());
                move || serve(socket, zone, queries, stop)
            })
            .expect("start the DNS server thread");
        DnsServer {
            addr,
            zone,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// The server's address, for `dns_server = "<addr>"`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn zone(&self) -> MutexGuard<'_, Zone> {
        self.zone.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (replaces) the SRV records of `name`: (target host name, port) each. An empty
    /// list leaves the name existing without records (an empty NOERROR answer).
    pub fn set_srv(&self, name: &str, targets: &[(&str, u16)]) {
        self.zone().srv.insert(
            key(name),
            targets.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        );
    }

    /// Sets (replaces) the A and AAAA records of `name`, by each address's family.
    pub fn set_ips(&self, name: &str, ips: &[&str]) {
        self.zone().ips.insert(
            key(name),
            ips.iter()
                .map(|ip| ip.parse().unwrap_or_else(|e| panic!("address {ip:?}: {e}")))
                .collect(),
        );
    }

    /// Removes every record of `name`: it gets NXDOMAIN.
    pub fn remove(&self, name: &str) {
        let mut zone = self.zone();
        zone.srv.remove(&key(name));
        zone.ips.remove(&key(name));
    }

    /// Removes every record: every name gets NXDOMAIN.
    pub fn clear(&self) {
        let mut zone = self.zone();
        zone.srv.clear();
        zone.ips.clear();
    }

    /// How every query is answered from now on.
    pub fn set_mode(&self, mode: AnswerMode) {
        self.zone().mode = mode;
    }

    /// Queries received so far (answered or not).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

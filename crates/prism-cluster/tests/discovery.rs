//! DNS discovery against an in-process DNS responder on 127.0.0.1.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use parking_lot::Mutex;
use prism_cluster::config::{ClusterConfig, DiscoveryBackend, FederationConfig};
use prism_cluster::discovery::{from_config, ClusterEvent, NodeDiscovery, NodeInfo};
use tokio::net::UdpSocket;

/// What the responder answers.
#[derive(Default)]
struct Zone {
    /// SRV name → (target, port).
    srv: HashMap<String, Vec<(String, u16)>>,
    /// Host name → addresses (A or AAAA by family).
    ips: HashMap<String, Vec<IpAddr>>,
    /// SERVFAIL to every query.
    servfail: bool,
    /// Drop every query unanswered.
    silent: bool,
}

/// A tiny authoritative DNS server over UDP; unknown names get NXDOMAIN.
struct Responder {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
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
    if zone.servfail {
        response.set_response_code(ResponseCode::ServFail);
        return response;
    }
    let name = key(query.name());
    // A long TTL: the discovery must not cache it.
    let ttl = 3600;
    let mut known = false;
    if let Some(targets) = zone.srv.get(&name) {
        known = true;
        if query.query_type() == RecordType::SRV {
            for (target, port) in targets {
                let target = Name::from_str(&format!("{target}.")).unwrap();
                let srv = SRV::new(10, 10, *port, target);
                response.add_answer(Record::from_rdata(
                    query.name().clone(),
                    ttl,
                    RData::SRV(srv),
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
            response.add_answer(Record::from_rdata(query.name().clone(), ttl, rdata));
        }
    }
    if !known {
        response.set_response_code(ResponseCode::NXDomain);
    }
    response
}

impl Responder {
    async fn start() -> Responder {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let shared = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(request) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let reply = {
                    let zone = shared.lock();
                    if zone.silent {
                        continue;
                    }
                    answer(&zone, &request)
                };
                let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
            }
        });
        Responder { addr, zone, task }
    }

    fn set_srv(&self, name: &str, targets: &[(&str, u16)]) {
        self.zone.lock().srv.insert(
            name.into(),
            targets.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        );
    }

    fn set_ips(&self, name: &str, ips: &[&str]) {
        self.zone.lock().ips.insert(
            name.into(),
            ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        );
    }
}

fn configs(
    dns_name: &str,
    server: SocketAddr,
    refresh_secs: u64,
) -> (ClusterConfig, FederationConfig) {
    let cluster = ClusterConfig {
        bind_addr: "127.0.0.1:9500".into(),
        advertise_addr: Some("prism-node1:9555".into()),
        ..Default::default()
    };
    let mut federation = FederationConfig::default();
    federation.discovery.backend = DiscoveryBackend::Dns;
    federation.discovery.dns_name = Some(dns_name.into());
    federation.discovery.dns_server = Some(server.to_string());
    federation.discovery.dns_refresh_interval_secs = refresh_secs;
    (cluster, federation)
}

fn nodes(addresses: &[&str]) -> Vec<NodeInfo> {
    addresses
        .iter()
        .map(|a| NodeInfo {
            address: a.to_string(),
            zone: None,
        })
        .collect()
}

fn joined(a: &str) -> ClusterEvent {
    ClusterEvent::NodeJoined(nodes(&[a]).remove(0))
}

async fn next_events(stream: &mut BoxStream<'static, ClusterEvent>, n: usize) -> Vec<ClusterEvent> {
    let mut out = Vec::new();
    for _ in 0..n {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("no event within 10 s; got so far {out:?}"))
            .expect("the watch stream ended");
        out.push(event);
    }
    out
}

/// Asserts the stream yields nothing for `wait`.
async fn quiet_for(stream: &mut BoxStream<'static, ClusterEvent>, wait: Duration) {
    if let Ok(event) = tokio::time::timeout(wait, stream.next()).await {
        panic!("unexpected event {event:?}");
    }
}

const SRV_NAME: &str = "_prism._udp.prism.test";
const HOST_NAME: &str = "prism-headless.prism.test";

#[tokio::test]
async fn srv_gives_hostnames_and_ip_records_give_addresses_with_the_right_port() {
    let dns = Responder::start().await;
    dns.set_srv(
        SRV_NAME,
        &[("node-b.prism.test", 7001), ("node-a.prism.test", 7000)],
    );
    dns.set_ips(HOST_NAME, &["10.0.0.2", "10.0.0.1", "fd00::1"]);

    let (cluster, federation) = configs(SRV_NAME, dns.addr, 30);
    let srv = from_config(&cluster, &federation).unwrap();
    let found = tokio::time::timeout(Duration::from_secs(10), srv.get_nodes())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        found,
        nodes(&["node-a.prism.test:7000", "node-b.prism.test:7001"])
    );

    // The port of advertise_addr.
    let (cluster, federation) = configs(HOST_NAME, dns.addr, 30);
    let host = from_config(&cluster, &federation).unwrap();
    assert_eq!(
        host.get_nodes().await.unwrap(),
        nodes(&["10.0.0.1:9555", "10.0.0.2:9555", "[fd00::1]:9555"])
    );

    // The port written in dns_name wins.
    let (cluster, federation) = configs(&format!("{HOST_NAME}:7100"), dns.addr, 30);
    let host = from_config(&cluster, &federation).unwrap();
    assert_eq!(
        host.get_nodes().await.unwrap(),
        nodes(&["10.0.0.1:7100", "10.0.0.2:7100", "[fd00::1]:7100"])
    );

    // No advertise_addr: the port of bind_addr; neither has one: 9080.
    let (mut cluster, federation) = configs(HOST_NAME, dns.addr, 30);
    cluster.advertise_addr = None;
    let host = from_config(&cluster, &federation).unwrap();
    assert_eq!(host.get_nodes().await.unwrap()[0].address, "10.0.0.1:9500");
    cluster.bind_addr = "prism-node1".into();
    let host = from_config(&cluster, &federation).unwrap();
    assert_eq!(host.get_nodes().await.unwrap()[0].address, "10.0.0.1:9080");

    // Only A records, and only AAAA records.
    dns.set_ips(HOST_NAME, &["10.0.0.3"]);
    assert_eq!(host.get_nodes().await.unwrap(), nodes(&["10.0.0.3:9080"]));
    dns.set_ips(HOST_NAME, &["fd00::3"]);
    assert_eq!(host.get_nodes().await.unwrap(), nodes(&["[fd00::3]:9080"]));

    // An unknown name is an empty answer, not an error.
    let (cluster, federation) = configs("_nothing._udp.prism.test", dns.addr, 30);
    let none = from_config(&cluster, &federation).unwrap();
    assert_eq!(none.get_nodes().await.unwrap(), Vec::<NodeInfo>::new());

    // SERVFAIL is an error.
    dns.zone.lock().servfail = true;
    let err = srv.get_nodes().await.unwrap_err().to_string();
    assert!(err.contains(SRV_NAME), "{err}");
}

#[tokio::test]
async fn watch_reports_the_records_that_change() {
    let dns = Responder::start().await;
    dns.set_srv(
        SRV_NAME,
        &[("node-a.prism.test", 7000), ("node-b.prism.test", 7000)],
    );
    let (cluster, federation) = configs(SRV_NAME, dns.addr, 1);
    let discovery: Arc<dyn NodeDiscovery> = from_config(&cluster, &federation).unwrap();
    let mut events = discovery.watch();
    assert_eq!(
        next_events(&mut events, 2).await,
        vec![
            joined("node-a.prism.test:7000"),
            joined("node-b.prism.test:7000")
        ]
    );

    dns.set_srv(
        SRV_NAME,
        &[("node-b.prism.test", 7000), ("node-c.prism.test", 7000)],
    );
    assert_eq!(
        next_events(&mut events, 2).await,
        vec![
            ClusterEvent::NodeLeft("node-a.prism.test:7000".into()),
            joined("node-c.prism.test:7000"),
        ]
    );
    // Nothing else: the records stay as they are.
    quiet_for(&mut events, Duration::from_millis(2500)).await;
}

#[tokio::test]
async fn a_dns_outage_keeps_the_known_nodes() {
    let dns = Responder::start().await;
    dns.set_ips(HOST_NAME, &["10.0.0.1", "10.0.0.2"]);
    let (cluster, federation) = configs(HOST_NAME, dns.addr, 1);
    let mut events = from_config(&cluster, &federation).unwrap().watch();
    assert_eq!(
        next_events(&mut events, 2).await,
        vec![joined("10.0.0.1:9555"), joined("10.0.0.2:9555")]
    );

    // SERVFAIL for more than 3 refreshes: no leave.
    dns.zone.lock().servfail = true;
    quiet_for(&mut events, Duration::from_millis(3500)).await;
    // The records gone (NXDOMAIN): still no leave.
    {
        let mut zone = dns.zone.lock();
        zone.servfail = false;
        zone.ips.clear();
    }
    quiet_for(&mut events, Duration::from_millis(3500)).await;
    // No answer at all: still no leave.
    dns.zone.lock().silent = true;
    quiet_for(&mut events, Duration::from_millis(3500)).await;

    // Back, changed: the difference to the last known set.
    {
        let mut zone = dns.zone.lock();
        zone.silent = false;
        zone.ips.insert(
            HOST_NAME.into(),
            vec!["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()],
        );
    }
    assert_eq!(
        next_events(&mut events, 2).await,
        vec![
            ClusterEvent::NodeLeft("10.0.0.1:9555".into()),
            joined("10.0.0.3:9555"),
        ]
    );
}

#[tokio::test]
async fn watch_retries_quickly_until_the_records_exist() {
    let dns = Responder::start().await;
    // Refresh interval long: only the empty-set retry can find the records in time.
    let (cluster, federation) = configs(SRV_NAME, dns.addr, 3600);
    let mut events = from_config(&cluster, &federation).unwrap().watch();
    quiet_for(&mut events, Duration::from_millis(1500)).await;
    dns.set_srv(SRV_NAME, &[("node-a.prism.test", 7000)]);
    assert_eq!(
        next_events(&mut events, 1).await,
        vec![joined("node-a.prism.test:7000")]
    );
}

#[test]
fn config_errors_say_what_to_set() {
    let cluster = ClusterConfig::default();
    let message = |federation: &FederationConfig| match from_config(&cluster, federation) {
        Ok(_) => panic!("accepted {federation:?}"),
        Err(e) => e.to_string(),
    };

    let mut federation = FederationConfig::default();
    federation.discovery.backend = DiscoveryBackend::Dns;
    let err = message(&federation);
    assert!(err.contains("needs federation.discovery.dns_name"), "{err}");

    federation.discovery.dns_name = Some(HOST_NAME.into());
    federation.discovery.dns_server = Some("localhost:53".into());
    let err = message(&federation);
    assert!(
        err.contains("dns_server") && err.contains("ip:port"),
        "{err}"
    );

    federation.discovery.dns_server = Some("127.0.0.1:53".into());
    federation.discovery.dns_refresh_interval_secs = 0;
    let err = message(&federation);
    assert!(err.contains("dns_refresh_interval_secs"), "{err}");

    federation.discovery.dns_refresh_interval_secs = 30;
    federation.discovery.dns_name = Some(format!("{SRV_NAME}:7000"));
    let err = message(&federation);
    assert!(err.contains("SRV name"), "{err}");

    federation.discovery.backend = DiscoveryBackend::Gossip;
    let err = message(&federation);
    assert!(err.contains("gossip discovery is not available"), "{err}");
}

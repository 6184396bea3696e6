//! Node discovery: `DnsDiscovery` against the in-process DNS server of the harness, and then
//! real `prism-server` processes whose federation membership follows the DNS records.

/// `DnsDiscovery` through the public prism-cluster API.
mod dns_discovery {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use futures::stream::{BoxStream, StreamExt};
    use prism_cluster::config::{ClusterConfig, DiscoveryBackend, FederationConfig};
    use prism_cluster::discovery::{from_config, ClusterEvent, NodeDiscovery, NodeInfo};
    use prism_tests::dns::{AnswerMode, DnsServer};

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

    async fn next_events(
        stream: &mut BoxStream<'static, ClusterEvent>,
        n: usize,
    ) -> Vec<ClusterEvent> {
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
        let dns = DnsServer::start();
        dns.set_srv(
            SRV_NAME,
            &[("node-b.prism.test", 7001), ("node-a.prism.test", 7000)],
        );
        dns.set_ips(HOST_NAME, &["10.0.0.2", "10.0.0.1", "fd00::1"]);

        let (cluster, federation) = configs(SRV_NAME, dns.addr(), 30);
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
        let (cluster, federation) = configs(HOST_NAME, dns.addr(), 30);
        let host = from_config(&cluster, &federation).unwrap();
        assert_eq!(
            host.get_nodes().await.unwrap(),
            nodes(&["10.0.0.1:9555", "10.0.0.2:9555", "[fd00::1]:9555"])
        );

        // The port written in dns_name wins.
        let (cluster, federation) = configs(&format!("{HOST_NAME}:7100"), dns.addr(), 30);
        let host = from_config(&cluster, &federation).unwrap();
        assert_eq!(
            host.get_nodes().await.unwrap(),
            nodes(&["10.0.0.1:7100", "10.0.0.2:7100", "[fd00::1]:7100"])
        );

        // No advertise_addr: the port of bind_addr; neither has one: 9080.
        let (mut cluster, federation) = configs(HOST_NAME, dns.addr(), 30);
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
        let (cluster, federation) = configs("_nothing._udp.prism.test", dns.addr(), 30);
        let none = from_config(&cluster, &federation).unwrap();
        assert_eq!(none.get_nodes().await.unwrap(), Vec::<NodeInfo>::new());

        // SERVFAIL is an error.
        dns.set_mode(AnswerMode::ServFail);
        let err = srv.get_nodes().await.unwrap_err().to_string();
        assert!(err.contains(SRV_NAME), "{err}");
    }

    #[tokio::test]
    async fn watch_reports_the_records_that_change() {
        let dns = DnsServer::start();
        dns.set_srv(
            SRV_NAME,
            &[("node-a.prism.test", 7000), ("node-b.prism.test", 7000)],
        );
        let (cluster, federation) = configs(SRV_NAME, dns.addr(), 1);
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
        let dns = DnsServer::start();
        dns.set_ips(HOST_NAME, &["10.0.0.1", "10.0.0.2"]);
        let (cluster, federation) = configs(HOST_NAME, dns.addr(), 1);
        let mut events = from_config(&cluster, &federation).unwrap().watch();
        assert_eq!(
            next_events(&mut events, 2).await,
            vec![joined("10.0.0.1:9555"), joined("10.0.0.2:9555")]
        );

        // SERVFAIL for more than 3 refreshes: no leave.
        dns.set_mode(AnswerMode::ServFail);
        quiet_for(&mut events, Duration::from_millis(3500)).await;
        // The records gone (NXDOMAIN): still no leave.
        dns.clear();
        dns.set_mode(AnswerMode::Normal);
        quiet_for(&mut events, Duration::from_millis(3500)).await;
        // No answer at all: still no leave.
        dns.set_mode(AnswerMode::Silent);
        quiet_for(&mut events, Duration::from_millis(3500)).await;

        // Back, changed: the difference to the last known set.
        dns.set_ips(HOST_NAME, &["10.0.0.2", "10.0.0.3"]);
        dns.set_mode(AnswerMode::Normal);
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
        let dns = DnsServer::start();
        // Refresh interval long: only the empty-set retry can find the records in time.
        let (cluster, federation) = configs(SRV_NAME, dns.addr(), 3600);
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
}

/// Real `prism-server` processes whose federation membership comes from DNS.
mod server_discovery {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use prism_tests::cluster::{free_udp_port, write_certs};
    use prism_tests::dns::{AnswerMode, DnsServer};
    use prism_tests::Server;
    use serde_json::{json, Value};

    const SRV_NAME: &str = "_prism._udp.prism.test";
    const SCHEMA: &str = "name: docs\nfields:\n  title: {type: text}\n  tag: {type: keyword}\n";

    /// A test node with no seeds: the members come from the SRV records of [`SRV_NAME`] on
    /// `dns`, looked up every second.
    fn dns_node_config(i: usize, port: u16, tls: &Path, dns: SocketAddr) -> String {
        let discovery = format!(
            "[federation.discovery]\nbackend = \"dns\"\ndns_name = \"{SRV_NAME}\"\ndns_refresh_interval_secs = 1\ndns_server = \"{dns}\"\n"
        );
        prism_tests::cluster::node_config_with(i, port, &[], tls, &discovery)
    }

    /// `(address, node_id, state, self)` of every node `/cluster/health` lists, sorted.
    type Members = Vec<(String, String, String, bool)>;

    fn members(server: &Server) -> Members {
        let (status, health) = server.get("/cluster/health");
        assert_eq!(status, 200, "/cluster/health: {health}");
        let mut members: Members = health["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("/cluster/health has no nodes: {health}"))
            .iter()
            .map(|n| {
                (
                    n["address"].as_str().unwrap_or_default().to_string(),
                    n["node_id"].as_str().unwrap_or_default().to_string(),
                    n["state"].as_str().unwrap_or_default().to_string(),
                    n["self"].as_bool().unwrap_or_default(),
                )
            })
            .collect();
        members.sort();
        members
    }

    /// What node `me` (0-based) lists when `nodes` (0-based) are in DNS, all alive: the
    /// SRV targets `localhost:<cluster port>`, each with its node id.
    fn expected(me: usize, nodes: &[usize], ports: &[u16]) -> Members {
        let mut members: Members = nodes
            .iter()
            .map(|&i| {
                (
                    format!("localhost:{}", ports[i]),
                    format!("node-{}", i + 1),
                    "alive".to_string(),
                    i == me,
                )
            })
            .collect();
        members.sort();
        members
    }

    /// Polls until every node in `which` (0-based) lists exactly `nodes` (0-based), alive;
    /// on time-out, fails with what each node listed last.
    fn wait_for_members(
        servers: &[Server],
        which: &[usize],
        nodes: &[usize],
        ports: &[u16],
        timeout: Duration,
        what: &str,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen: BTreeMap<usize, Members> =
                which.iter().map(|&i| (i, members(&servers[i]))).collect();
            if seen
                .iter()
                .all(|(&i, listed)| *listed == expected(i, nodes, ports))
            {
                return;
            }
            if Instant::now() >= deadline {
                let wanted: BTreeMap<usize, Members> = which
                    .iter()
                    .map(|&i| (i + 1, expected(i, nodes, ports)))
                    .collect();
                let seen: BTreeMap<usize, Members> =
                    seen.into_iter().map(|(i, m)| (i + 1, m)).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n  wanted (node → members): {wanted:?}\n  seen: {seen:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn local_count(server: &Server) -> u64 {
        let (status, r) = server.post_json("/collections/docs/search", &json!({"limit": 1}));
        assert_eq!(status, 200, "{r}");
        r["total"]
            .as_u64()
            .unwrap_or_else(|| panic!("no total: {r}"))
    }

    fn federated(server: &Server) -> Value {
        let (status, r) =
            server.post_json("/cluster/collections/docs/search", &json!({"limit": 1}));
        assert_eq!(status, 200, "{r}");
        r
    }

    /// Three nodes with `[federation.discovery] backend = "dns"` and SRV records on the test
    /// DNS server: a node added to the records joins every node's membership (and gets its
    /// share of federated indexing), a DNS outage changes nothing, and a node removed from
    /// the records leaves the others' membership and their federated searches.
    #[test]
    fn federation_membership_follows_dns_records() {
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        // SANs localhost and 127.0.0.1: the SRV targets are `localhost`, told apart by port,
        // since the nodes dial SRV targets through the system resolver.
        write_certs(&tls);
        let schemas = dir.path().join("schemas");
        std::fs::create_dir_all(&schemas).unwrap();
        std::fs::write(schemas.join("collection.yaml"), SCHEMA).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
        let srv = |nodes: &[usize]| -> Vec<(&'static str, u16)> {
            nodes.iter().map(|&i| ("localhost", ports[i])).collect()
        };

        // Nodes 1 and 2 in DNS; node 3 starts but is not published yet.
        let dns = DnsServer::start();
        dns.set_srv(SRV_NAME, &srv(&[0, 1]));
        let servers: Vec<Server> = (0..3)
            .map(|i| {
                let config = dir.path().join(format!("node{}.toml", i + 1));
                std::fs::write(&config, dns_node_config(i, ports[i], &tls, dns.addr())).unwrap();
                Server::start(
                    &dir.path().join(format!("data{}", i + 1)),
                    &[
                        ("PRISM_CONFIG", &config.to_string_lossy()),
                        ("PRISM_SCHEMAS_DIR", &schemas.to_string_lossy()),
                    ],
                )
            })
            .collect();
        wait_for_members(
            &servers,
            &[0, 1],
            &[0, 1],
            &ports,
            Duration::from_secs(10),
            "nodes 1 and 2 to list exactly nodes 1 and 2 (from DNS), both alive",
        );

        // Node 3 published: every node lists the three, alive, within 15 s.
        let published = Instant::now();
        dns.set_srv(SRV_NAME, &srv(&[0, 1, 2]));
        wait_for_members(
            &servers,
            &[0, 1, 2],
            &[0, 1, 2],
            &ports,
            Duration::from_secs(15),
            "every node to list nodes 1-3 alive after node 3's SRV record was added",
        );
        eprintln!(
            "node 3 joined everywhere {:?} after its record",
            published.elapsed()
        );

        // Federated indexing through node 1 spreads over all three.
        let docs: Vec<Value> = (0..300)
            .map(|i| json!({"id": format!("doc-{i}"), "fields": {"title": format!("hello number {i}"), "tag": format!("t{}", i % 3)}}))
            .collect();
        let (status, indexed) = servers[0].post_json(
            "/cluster/collections/docs/documents",
            &json!({"documents": docs}),
        );
        assert_eq!(status, 200, "{indexed}");
        assert_eq!(indexed["successful_docs"], 300, "{indexed}");
        assert_eq!(indexed["failed_docs"], 0, "{indexed}");
        for server in &servers {
            let (status, r) = server.post_json("/collections/docs/refresh", &json!({}));
            assert_eq!(status, 200, "refresh: {r}");
        }
        let counts: Vec<u64> = servers.iter().map(local_count).collect();
        assert_eq!(counts.iter().sum::<u64>(), 300, "local counts {counts:?}");
        assert!(
            counts.iter().all(|c| *c > 0),
            "every node owns part of the federated index: local counts {counts:?}"
        );
        for (i, server) in servers.iter().enumerate() {
            let r = federated(server);
            assert_eq!(r["total"], 300, "federated total from node {}: {r}", i + 1);
            assert_eq!(
                r["shard_status"]["total"],
                3,
                "shards from node {}: {r}",
                i + 1
            );
            assert_eq!(r["is_partial"], false, "from node {}: {r}", i + 1);
        }

        // A DNS outage (SERVFAIL for at least 3 refreshes of every node) keeps the members.
        let queries_before = dns.queries();
        dns.set_mode(AnswerMode::ServFail);
        let outage = Instant::now();
        loop {
            for (i, server) in servers.iter().enumerate() {
                let listed = members(server);
                assert_eq!(
                    listed,
                    expected(i, &[0, 1, 2], &ports),
                    "node {} changed its members {:?} into a DNS outage",
                    i + 1,
                    outage.elapsed()
                );
            }
            let failed = dns.queries() - queries_before;
            if outage.elapsed() >= Duration::from_millis(3500) && failed >= 9 {
                break;
            }
            assert!(
                outage.elapsed() < Duration::from_secs(10),
                "the nodes asked DNS only {failed} times in {:?} of outage (1 s refresh interval)",
                outage.elapsed()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        dns.set_mode(AnswerMode::Normal);
        assert_eq!(federated(&servers[0])["shard_status"]["total"], 3);

        // Node 2's record removed: nodes 1 and 3 drop it, and search the other two shards.
        let removed = Instant::now();
        dns.set_srv(SRV_NAME, &srv(&[0, 2]));
        wait_for_members(
            &servers,
            &[0, 2],
            &[0, 2],
            &ports,
            Duration::from_secs(15),
            "nodes 1 and 3 to list only nodes 1 and 3 after node 2's SRV record was removed",
        );
        eprintln!("node 2 left {:?} after its record went", removed.elapsed());
        for i in [0, 2] {
            let r = federated(&servers[i]);
            assert_eq!(
                r["shard_status"],
                json!({"total": 2, "successful": 2, "failed": 0}),
                "from node {}: {r}",
                i + 1
            );
            assert_eq!(
                r["total"],
                300 - counts[1],
                "from node {} without node 2's shard: {r}",
                i + 1
            );
        }
        eprintln!(
            "federation_membership_follows_dns_records: {:?}",
            started.elapsed()
        );
    }
}

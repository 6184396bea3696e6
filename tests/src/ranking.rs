//! Ranking comparisons between a distributed collection (a federation, or a cluster) and one
//! node holding the same documents: same ids in the same order, same scores.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::{nave, Server};

/// Where a distributed deployment takes documents and searches, and the status a write
/// answers with.
#[derive(Debug, Clone, Copy)]
pub struct Routes {
    pub documents: &'static str,
    pub search: &'static str,
    pub write_status: u16,
}

/// Federation mode: the `/cluster/collections/...` routes, which route by id.
pub const FEDERATION: Routes = Routes {
    documents: "/cluster/collections/kjv/documents",
    search: "/cluster/collections/kjv/search",
    write_status: 200,
};

/// Cluster mode: the ordinary collection routes, on any node.
pub const CLUSTER: Routes = Routes {
    documents: "/collections/kjv/documents",
    search: "/collections/kjv/search",
    write_status: 201,
};

/// The nave-kjv directory, or `None` (saying so) when it is absent and `PRISM_SKIP_NAVE` is
/// set; absent without it, `test` fails and says how to run it knowingly without.
pub fn nave_dir_or_skip(test: &str) -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = nave::dir(&repo);
    match nave::missing(&dir, &["corpus.jsonl", "topics-dev.tsv"]) {
        None => Some(dir),
        Some(why) if std::env::var_os("PRISM_SKIP_NAVE").is_some() => {
            eprintln!("SKIPPED the nave-kjv part of {test}: {why}");
            None
        }
        Some(why) => panic!(
            "{why}. {test} compares distributed and single-node ranking on it \
             (/work/shared/data/README.md); set PRISM_SKIP_NAVE=1 to run without it knowingly"
        ),
    }
}

/// nave-kjv, text only (vectors would triple the load time and HNSW graphs differ by shard
/// anyway): the verses into the distributed collection `kjv` (which the caller created on
/// `nodes`) and into one node, then all 1,048 topics, top 10, compared id for id, each
/// through the nodes in turn. Short verses tie often, so this fails whenever ties are ordered
/// by anything that depends on where or when a document was indexed.
pub fn nave_kjv_ranks_alike(nodes: &[&Server], routes: Routes, single: &Server, dir: &Path) {
    let verses = nave::read_corpus(dir).unwrap();
    let topics = nave::read_topics(dir).unwrap();
    assert_eq!((verses.len(), topics.len()), (31_102, 1_048));
    let (status, body) = single.put_json(
        "/collections/kjv",
        &json!({"fields": {"text": {"type": "text"}}}),
    );
    assert_eq!(status, 201, "{body}");
    for batch in verses.chunks(1000) {
        let docs: Vec<Value> = batch
            .iter()
            .map(|v| json!({"id": v.id, "fields": {"text": v.text}}))
            .collect();
        let body = json!({ "documents": docs });
        // A write whose outcome is unknown (on this loaded 2-core machine, a node slow to
        // answer while it held the write) is retried, as the answer says is safe.
        let mut attempts = 0;
        let (status, r) = loop {
            attempts += 1;
            let (status, r) = nodes[0].post_json(routes.documents, &body);
            if status != 503 || r["error"]["code"] != "write_timeout" || attempts == 5 {
                break (status, r);
            }
        };
        assert!(
            status == routes.write_status && r["failed_docs"] == 0,
            "{status}: {r}"
        );
        let (status, r) = single.post_json("/collections/kjv/documents", &body);
        assert!(status == 201 && r["failed_docs"] == 0, "{r}");
    }
    for server in nodes.iter().copied().chain([single]) {
        server.post_json("/collections/kjv/refresh", &json!({}));
    }
    let (_, all) = nodes[0].post_json(routes.search, &json!({"limit": 1}));
    assert_eq!(all["total"], 31_102, "{all}");
    let mut ties = 0;
    for (q, topic) in topics.iter().enumerate() {
        let query = nave::sanitize(&topic.text);
        if query.is_empty() {
            continue;
        }
        // Every tenth topic also compares its second page.
        let offsets: &[usize] = if q % 10 == 0 { &[0, 10] } else { &[0] };
        for &offset in offsets {
            let body = json!({"query": query, "limit": 10, "offset": offset});
            let (_, distributed) = nodes[q % nodes.len()].post_json(routes.search, &body);
            let (_, one) = single.post_json("/collections/kjv/search", &body);
            assert_same_ranking(&distributed, &one, &body, "text");
            let scores: Vec<f64> = one["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["score"].as_f64().unwrap())
                .collect();
            ties += scores.windows(2).filter(|w| w[0] == w[1]).count();
        }
    }
    // The comparison means something only if ties are common.
    assert!(
        ties > 1000,
        "only {ties} adjacent ties in the nave-kjv top 10s"
    );
}

/// Ids in rank order.
pub fn ordered_ids(response: &Value) -> Vec<String> {
    response["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"))
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

/// Same `total`, aggregations and hits: identical ids in identical order, scores within 1e-4
/// relative, and every hit carries the stored field `field`.
pub fn assert_same_ranking(fed: &Value, one: &Value, body: &Value, field: &str) {
    assert_eq!(fed["is_partial"], false, "{fed}");
    assert_eq!(fed["total"], one["total"], "total of {body}");
    assert_eq!(
        fed["aggregations"], one["aggregations"],
        "aggregations of {body}"
    );
    assert_eq!(ordered_ids(fed), ordered_ids(one), "ids of {body}");
    let scores = |v: &Value| -> Vec<f64> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["score"].as_f64().unwrap())
            .collect()
    };
    for (a, b) in scores(fed).iter().zip(scores(one)) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1e-9),
            "{body}: score {a} vs {b}"
        );
    }
    // Stored fields come from the fetch phase: every hit carries its document.
    for hit in fed["results"].as_array().unwrap() {
        assert!(hit["fields"][field].is_string(), "{hit}");
    }
}

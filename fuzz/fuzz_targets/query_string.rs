//! A query string as a user types it, in every place a query string goes: the text query
//! (with highlighting), a query over a keyword field, a filter (alone and inside a filtered
//! vector search) and a filter aggregation. Errors are fine; a panic, an abort or a stack
//! overflow on the server's stack is the bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prism_core::search::{check_query_string, HighlightRequest, SearchRequest, VectorQuery};
use prism_fuzz::{on_server_stack, shard};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = text.to_string();
    on_server_stack(move || {
        let shard = shard();
        let _ = check_query_string(&text, "query");
        let requests = [
            SearchRequest {
                query: Some(text.clone()),
                limit: 5,
                highlight: Some(HighlightRequest::Enabled(true)),
                ..SearchRequest::default()
            },
            SearchRequest {
                query: Some(text.clone()),
                fields: Some(vec!["tag".into(), "title".into()]),
                limit: 5,
                ..SearchRequest::default()
            },
            SearchRequest {
                filter: Some(text.clone()),
                limit: 5,
                ..SearchRequest::default()
            },
            SearchRequest {
                filter: Some(text.clone()),
                vector: Some(VectorQuery::Values(vec![1.0, 0.5, 0.0])),
                limit: 3,
                ..SearchRequest::default()
            },
            SearchRequest {
                limit: 0,
                aggregations: Some(serde_json::json!({"f": {"filter": text}})),
                ..SearchRequest::default()
            },
        ];
        for request in &requests {
            if request.validate().is_ok() {
                let _ = shard.search(request);
            }
        }
    });
});

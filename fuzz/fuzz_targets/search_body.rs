//! A search request body as `POST /collections/{c}/search` receives it: queries, filters,
//! vectors, hybrid fusion, aggregations, highlighting, paging. A body that parses runs on a
//! small shard both as a local search and as a federated one (statistics, query phase,
//! fetch phase, aggregation merge), on the server's stack, with the deadline a server gives
//! it. `.ci/fuzz` runs it under `-rss_limit_mb` and `-timeout`, so that an input that runs
//! away in memory, or in time past its deadline, is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::Duration;

use prism_core::search::budget::{SearchBudget, SearchLimits};
use prism_core::search::merge::merge_page;
use prism_core::search::plan::SearchPlan;
use prism_core::search::{merge_aggregations, SearchRequest};
use prism_fuzz::{on_server_stack, shard};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = SearchRequest::from_json(data) else {
        return;
    };
    on_server_stack(move || {
        let shard = shard();
        let limits = SearchLimits::default();
        let budget = Arc::new(SearchBudget::new(&limits, Duration::from_secs(2)));
        if let Ok(response) = shard.search_within(&request, &budget) {
            assert!(
                response.results.len() <= request.limit,
                "{} results for limit {}",
                response.results.len(),
                request.limit
            );
        }
        // The coordinator's path: collection-wide statistics, then the query phase with
        // them, the fetch phase of the page, and the merge of the shards' aggregations.
        let Ok((statistics, _)) = shard.term_statistics(&request) else {
            return;
        };
        // The plan a coordinator of two shards makes, and its merge of this shard's answer.
        let plan = SearchPlan::new(&request, 2, 2.0);
        let Ok(hits) = shard.query_phase(&request, Some(&statistics), plan.windows, &budget) else {
            return;
        };
        let page: Vec<_> = merge_page(&[(0, &hits)], &plan.ranking, plan.merge_offset, plan.limit)
            .into_iter()
            .map(|hit| hit.doc)
            .collect();
        assert!(page.len() <= request.limit);
        let _ = shard.fetch(&request, &hits.generation, &page);
        if let (Some(aggregations), Some(part)) =
            (&request.aggregations, &hits.intermediate_aggregations)
        {
            let _ = merge_aggregations(aggregations, std::slice::from_ref(part));
        }
    });
});

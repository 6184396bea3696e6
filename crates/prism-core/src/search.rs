//! The search request and response, as the HTTP API and the CLI see them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::fusion::HybridStrategy;

/// Largest `limit + offset` a search may ask for.
pub const MAX_RESULT_WINDOW: usize = 10_000;

/// A vector to search with: a bare array when the collection has one vector field, or the
/// field named explicitly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VectorQuery {
    Values(Vec<f64>),
    Field { field: String, values: Vec<f64> },
}

/// Which fields to highlight: `true` for every text field the query touches, or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HighlightRequest {
    Enabled(bool),
    Fields {
        fields: Vec<String>,
        #[serde(default = "default_snippet_chars")]
        max_chars: usize,
    },
}

fn default_snippet_chars() -> usize {
    150
}
fn default_limit() -> usize {
    10
}

/// `POST /collections/{c}/search`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Query-string syntax (tantivy/Lucene) over the text fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Restricts `query` to these fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<VectorQuery>,
    /// Query-string filter; it restricts matches without changing scores, inside the vector
    /// search as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default = "default_limit")]
    pub limit: usize,
    #[serde(default)]
    pub offset: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid: Option<HybridStrategy>,
    /// How many candidates each list contributes to fusion. Default max(100, offset + limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_window_size: Option<usize>,
    /// Elasticsearch-style aggregation request, as tantivy's aggregation module accepts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregations: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highlight: Option<HighlightRequest>,
}

impl SearchRequest {
    /// Parses a request body, reporting unknown keys and wrong types as an invalid query.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        let req: Self =
            serde_json::from_slice(body).map_err(|e| Error::InvalidQuery(e.to_string()))?;
        req.validate()?;
        Ok(req)
    }

    /// Checks limits and parameters that do not depend on the schema.
    pub fn validate(&self) -> Result<()> {
        if self.limit == 0 && self.aggregations.is_none() {
            return Err(Error::InvalidQuery("limit must be at least 1".into()));
        }
        if self.offset.saturating_add(self.limit) > MAX_RESULT_WINDOW {
            return Err(Error::InvalidQuery(format!(
                "offset + limit must be at most {MAX_RESULT_WINDOW}; page deeper with a filter"
            )));
        }
        if let Some(h) = &self.hybrid {
            h.validate().map_err(Error::InvalidQuery)?;
        }
        if let Some(w) = self.rank_window_size {
            if w == 0 || w > MAX_RESULT_WINDOW {
                return Err(Error::InvalidQuery(format!(
                    "rank_window_size must be between 1 and {MAX_RESULT_WINDOW}"
                )));
            }
        }
        Ok(())
    }

    /// Candidates each list contributes to a hybrid fusion.
    pub fn rank_window(&self) -> usize {
        self.rank_window_size
            .unwrap_or(100)
            .max(self.offset + self.limit)
    }
}

/// One result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub fields: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highlights: Option<Map<String, Value>>,
}

/// The answer to a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    pub results: Vec<Hit>,
    /// True number of matching documents.
    pub total: u64,
    pub latency_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregations: Option<Value>,
}

/// A document in one searcher generation: `segment ordinal << 32 | doc id`. Only meaningful
/// together with [`ShardHits::generation`].
pub type DocRef = u64;

/// A shard's answer to the query phase of a federated search: ranked documents and scores,
/// no ids and no stored fields (the coordinator fetches those for the final page only, from
/// the same searcher, by [`DocRef`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardHits {
    /// True number of matching documents in this shard.
    pub total: u64,
    /// The text list (BM25 with the statistics given), or the only list of a filter or
    /// match-all query, best first.
    pub text: Vec<(DocRef, f32)>,
    /// The vector list (similarity, higher is better), best first.
    pub vector: Vec<(DocRef, f32)>,
    /// Unfinished aggregations (postcard), for [`merge_aggregations`]. Always serialized:
    /// this travels in postcard, which cannot skip fields.
    pub intermediate_aggregations: Option<Vec<u8>>,
    /// Which searcher answered: it changes with every refresh and every reopen. The fetch
    /// phase names it to read the same documents, and a coordinator compares it with the
    /// generation of statistics it cached.
    pub generation: String,
}

/// Merges shards' intermediate aggregation results and finishes them, so that a sharded
/// collection's aggregations equal one index's.
pub fn merge_aggregations(request: &Value, parts: &[Vec<u8>]) -> Result<Value> {
    use tantivy::aggregation::agg_req::Aggregations;
    use tantivy::aggregation::intermediate_agg_result::IntermediateAggregationResults;
    use tantivy::aggregation::AggregationLimitsGuard;
    let aggs: Aggregations = serde_json::from_value(request.clone())
        .map_err(|e| Error::InvalidQuery(format!("aggregations: {e}")))?;
    let mut merged: Option<IntermediateAggregationResults> = None;
    for part in parts {
        let part: IntermediateAggregationResults = postcard::from_bytes(part)
            .map_err(|e| Error::InvalidRequest(format!("undecodable shard aggregations: {e}")))?;
        match &mut merged {
            None => merged = Some(part),
            Some(m) => m
                .merge_fruits(part)
                .map_err(|e| Error::InvalidQuery(e.to_string()))?,
        }
    }
    let merged = merged.unwrap_or_default();
    let finished = merged
        .into_final_result(aggs, AggregationLimitsGuard::default())
        .map_err(|e| Error::InvalidQuery(e.to_string()))?;
    serde_json::to_value(finished).map_err(|e| Error::InvalidQuery(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_accepts_bare_array_or_field_form() {
        let r = SearchRequest::from_json(br#"{"vector":[1,2.5]}"#).unwrap();
        assert_eq!(r.vector, Some(VectorQuery::Values(vec![1.0, 2.5])));
        let r = SearchRequest::from_json(br#"{"vector":{"field":"e","values":[1]}}"#).unwrap();
        assert_eq!(
            r.vector,
            Some(VectorQuery::Field {
                field: "e".into(),
                values: vec![1.0]
            })
        );
        assert_eq!(r.limit, 10);
    }

    #[test]
    fn bad_requests_are_invalid_queries() {
        for body in [
            &br#"{"query":"x","limit":0}"#[..],
            br#"{"query":"x","offset":9995,"limit":10}"#,
            br#"{"qeury":"x"}"#,
            br#"{"query":"x","hybrid":{"strategy":"rrf","rrf_k":-1}}"#,
        ] {
            let err = SearchRequest::from_json(body).unwrap_err();
            assert_eq!(
                err.code(),
                "invalid_query",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

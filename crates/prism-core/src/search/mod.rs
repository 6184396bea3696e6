//! The search request and response, as the HTTP API and the CLI see them; the [`plan`] every
//! search runs, and the [`merge`] of shard answers into its page.

pub mod merge;
pub mod plan;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::fusion::HybridStrategy;

/// Largest `limit + offset` a search may ask for.
pub const MAX_RESULT_WINDOW: usize = 10_000;

/// Deepest nesting of a query string: parentheses plus chained prefix operators (`NOT`, `-`,
/// `+`). The parser recurses once per level, so this bounds its stack.
pub const MAX_QUERY_DEPTH: usize = 32;

/// Most terms and operators in one query string, as Lucene's `maxClauseCount`.
pub const MAX_QUERY_CLAUSES: usize = 1024;

/// Deepest nesting of sub-aggregations, and most aggregations in one request.
pub const MAX_AGGREGATION_DEPTH: usize = 8;
pub const MAX_AGGREGATIONS: usize = 100;

/// Checks a query string's nesting and size before the parser sees it. `what` names it in
/// the error (`query`, `filter`).
pub fn check_query_string(text: &str, what: &str) -> Result<()> {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut clauses = 0usize;
    // Prefix operators chained before the current operand.
    let mut chain = 0usize;
    let mut in_token = false;
    let mut token = String::new();
    let mut chars = text.chars().peekable();
    let end_token = |token: &mut String, chain: &mut usize, clauses: &mut usize| {
        if token.is_empty() {
            return;
        }
        *clauses += 1;
        if token == "NOT" || token == "-" || token == "+" || token == "!" {
            *chain += 1;
        } else {
            *chain = 0;
        }
        token.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
                token.push('x');
                in_token = true;
            }
            '"' => {
                // A phrase is one clause; its inside has no structure.
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                }
                token.push('x');
                in_token = true;
            }
            '(' => {
                end_token(&mut token, &mut chain, &mut clauses);
                in_token = false;
                depth += 1;
                deepest = deepest.max(depth + chain);
                chain = 0;
            }
            ')' => {
                end_token(&mut token, &mut chain, &mut clauses);
                in_token = false;
                depth = depth.saturating_sub(1);
            }
            c if c.is_whitespace() => {
                end_token(&mut token, &mut chain, &mut clauses);
                in_token = false;
            }
            '-' | '+' | '!' if !in_token => {
                // A prefix glued to its operand (`-a`, `--a`) chains like a separate one.
                chain += 1;
                deepest = deepest.max(depth + chain);
            }
            c => {
                token.push(c);
                in_token = true;
            }
        }
        deepest = deepest.max(depth + chain);
        if deepest > MAX_QUERY_DEPTH {
            return Err(Error::InvalidQuery(format!(
                "{what} nests deeper than {MAX_QUERY_DEPTH} levels (parentheses and chained NOT/-/+ operators); flatten it"
            )));
        }
        if clauses > MAX_QUERY_CLAUSES {
            return Err(Error::InvalidQuery(format!(
                "{what} has more than {MAX_QUERY_CLAUSES} terms and operators; split it or use a filter"
            )));
        }
    }
    end_token(&mut token, &mut chain, &mut clauses);
    if clauses > MAX_QUERY_CLAUSES {
        return Err(Error::InvalidQuery(format!(
            "{what} has more than {MAX_QUERY_CLAUSES} terms and operators; split it or use a filter"
        )));
    }
    Ok(())
}

/// A date-histogram duration (`30d`, `1h`, `500ms`) in milliseconds, when its nanoseconds fit
/// in an i64. tantivy multiplies without checking and overflows on larger numbers.
fn duration_millis(text: &str) -> Option<i64> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let unit_ms: i64 = match unit {
        "ms" | "milliseconds" => 1,
        "s" | "seconds" => 1_000,
        "m" | "minutes" => 60_000,
        "h" | "hours" => 3_600_000,
        "d" | "days" => 86_400_000,
        _ => return None,
    };
    let ms = number.parse::<i64>().ok()?.checked_mul(unit_ms)?;
    ms.checked_mul(1_000_000)?;
    Some(ms)
}

/// Checks the shape of an aggregation request before tantivy sees it: nesting, count, and
/// parameters tantivy would fail on (an empty `ranges` panics inside it).
pub fn check_aggregations(aggs: &Value) -> Result<()> {
    let mut count = 0;
    check_aggregation_level(aggs, 1, &mut count)
}

fn check_aggregation_level(aggs: &Value, depth: usize, count: &mut usize) -> Result<()> {
    let invalid = |m: String| Err(Error::InvalidQuery(format!("aggregations: {m}")));
    let Some(aggs) = aggs.as_object() else {
        return invalid("must be an object of named aggregations".into());
    };
    if depth > MAX_AGGREGATION_DEPTH {
        return invalid(format!(
            "sub-aggregations nest deeper than {MAX_AGGREGATION_DEPTH} levels"
        ));
    }
    for (name, agg) in aggs {
        *count += 1;
        if *count > MAX_AGGREGATIONS {
            return invalid(format!("more than {MAX_AGGREGATIONS} aggregations"));
        }
        let Some(agg) = agg.as_object() else {
            return invalid(format!("{name:?} must be an object"));
        };
        for (kind, params) in agg {
            match kind.as_str() {
                "aggs" | "aggregations" => check_aggregation_level(params, depth + 1, count)?,
                "range" => match params.get("ranges").and_then(Value::as_array) {
                    Some(ranges) if !ranges.is_empty() => {}
                    _ => return invalid(format!("{name:?}: \"ranges\" must be a non-empty array")),
                },
                "histogram"
                    if !params
                        .get("interval")
                        .and_then(Value::as_f64)
                        .is_some_and(|i| i.is_finite() && i > 0.0) =>
                {
                    return invalid(format!("{name:?}: \"interval\" must be a positive number"));
                }
                "date_histogram" => {
                    if let Some(i) = params.get("fixed_interval") {
                        if i.as_str()
                            .and_then(duration_millis)
                            .is_none_or(|ms| ms <= 0)
                        {
                            return invalid(format!("{name:?}: \"fixed_interval\" must be a positive duration such as \"30d\" or \"1h\" that fits in 64-bit nanoseconds"));
                        }
                    }
                    if let Some(o) = params.get("offset") {
                        let fits = o.as_str().is_some_and(|o| {
                            duration_millis(o.strip_prefix(['-', '+']).unwrap_or(o)).is_some()
                        });
                        if !fits {
                            return invalid(format!("{name:?}: \"offset\" must be a duration such as \"-1d\" that fits in 64-bit nanoseconds"));
                        }
                    }
                }
                "filter" => {
                    if let Some(q) = params
                        .get("query")
                        .and_then(Value::as_str)
                        .or(params.as_str())
                    {
                        check_query_string(q, &format!("aggregation {name:?} filter"))?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A vector to search with: a bare array when the collection has one vector field, or the
/// field named explicitly. Either form's values may also be a string: the base64 of the
/// little-endian f32 values (OpenAI's `encoding_format: "base64"`), which skips parsing a
/// decimal number per dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, try_from = "VectorQueryForm")]
pub enum VectorQuery {
    Values(Vec<f64>),
    Field { field: String, values: Vec<f64> },
}

/// A query vector: its values, or `{"field", "values"}` to name the vector field; values are
/// numbers or the base64 of little-endian f32 values. (The form sent, before decoding.)
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = VectorQuery)]
#[serde(
    untagged,
    expecting = "a vector: an array of numbers, a base64 string of little-endian f32 values, or {\"field\": ..., \"values\": ...}"
)]
enum VectorQueryForm {
    Values(VectorValues),
    Field { field: String, values: VectorValues },
}

/// The values of a query vector: numbers, or the base64 of little-endian f32 values.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum VectorValues {
    Numbers(Vec<f64>),
    Base64(String),
}

/// The longest base64 vector accepted: 4,096 dimensions (the schema's limit).
const MAX_BASE64_VECTOR_CHARS: usize = 4096 * 4 * 4 / 3 + 4;

impl TryFrom<VectorValues> for Vec<f64> {
    type Error = String;

    fn try_from(values: VectorValues) -> Result<Self, String> {
        use base64::Engine as _;
        let text = match values {
            VectorValues::Numbers(values) => return Ok(values),
            VectorValues::Base64(text) => text,
        };
        if text.len() > MAX_BASE64_VECTOR_CHARS {
            return Err(format!(
                "a base64 vector of {} characters is longer than 4,096 dimensions",
                text.len()
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| {
                format!("a vector given as a string must be base64 (standard alphabet, padded) of little-endian f32 values: {e}")
            })?;
        if bytes.len() % 4 != 0 {
            return Err(format!(
                "a base64 vector must decode to whole f32 values (4 bytes each), got {} bytes",
                bytes.len()
            ));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect())
    }
}

impl TryFrom<VectorQueryForm> for VectorQuery {
    type Error = String;

    fn try_from(form: VectorQueryForm) -> Result<Self, String> {
        Ok(match form {
            VectorQueryForm::Values(values) => VectorQuery::Values(values.try_into()?),
            VectorQueryForm::Field { field, values } => VectorQuery::Field {
                field,
                values: values.try_into()?,
            },
        })
    }
}

/// Which fields to highlight: `true` for every text field the query touches, or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Query-string syntax (tantivy/Lucene) over the text fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Restricts `query` to these fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<VectorQueryForm>)]
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
        if let Some(q) = &self.query {
            check_query_string(q, "query")?;
        }
        if let Some(f) = &self.filter {
            check_query_string(f, "filter")?;
        }
        if let Some(a) = &self.aggregations {
            check_aggregations(a)?;
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub fields: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highlights: Option<Map<String, Value>>,
}

/// The answer to a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// One document of a shard's ranked list.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RankedDoc {
    pub doc: DocRef,
    pub score: f32,
    /// [`crate::rank::id_hash`] of the document's id: a coordinator breaks ties between
    /// shards with it as every shard broke its own.
    pub id_hash: u64,
}

/// A shard's answer to the query phase of a federated search: ranked documents, their scores
/// and id hashes, no ids and no stored fields (the coordinator fetches those for the final
/// page only, from the same searcher, by [`DocRef`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardHits {
    /// True number of matching documents in this shard.
    pub total: u64,
    /// The text list (BM25 with the statistics given), or the only list of a filter or
    /// match-all query, in rank order ([`crate::rank`]).
    pub text: Vec<RankedDoc>,
    /// The vector list (similarity, higher is better), in rank order.
    pub vector: Vec<RankedDoc>,
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
    fn vector_accepts_base64_little_endian_f32() {
        use base64::Engine as _;
        let values = [1.0f32, -2.5, 0.1];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        let expected: Vec<f64> = values.iter().map(|v| f64::from(*v)).collect();
        let bare = format!(r#"{{"vector":"{text}"}}"#);
        let r = SearchRequest::from_json(bare.as_bytes()).unwrap();
        assert_eq!(r.vector, Some(VectorQuery::Values(expected.clone())));
        let field = format!(r#"{{"vector":{{"field":"e","values":"{text}"}}}}"#);
        let r = SearchRequest::from_json(field.as_bytes()).unwrap();
        assert_eq!(
            r.vector,
            Some(VectorQuery::Field {
                field: "e".into(),
                values: expected
            })
        );
        for bad in [r#"{"vector":"not base64!"}"#, r#"{"vector":"AAAAAAA="}"#] {
            let e = SearchRequest::from_json(bad.as_bytes()).expect_err(bad);
            assert_eq!(e.code(), "invalid_query", "{bad}: {e}");
            assert!(e.to_string().contains("base64"), "{e}");
        }
        let huge = format!(r#"{{"vector":"{}"}}"#, "A".repeat(1 << 20));
        assert!(SearchRequest::from_json(huge.as_bytes()).is_err());
    }

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

    #[test]
    fn query_strings_are_bounded_in_depth_and_clauses() {
        let nested = |n: usize| format!("{}x{}", "(".repeat(n), ")".repeat(n));
        assert!(check_query_string(&nested(MAX_QUERY_DEPTH), "query").is_ok());
        assert!(check_query_string(&nested(MAX_QUERY_DEPTH + 1), "query").is_err());
        assert!(check_query_string(&format!("{}x", "NOT ".repeat(MAX_QUERY_DEPTH)), "q").is_ok());
        assert!(
            check_query_string(&format!("{}x", "NOT ".repeat(MAX_QUERY_DEPTH + 1)), "q").is_err()
        );
        assert!(check_query_string(&format!("{}x", "-".repeat(100)), "q").is_err());
        assert!(check_query_string(&format!("{}x", "!".repeat(100)), "q").is_err());
        assert!(check_query_string(&"a ".repeat(MAX_QUERY_CLAUSES), "q").is_ok());
        assert!(check_query_string(&"a ".repeat(MAX_QUERY_CLAUSES + 1), "q").is_err());
        // Operators separated by operands do not chain; phrases and escapes hide structure.
        assert!(check_query_string(&"-a ".repeat(500), "q").is_ok());
        assert!(check_query_string(&format!("\"{}\"", "(".repeat(100)), "q").is_ok());
        assert!(check_query_string(&"\\(".repeat(100), "q").is_ok());
        let e = check_query_string(&nested(3000), "filter").unwrap_err();
        assert!(e.to_string().contains("filter"), "{e}");
    }

    #[test]
    fn aggregations_tantivy_would_fail_on_are_refused() {
        use serde_json::json;
        assert!(check_aggregations(
            &json!({"r": {"range": {"field": "y", "ranges": [{"to": 1}]}}})
        )
        .is_ok());
        for bad in [
            json!({"r": {"range": {"field": "y", "ranges": []}}}),
            json!({"r": {"range": {"field": "y"}}}),
            json!({"h": {"histogram": {"field": "y", "interval": 0}}}),
            json!({"h": {"histogram": {"field": "y", "interval": -1}}}),
            // Found by fuzzing: tantivy's own parser overflowed on this interval.
            json!({"d": {"date_histogram": {"field": "t", "fixed_interval": "2000000000000008d"}}}),
            json!({"d": {"date_histogram": {"field": "t", "fixed_interval": "0d"}}}),
            json!({"d": {"date_histogram": {"field": "t", "fixed_interval": "1d", "offset": "-99999999999999d"}}}),
            json!({"f": {"filter": format!("{}x", "(".repeat(100))}}),
            json!([1, 2]),
            json!({"t": 5}),
        ] {
            assert_eq!(
                check_aggregations(&bad).unwrap_err().code(),
                "invalid_query",
                "{bad}"
            );
        }
        assert!(check_aggregations(&json!({"d": {"date_histogram": {
            "field": "t", "fixed_interval": "30d", "offset": "-2h"
        }}}))
        .is_ok());
        let mut deep = json!({"t": {"terms": {"field": "tag"}}});
        for _ in 0..MAX_AGGREGATION_DEPTH {
            deep = json!({"t": {"terms": {"field": "tag"}, "aggs": deep}});
        }
        assert!(check_aggregations(&deep).is_err());
        let many: serde_json::Map<String, Value> = (0..=MAX_AGGREGATIONS)
            .map(|i| (format!("a{i}"), json!({"avg": {"field": "y"}})))
            .collect();
        assert!(check_aggregations(&Value::Object(many)).is_err());
    }
}

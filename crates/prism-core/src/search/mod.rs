//! The search request and response, as the HTTP API and the CLI see them; the [`plan`] every
//! search runs, and the [`merge`] of shard answers into its page.

pub mod budget;
pub mod merge;
pub mod plan;
pub mod pool;

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

/// Longest highlight snippet, in characters.
pub const MAX_SNIPPET_CHARS: usize = 10_000;

/// Largest phrase slop (`"a b"~N`): tantivy's phrase scorer keeps slops in a byte and would
/// wrap a larger one into a wrong answer.
pub const MAX_PHRASE_SLOP: u64 = 255;

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
            '~' => {
                let mut slop: u64 = 0;
                let mut digits = 0;
                while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                    slop = slop.saturating_mul(10).saturating_add(u64::from(d));
                    digits += 1;
                    chars.next();
                }
                if digits > 0 && slop > MAX_PHRASE_SLOP {
                    return Err(Error::InvalidQuery(format!(
                        "{what} asks for a slop of {slop}; the most is {MAX_PHRASE_SLOP}"
                    )));
                }
                token.push('~');
                in_token = true;
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

/// Most buckets one bucket aggregation may ask for (`size` of `terms`, `multi_terms` and
/// `composite`; ranges; the buckets `extended_bounds` would create), as Elasticsearch's
/// `search.max_buckets`.
pub const MAX_BUCKETS: u64 = 65_000;

/// Most hits a `top_hits` aggregation may return per bucket (`from + size`), as
/// Elasticsearch's `index.max_inner_result_window`.
pub const MAX_TOP_HITS: u64 = 100;

/// Most entries of the lists inside an aggregation: `percents`, `sort`, `docvalue_fields`,
/// the `sources` of a `composite` and the `terms` of a `multi_terms`.
pub const MAX_AGGREGATION_LIST: usize = 100;

/// Checks an aggregation request before tantivy sees it, in one walk over the whole tree:
/// nesting and count, and every size, interval, bound and list wherever it appears (inside
/// sub-aggregations and `composite` sources too). tantivy allocates what it is asked for (a
/// `top_hits` of size 1e9 is a 64 GB allocation) and panics on some values.
pub fn check_aggregations(aggs: &Value) -> Result<()> {
    let mut count = 0;
    check_aggregation_level(aggs, 1, &mut count)
}

fn invalid_aggregation<T>(message: String) -> Result<T> {
    Err(Error::InvalidQuery(format!("aggregations: {message}")))
}

/// `params[key]`, when present, must be a whole number between `min` and `max`.
fn check_count(name: &str, params: &Value, key: &str, min: u64, max: u64) -> Result<()> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(()),
            _ => invalid_aggregation(format!(
                "{name:?}: \"{key}\" must be a whole number from {min} to {max}, got {v}"
            )),
        },
    }
}

/// `params[key]`, when present, must be a finite number (and positive when asked).
fn check_number(name: &str, params: &Value, key: &str, positive: bool) -> Result<Option<f64>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && (!positive || x > 0.0) => Ok(Some(x)),
            _ => invalid_aggregation(format!(
                "{name:?}: \"{key}\" must be a {}number, got {v}",
                if positive { "positive " } else { "finite " }
            )),
        },
    }
}

/// `params[key]`, when present, must be an array of at most `max` entries.
fn check_list<'a>(name: &str, params: &'a Value, key: &str, max: usize) -> Result<&'a [Value]> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) if items.len() <= max => Ok(items),
        Some(_) => invalid_aggregation(format!(
            "{name:?}: \"{key}\" must be an array of at most {max} entries"
        )),
    }
}

/// `min` and `max` of a histogram's `hard_bounds` or `extended_bounds`: finite, in order.
fn check_bounds(name: &str, params: &Value, key: &str) -> Result<Option<(f64, f64)>> {
    let Some(bounds) = params.get(key).filter(|b| !b.is_null()) else {
        return Ok(None);
    };
    let what = format!("{name:?} {key}");
    let min = check_number(&what, bounds, "min", false)?;
    let max = check_number(&what, bounds, "max", false)?;
    match (min, max) {
        (Some(min), Some(max)) if min <= max => Ok(Some((min, max))),
        _ => invalid_aggregation(format!(
            "{name:?}: \"{key}\" must be {{\"min\": number, \"max\": number}} with min <= max"
        )),
    }
}

/// The buckets `extended_bounds` would create at `interval` must fit [`MAX_BUCKETS`].
fn check_bucket_span(name: &str, span: Option<(f64, f64)>, interval: f64) -> Result<()> {
    if let Some((min, max)) = span {
        let buckets = (max - min) / interval;
        if buckets.is_nan() || buckets > MAX_BUCKETS as f64 {
            return invalid_aggregation(format!(
                "{name:?}: \"extended_bounds\" over this interval would create {buckets:.0} buckets, over {MAX_BUCKETS}"
            ));
        }
    }
    Ok(())
}

fn check_fixed_interval(name: &str, params: &Value, key: &str) -> Result<Option<i64>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(i) => match i.as_str().and_then(duration_millis) {
            Some(ms) if ms > 0 => Ok(Some(ms)),
            _ => invalid_aggregation(format!("{name:?}: \"{key}\" must be a positive duration such as \"30d\" or \"1h\" that fits in 64-bit nanoseconds")),
        },
    }
}

fn check_histogram(name: &str, params: &Value) -> Result<()> {
    let Some(interval) = check_number(name, params, "interval", true)? else {
        return invalid_aggregation(format!("{name:?}: \"interval\" must be a positive number"));
    };
    check_number(name, params, "offset", false)?;
    check_count(name, params, "min_doc_count", 0, u64::MAX)?;
    check_bounds(name, params, "hard_bounds")?;
    check_bucket_span(
        name,
        check_bounds(name, params, "extended_bounds")?,
        interval,
    )
}

fn check_date_histogram(name: &str, params: &Value) -> Result<()> {
    let interval = check_fixed_interval(name, params, "fixed_interval")?;
    if let Some(o) = params.get("offset").filter(|o| !o.is_null()) {
        let fits = o
            .as_str()
            .is_some_and(|o| duration_millis(o.strip_prefix(['-', '+']).unwrap_or(o)).is_some());
        if !fits {
            return invalid_aggregation(format!("{name:?}: \"offset\" must be a duration such as \"-1d\" that fits in 64-bit nanoseconds"));
        }
    }
    check_count(name, params, "min_doc_count", 0, u64::MAX)?;
    check_bounds(name, params, "hard_bounds")?;
    let extended = check_bounds(name, params, "extended_bounds")?;
    if let Some(ms) = interval {
        check_bucket_span(name, extended, ms as f64)?;
    }
    Ok(())
}

fn check_aggregation_level(aggs: &Value, depth: usize, count: &mut usize) -> Result<()> {
    let Some(aggs) = aggs.as_object() else {
        return invalid_aggregation("must be an object of named aggregations".into());
    };
    if depth > MAX_AGGREGATION_DEPTH {
        return invalid_aggregation(format!(
            "sub-aggregations nest deeper than {MAX_AGGREGATION_DEPTH} levels"
        ));
    }
    for (name, agg) in aggs {
        *count += 1;
        if *count > MAX_AGGREGATIONS {
            return invalid_aggregation(format!("more than {MAX_AGGREGATIONS} aggregations"));
        }
        let Some(agg) = agg.as_object() else {
            return invalid_aggregation(format!("{name:?} must be an object"));
        };
        for (kind, params) in agg {
            if !matches!(kind.as_str(), "aggs" | "aggregations" | "filter") && !params.is_object() {
                return invalid_aggregation(format!(
                    "{name:?}: the parameters of {kind:?} must be an object"
                ));
            }
            match kind.as_str() {
                "aggs" | "aggregations" => check_aggregation_level(params, depth + 1, count)?,
                "range" => {
                    let ranges = check_list(name, params, "ranges", MAX_BUCKETS as usize)?;
                    if ranges.is_empty() {
                        return invalid_aggregation(format!(
                            "{name:?}: \"ranges\" must be a non-empty array"
                        ));
                    }
                    for range in ranges {
                        check_number(name, range, "from", false)?;
                        check_number(name, range, "to", false)?;
                    }
                }
                "histogram" => check_histogram(name, params)?,
                "date_histogram" => check_date_histogram(name, params)?,
                "terms" => {
                    check_count(name, params, "size", 1, MAX_BUCKETS)?;
                    check_count(name, params, "segment_size", 1, MAX_BUCKETS)?;
                    check_count(name, params, "shard_size", 1, MAX_BUCKETS)?;
                    check_count(name, params, "min_doc_count", 0, u64::MAX)?;
                }
                "multi_terms" => {
                    let terms = check_list(name, params, "terms", MAX_AGGREGATION_LIST)?;
                    if terms.is_empty() {
                        return invalid_aggregation(format!(
                            "{name:?}: \"terms\" must be a non-empty array of fields"
                        ));
                    }
                    check_count(name, params, "size", 1, MAX_BUCKETS)?;
                    check_count(name, params, "segment_size", 1, MAX_BUCKETS)?;
                    check_count(name, params, "min_doc_count", 0, u64::MAX)?;
                }
                "composite" => {
                    check_count(name, params, "size", 1, MAX_BUCKETS)?;
                    let sources = check_list(name, params, "sources", MAX_AGGREGATION_LIST)?;
                    for source in sources {
                        let Some(source) = source.as_object() else {
                            return invalid_aggregation(format!(
                                "{name:?}: each of \"sources\" must be an object"
                            ));
                        };
                        for (source_name, kinds) in source {
                            let what = format!("{name}.{source_name}");
                            for (kind, params) in kinds.as_object().into_iter().flatten() {
                                match kind.as_str() {
                                    "histogram" => {
                                        check_number(&what, params, "interval", true)?;
                                    }
                                    "date_histogram" => {
                                        check_fixed_interval(&what, params, "fixed_interval")?;
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                }
                "top_hits" => {
                    check_count(name, params, "size", 0, MAX_TOP_HITS)?;
                    check_count(name, params, "from", 0, MAX_TOP_HITS)?;
                    let from = params.get("from").and_then(Value::as_u64).unwrap_or(0);
                    let size = params.get("size").and_then(Value::as_u64).unwrap_or(0);
                    if from + size > MAX_TOP_HITS {
                        return invalid_aggregation(format!(
                            "{name:?}: \"from\" + \"size\" of top_hits must be at most {MAX_TOP_HITS}"
                        ));
                    }
                    check_list(name, params, "sort", MAX_AGGREGATION_LIST)?;
                    check_list(name, params, "docvalue_fields", MAX_AGGREGATION_LIST)?;
                }
                "percentiles" => {
                    for p in check_list(name, params, "percents", MAX_AGGREGATION_LIST)? {
                        if !p.as_f64().is_some_and(|p| (0.0..=100.0).contains(&p)) {
                            return invalid_aggregation(format!(
                                "{name:?}: each of \"percents\" must be a number from 0 to 100, got {p}"
                            ));
                        }
                    }
                    check_number(name, params, "missing", false)?;
                }
                "extended_stats" => {
                    if check_number(name, params, "sigma", false)?.is_some_and(|s| s < 0.0) {
                        return invalid_aggregation(format!(
                            "{name:?}: \"sigma\" must not be negative"
                        ));
                    }
                    check_number(name, params, "missing", false)?;
                }
                "avg" | "min" | "max" | "sum" | "stats" => {
                    check_number(name, params, "missing", false)?;
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
    /// How long the search may run: milliseconds, or a string such as `"500ms"` or `"2s"`.
    /// Default `search.default_timeout_ms`, at most `search.max_timeout_ms`. Past it, the
    /// answer holds what was found and `timed_out: true`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_timeout",
        serialize_with = "serialize_timeout"
    )]
    #[schema(value_type = Option<TimeoutForm>)]
    pub timeout: Option<std::time::Duration>,
}

/// A search timeout: milliseconds, or a duration string (`"500ms"`, `"2s"`, `"1m"`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // described in the OpenAPI document; parsed by `budget::parse_timeout`
enum TimeoutForm {
    Millis(u64),
    Text(String),
}

fn deserialize_timeout<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    budget::parse_timeout(&value)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn serialize_timeout<S: serde::Serializer>(
    timeout: &Option<std::time::Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match timeout {
        Some(t) => serializer.serialize_u64(t.as_millis() as u64),
        None => serializer.serialize_none(),
    }
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
        if let Some(HighlightRequest::Fields { fields, max_chars }) = &self.highlight {
            if *max_chars == 0 || *max_chars > MAX_SNIPPET_CHARS || fields.len() > 100 {
                return Err(Error::InvalidQuery(format!(
                    "highlight: max_chars must be from 1 to {MAX_SNIPPET_CHARS}, and at most 100 fields"
                )));
            }
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
    /// True when the search reached its deadline: `results`, `total` and `aggregations`
    /// hold what was found until then.
    #[serde(default)]
    pub timed_out: bool,
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
    /// True when this shard reached the search's deadline: its lists and total are partial.
    pub timed_out: bool,
}

/// Turns the sort values of `top_hits` aggregations in `result` (tantivy answers the u64 it
/// keeps in its columns: 9223372036854775801 for -7) back into the values the documents
/// hold: numbers for numeric fields, epoch milliseconds for dates (as Elasticsearch), booleans.
/// `field_type` gives each field's type; `request` is the aggregation request `result`
/// answers, walked together with it through buckets and sub-aggregations.
pub fn decode_top_hits_sort(
    request: &Value,
    result: &mut Value,
    field_type: &dyn Fn(&str) -> Option<crate::schema::FieldType>,
) {
    use crate::schema::FieldType;
    use tantivy::columnar::MonotonicallyMappableToU64;
    let Some(request) = request.as_object() else {
        return;
    };
    for (name, agg) in request {
        let Some(answer) = result.get_mut(name) else {
            continue;
        };
        if let Some(sort) = agg["top_hits"]["sort"].as_array() {
            let fields: Vec<Option<&str>> = sort
                .iter()
                .map(|key| {
                    key.as_object()
                        .and_then(|o| o.keys().next())
                        .map(String::as_str)
                })
                .collect();
            for hit in answer["hits"].as_array_mut().into_iter().flatten() {
                for (value, field) in hit["sort"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                    .zip(&fields)
                {
                    let (Some(raw), Some(kind)) = (value.as_u64(), field.and_then(field_type))
                    else {
                        continue;
                    };
                    *value = match kind {
                        FieldType::I64 => Value::from(i64::from_u64(raw)),
                        FieldType::F64 => Value::from(f64::from_u64(raw)),
                        FieldType::Bool => Value::from(bool::from_u64(raw)),
                        FieldType::Date => Value::from(
                            tantivy::DateTime::from_u64(raw).into_timestamp_nanos() / 1_000_000,
                        ),
                        _ => continue,
                    };
                }
            }
        }
        let Some(sub) = agg.get("aggs").or_else(|| agg.get("aggregations")) else {
            continue;
        };
        match answer.get_mut("buckets") {
            Some(Value::Array(buckets)) => {
                for bucket in buckets {
                    decode_top_hits_sort(sub, bucket, field_type);
                }
            }
            Some(Value::Object(buckets)) => {
                for bucket in buckets.values_mut() {
                    decode_top_hits_sort(sub, bucket, field_type);
                }
            }
            // A `filter` aggregation holds its sub-aggregations beside its count.
            _ => decode_top_hits_sort(sub, answer, field_type),
        }
    }
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

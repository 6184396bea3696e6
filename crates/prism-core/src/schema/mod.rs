//! Collection schemas: field types and options, validation, the tantivy schema they map to, and
//! validation of incoming documents against them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tantivy::schema::{
    DateOptions, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, FAST,
    INDEXED, STORED, STRING,
};

use crate::error::{Error, Result};

/// Longest collection name accepted; names become directory names.
pub const MAX_COLLECTION_NAME_LEN: usize = 64;
/// Longest document id accepted, in bytes.
pub const MAX_ID_LEN: usize = 512;
/// Largest vector dimension accepted.
pub const MAX_VECTOR_DIMENSION: usize = 4096;

/// Names of the internal tantivy fields. User field names may not start with `_`.
pub mod original;

/// The files of `dir` (not its subdirectories) whose extension is one of `extensions`, in
/// file-name order: how schema and pipeline directories are read.
pub fn files_with_extensions(
    dir: &std::path::Path,
    extensions: &[&str],
) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| extensions.contains(&e))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

pub mod internal {
    pub const ID: &str = "_id";
    pub const KEY: &str = "_key";
    pub const VECTORS: &str = "_vec";
    pub const SOURCE: &str = "_source";
    /// `rank::id_hash` of `_id`, a fast column that breaks ties between equal scores.
    pub const ID_HASH: &str = "_idhash";
    /// `shard::content_hash` of the document (id, stored fields, vectors): summed over the
    /// live documents it gives the shard's content checksum.
    pub const CONTENT_HASH: &str = "_hash";
    /// The document's vectors as written (postcard of `(field, f32 values)` pairs), in shards
    /// of [`super::SchemaGeneration::WithRawVectors`] only: a second copy of every vector,
    /// which the vector index's norms made unnecessary.
    pub const RAW_VECTORS: &str = "_rawvec";
}

/// The tantivy schemas shards were created with, newest first. A tantivy index cannot gain a
/// field, so a shard keeps the generation it was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaGeneration {
    /// With `_idhash` and `_hash`; GET reads vectors from the vector index.
    Current,
    /// With `_rawvec` as well: documents written then keep their vectors in the text index,
    /// which GET reads; later documents' come from the vector index.
    WithRawVectors,
    /// Before `_idhash` and `_hash`.
    BeforeIdHash,
}

/// The type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Text,
    Keyword,
    I64,
    U64,
    F64,
    Bool,
    Date,
    Vector,
}

/// Distance function of a vector field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    #[default]
    Cosine,
    Dot,
    L2,
}

/// One field of a collection, as the user declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Searchable. Default true.
    #[serde(default = "default_true")]
    pub indexed: bool,
    /// Returned in results. Default true.
    #[serde(default = "default_true")]
    pub stored: bool,
    /// Column-oriented, for aggregations and sorting. Default true for keyword, numeric, bool
    /// and date fields, false for text and vector fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast: Option<bool>,
    /// Text analyzer: `en` (default: lower case, English stop words and stemming), `en_stem`
    /// (no stop words), `default` (lower case only), `whitespace`, `raw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analyzer: Option<String>,
    /// Vector fields: number of dimensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4096)]
    pub dimension: Option<usize>,
    /// Vector fields: distance function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance: Option<Distance>,
    /// Vector fields: HNSW graph degree. Default 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 2, maximum = 128)]
    pub m: Option<usize>,
    /// Vector fields: HNSW build-time candidate list size. Default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4096)]
    pub ef_construction: Option<usize>,
    /// Vector fields: HNSW search-time candidate list size. Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4096)]
    pub ef_search: Option<usize>,
}

fn default_true() -> bool {
    true
}
fn default_one() -> u32 {
    1
}

/// Resolved HNSW parameters of a vector field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VectorParams {
    pub dimension: usize,
    pub distance: Distance,
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
}

impl FieldDef {
    pub fn is_fast(&self) -> bool {
        self.fast.unwrap_or(!matches!(
            self.field_type,
            FieldType::Text | FieldType::Vector
        ))
    }

    pub fn analyzer(&self) -> &str {
        self.analyzer.as_deref().unwrap_or("en")
    }

    /// HNSW parameters, for vector fields.
    pub fn vector_params(&self) -> Option<VectorParams> {
        (self.field_type == FieldType::Vector).then(|| VectorParams {
            dimension: self.dimension.unwrap_or(0),
            distance: self.distance.unwrap_or_default(),
            m: self.m.unwrap_or(16),
            ef_construction: self.ef_construction.unwrap_or(200),
            ef_search: self.ef_search.unwrap_or(64),
        })
    }
}

/// A collection's schema and settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionSchema {
    pub name: String,
    pub fields: BTreeMap<String, FieldDef>,
    /// Number of shards the collection is split into. Default 1.
    #[serde(default = "default_one")]
    #[schema(minimum = 1, maximum = 1024)]
    pub shards: u32,
    /// Copies of each shard in a cluster. Default 1.
    #[serde(default = "default_one")]
    #[schema(minimum = 1, maximum = 16)]
    pub replication_factor: u32,
    /// Schema version, raised by every accepted change.
    #[serde(default = "default_one")]
    pub version: u32,
    /// Free text about the collection (the original Prism's `description`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Text analyzers a text field may name.
pub const ANALYZERS: &[&str] = &["en", "en_stem", "default", "whitespace", "raw"];

/// Checks that a collection name is safe to use as a directory name and in URLs.
pub fn validate_collection_name(name: &str) -> Result<()> {
    let fail = |reason: &str| {
        Err(Error::InvalidCollectionName {
            name: name.chars().take(80).collect(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return fail("the name is empty");
    }
    if name.len() > MAX_COLLECTION_NAME_LEN {
        return fail(&format!(
            "the name is {} characters long; the limit is {MAX_COLLECTION_NAME_LEN}",
            name.len()
        ));
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or('_');
    if !first.is_ascii_alphanumeric() {
        return fail("the name must start with a letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return fail("use only letters, digits, '_' and '-'");
    }
    Ok(())
}

fn validate_field_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('_')
        // tantivy refuses (with a panic) field names that start with '-'.
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSchema(format!(
            "field name {name:?} is invalid: use 1-128 letters, digits, '_' or '-', not starting with '_' or '-'"
        )))
    }
}

impl CollectionSchema {
    /// Parses a schema from JSON, reporting serde's message (unknown types, typos) clearly.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        let value = parse_json_strict(body).map_err(|e| Error::InvalidSchema(e.to_string()))?;
        Self::from_value(value)
    }

    /// Parses a schema from YAML (the `--schemas-dir` format).
    pub fn from_yaml(text: &str) -> Result<Self> {
        let value: Value =
            serde_yaml_ng::from_str(text).map_err(|e| Error::InvalidSchema(e.to_string()))?;
        Self::from_value(value)
    }

    /// A schema in this crate's format, or in the original Prism's (`collection:` and
    /// `backends:`, see [`original`]), validated.
    fn from_value(value: Value) -> Result<Self> {
        let schema = if original::is_original(&value) {
            original::convert(value)?
        } else {
            serde_json::from_value(value).map_err(|e| Error::InvalidSchema(e.to_string()))?
        };
        schema.validate()?;
        Ok(schema)
    }

    /// Checks every rule a schema must satisfy before a collection is created from it.
    pub fn validate(&self) -> Result<()> {
        validate_collection_name(&self.name)?;
        if self.fields.is_empty() {
            return Err(Error::InvalidSchema(
                "a collection needs at least one field".into(),
            ));
        }
        if self.fields.len() > 1000 {
            return Err(Error::InvalidSchema(
                "at most 1000 fields are allowed".into(),
            ));
        }
        if !(1..=1024).contains(&self.shards) {
            return Err(Error::InvalidSchema(
                "shards must be between 1 and 1024".into(),
            ));
        }
        if !(1..=16).contains(&self.replication_factor) {
            return Err(Error::InvalidSchema(
                "replication_factor must be between 1 and 16".into(),
            ));
        }
        for (name, def) in &self.fields {
            validate_field_name(name)?;
            let bad = |msg: String| Err(Error::InvalidSchema(format!("field {name:?}: {msg}")));
            let vector_only = def.dimension.is_some()
                || def.distance.is_some()
                || def.m.is_some()
                || def.ef_construction.is_some()
                || def.ef_search.is_some();
            if def.field_type != FieldType::Vector && vector_only {
                return bad("dimension, distance, m, ef_construction and ef_search apply to vector fields only".into());
            }
            if def.analyzer.is_some() && def.field_type != FieldType::Text {
                return bad("analyzer applies to text fields only".into());
            }
            if !ANALYZERS.contains(&def.analyzer()) {
                return bad(format!(
                    "unknown analyzer {:?}; choose one of {ANALYZERS:?}",
                    def.analyzer()
                ));
            }
            if let Some(p) = def.vector_params() {
                if def.dimension.is_none() {
                    return bad("vector fields need a dimension".into());
                }
                if !(1..=MAX_VECTOR_DIMENSION).contains(&p.dimension) {
                    return bad(format!(
                        "dimension must be between 1 and {MAX_VECTOR_DIMENSION}"
                    ));
                }
                if !(2..=128).contains(&p.m) {
                    return bad("m must be between 2 and 128".into());
                }
                if !(1..=4096).contains(&p.ef_construction) || !(1..=4096).contains(&p.ef_search) {
                    return bad("ef_construction and ef_search must be between 1 and 4096".into());
                }
                if def.fast == Some(true) {
                    return bad("vector fields cannot be fast".into());
                }
            }
        }
        Ok(())
    }

    /// Vector fields in name order, with their parameters.
    pub fn vector_fields(&self) -> impl Iterator<Item = (&str, VectorParams)> {
        self.fields
            .iter()
            .filter_map(|(n, d)| d.vector_params().map(|p| (n.as_str(), p)))
    }

    /// Indexed text fields, the default targets of a query string.
    pub fn text_fields(&self) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(_, d)| d.field_type == FieldType::Text && d.indexed)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The tantivy schema this collection's new shards use.
    pub fn tantivy_schema(&self) -> Schema {
        self.tantivy_schema_of(SchemaGeneration::Current)
    }

    /// The tantivy schema of shards made before the `_idhash` and `_hash` columns existed.
    /// Such an index still opens and ranks alike (it hashes `_id` when it needs a tie-break);
    /// it reports no content checksum.
    pub fn tantivy_schema_before_id_hash(&self) -> Schema {
        self.tantivy_schema_of(SchemaGeneration::BeforeIdHash)
    }

    /// The tantivy schema of one generation of shards.
    pub fn tantivy_schema_of(&self, generation: SchemaGeneration) -> Schema {
        let id_hash = generation != SchemaGeneration::BeforeIdHash;
        let raw_vectors = generation == SchemaGeneration::WithRawVectors;
        let mut b = Schema::builder();
        b.add_text_field(internal::ID, STRING | STORED | FAST);
        b.add_u64_field(internal::KEY, INDEXED | FAST);
        b.add_text_field(internal::VECTORS, STRING);
        b.add_text_field(internal::SOURCE, STORED);
        if id_hash {
            b.add_u64_field(internal::ID_HASH, FAST);
            b.add_u64_field(internal::CONTENT_HASH, FAST);
        }
        if raw_vectors {
            b.add_bytes_field(internal::RAW_VECTORS, STORED);
        }
        for (name, def) in &self.fields {
            match def.field_type {
                FieldType::Text | FieldType::Keyword => {
                    let (tokenizer, record) = if def.field_type == FieldType::Text {
                        (def.analyzer(), IndexRecordOption::WithFreqsAndPositions)
                    } else {
                        ("raw", IndexRecordOption::Basic)
                    };
                    let mut opts = TextOptions::default();
                    if def.indexed {
                        opts = opts.set_indexing_options(
                            TextFieldIndexing::default()
                                .set_tokenizer(tokenizer)
                                .set_index_option(record),
                        );
                    }
                    if def.is_fast() {
                        opts = opts.set_fast("raw");
                    }
                    b.add_text_field(name, opts);
                }
                FieldType::I64 | FieldType::U64 | FieldType::F64 | FieldType::Bool => {
                    let mut opts = NumericOptions::default();
                    if def.indexed {
                        opts = opts.set_indexed();
                    }
                    if def.is_fast() {
                        opts = opts.set_fast();
                    }
                    match def.field_type {
                        FieldType::I64 => b.add_i64_field(name, opts),
                        FieldType::U64 => b.add_u64_field(name, opts),
                        FieldType::F64 => b.add_f64_field(name, opts),
                        _ => b.add_bool_field(name, opts),
                    };
                }
                FieldType::Date => {
                    let mut opts = DateOptions::default();
                    if def.indexed {
                        opts = opts.set_indexed();
                    }
                    if def.is_fast() {
                        opts = opts.set_fast();
                    }
                    b.add_date_field(name, opts);
                }
                FieldType::Vector => {}
            }
        }
        b.build()
    }

    /// Validates one incoming document and splits it into the parts the log stores.
    /// Takes the document by value so that field values move into the result uncopied.
    pub fn prepare_document(&self, doc: Value) -> Result<PreparedDoc> {
        let Value::Object(mut obj) = doc else {
            return Err(Error::InvalidDocument {
                id: String::new(),
                message: "a document must be a JSON object with \"id\" and \"fields\"".into(),
            });
        };
        let id = match obj.get("id") {
            Some(value) => document_id(value).map_err(|message| Error::InvalidDocument {
                id: String::new(),
                message,
            })?,
            None => {
                return Err(Error::InvalidDocument {
                    id: String::new(),
                    message: "the document has no \"id\"".into(),
                })
            }
        };
        let invalid = |message: String| Error::InvalidDocument {
            id: id.clone(),
            message,
        };
        for key in obj.keys() {
            if key != "id" && key != "fields" {
                return Err(invalid(format!(
                    "unexpected key {key:?}: a document is {{\"id\": ..., \"fields\": {{...}}}}"
                )));
            }
        }
        let fields = match obj.remove("fields") {
            Some(Value::Object(f)) => f,
            None => return Err(invalid("the document has no \"fields\" object".into())),
            Some(_) => return Err(invalid("\"fields\" must be a JSON object".into())),
        };
        let mut source = Map::new();
        let mut vectors = Vec::new();
        for (name, value) in fields {
            let def = self.fields.get(&name).ok_or_else(|| {
                invalid(format!(
                    "field {name:?} is not in the schema of collection {:?}",
                    self.name
                ))
            })?;
            if value.is_null() {
                continue;
            }
            if let Some(params) = def.vector_params() {
                let vector = parse_vector(&name, &value, &params).map_err(invalid)?;
                vectors.push((name, vector));
            } else {
                check_value(&name, def.field_type, &value).map_err(invalid)?;
                source.insert(name, value);
            }
        }
        Ok(PreparedDoc {
            id,
            source,
            vectors,
        })
    }
}

/// The id a document's `"id"` value names, or why it names none.
///
/// A string of 1 to [`MAX_ID_LEN`] bytes is the id. A JSON number is kept exactly as its
/// digits were sent, so it must be an integer in `i64::MIN..=u64::MAX` written without a
/// fraction or an exponent: serde_json (built without `arbitrary_precision`) reads any other
/// number as an `f64`, whose text is not what was sent (`1e2` reads as `100.0`) and which
/// rounds large integers, so that two distinct ids would collapse into one document. Such a
/// number is refused rather than rounded. A `-0` is read as an `f64` too, and refused.
pub fn document_id(value: &Value) -> std::result::Result<String, String> {
    match value {
        Value::String(s) if !s.is_empty() && s.len() <= MAX_ID_LEN => Ok(s.clone()),
        Value::String(_) => Err(format!("\"id\" must be 1 to {MAX_ID_LEN} bytes long")),
        // `is_f64` is the only way serde_json reads a number that is not an exact integer
        // of i64 or u64; the digits of any other one are exactly its decimal text.
        Value::Number(n) if !n.is_f64() => Ok(n.to_string()),
        Value::Number(_) => Err(NUMERIC_ID_RULE.into()),
        _ => Err("\"id\" must be a string or an integer".into()),
    }
}

/// Why a numeric id was refused: the rule, and what to send instead.
pub const NUMERIC_ID_RULE: &str = "a numeric \"id\" is kept as its digits, so it must be an integer from -9223372036854775808 to 18446744073709551615 written without a fraction or an exponent; send any other id as a JSON string";

/// A validated document: its id, its non-vector fields, and its vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedDoc {
    pub id: String,
    #[serde(with = "json_map")]
    pub source: Map<String, Value>,
    pub vectors: Vec<(String, Vec<f32>)>,
}

/// serde_json values cannot pass through non-self-describing codecs, so the map travels as text.
mod json_map {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::{Map, Value};

    pub fn serialize<S: Serializer>(map: &Map<String, Value>, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(map).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

fn parse_vector(name: &str, value: &Value, params: &VectorParams) -> Result<Vec<f32>, String> {
    let arr = value
        .as_array()
        .ok_or_else(|| format!("field {name:?} must be an array of numbers"))?;
    if arr.len() != params.dimension {
        return Err(format!(
            "field {name:?} expects {} dimensions, got {}",
            params.dimension,
            arr.len()
        ));
    }
    let mut out = Vec::with_capacity(arr.len());
    for (i, v) in arr.iter().enumerate() {
        let x = v
            .as_f64()
            .ok_or_else(|| format!("field {name:?}: element {i} is not a number"))?;
        let x = x as f32;
        if !x.is_finite() {
            return Err(format!(
                "field {name:?}: element {i} is not a finite 32-bit float"
            ));
        }
        out.push(x);
    }
    crate::vector::check_vector_magnitude(&out, params.distance)
        .map_err(|why| format!("field {name:?}: {why}"))?;
    Ok(out)
}

fn check_value(name: &str, ty: FieldType, value: &Value) -> Result<(), String> {
    if let Value::Array(items) = value {
        for item in items {
            if item.is_array() {
                return Err(format!("field {name:?}: nested arrays are not allowed"));
            }
            check_value(name, ty, item)?;
        }
        return Ok(());
    }
    let ok = match ty {
        FieldType::Keyword => match value.as_str() {
            Some(s) if s.len() > MAX_KEYWORD_BYTES => {
                return Err(format!(
                    "field {name:?}: a keyword is at most {MAX_KEYWORD_BYTES} bytes, this one is {}; use a text field for long values",
                    s.len()
                ))
            }
            Some(_) => true,
            None => false,
        },
        FieldType::Text => value.is_string(),
        FieldType::I64 => value.as_i64().is_some(),
        FieldType::U64 => value.as_u64().is_some(),
        FieldType::F64 => value.as_f64().is_some_and(f64::is_finite),
        FieldType::Bool => value.is_boolean(),
        FieldType::Date => {
            return parse_date(value)
                .map(|_| ())
                .map_err(|e| format!("field {name:?}: {e}"))
        }
        FieldType::Vector => false,
    };
    if ok {
        Ok(())
    } else {
        let expected = match ty {
            FieldType::Text | FieldType::Keyword => "a string",
            FieldType::I64 => "a signed 64-bit integer",
            FieldType::U64 => "an unsigned 64-bit integer",
            FieldType::F64 => "a finite number",
            FieldType::Bool => "true or false",
            _ => "a value",
        };
        Err(format!("field {name:?} must be {expected}, got {value}"))
    }
}

/// A date is an RFC 3339 string or whole seconds since the Unix epoch.
pub fn parse_date(value: &Value) -> Result<tantivy::DateTime, String> {
    // tantivy stores nanoseconds in an i64: 1677-09-21 to 2262-04-11.
    const RANGE: &str = "dates must lie between 1677-09-22 and 2262-04-11 (64-bit nanoseconds)";
    match value {
        Value::String(s) => {
            let date =
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| format!("{s:?} is not an RFC 3339 date: {e}"))?;
            let nanos = i64::try_from(date.unix_timestamp_nanos())
                .map_err(|_| format!("{s:?} is out of range: {RANGE}"))?;
            Ok(tantivy::DateTime::from_timestamp_nanos(nanos))
        }
        Value::Number(n) => {
            let secs = n
                .as_i64()
                .ok_or_else(|| format!("{n} is not whole seconds since the epoch"))?;
            let nanos = secs
                .checked_mul(1_000_000_000)
                .ok_or_else(|| format!("{n} seconds since the epoch is out of range: {RANGE}"))?;
            Ok(tantivy::DateTime::from_timestamp_nanos(nanos))
        }
        other => Err(format!(
            "a date must be an RFC 3339 string or epoch seconds, got {other}"
        )),
    }
}

/// The longest keyword tantivy indexes; a longer term would be dropped without a word.
pub const MAX_KEYWORD_BYTES: usize = 65_530;

/// Parses JSON, refusing an object that names a key twice (serde_json keeps the last one,
/// which would silently change a document's id or a schema's field).
pub fn parse_json_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let StrictValue(value) = serde_json::from_slice(bytes)?;
    Ok(value)
}

struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        serde::Deserialize::deserialize(d).map(|StrictValue(v)| v)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} appears twice in one object"
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    fn articles() -> CollectionSchema {
        CollectionSchema::from_json(
            br#"{"name":"articles","fields":{"title":{"type":"text"},"tag":{"type":"keyword"},
            "year":{"type":"i64","fast":true},
            "embedding":{"type":"vector","dimension":3,"distance":"cosine"}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn issue_example_schema_parses_with_defaults() {
        let s = articles();
        assert_eq!(s.shards, 1);
        assert_eq!(s.replication_factor, 1);
        let p = s.fields["embedding"].vector_params().unwrap();
        assert_eq!(
            (p.dimension, p.m, p.ef_construction, p.ef_search),
            (3, 16, 200, 64)
        );
        assert!(s.fields["tag"].is_fast());
        assert!(!s.fields["title"].is_fast());
    }

    #[test]
    fn collection_names_are_safe() {
        for bad in ["", "../x", "a/b", ".hidden", "x y", &"a".repeat(300), "_x"] {
            assert!(validate_collection_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "articles", "my-coll_2", &"a".repeat(64)] {
            validate_collection_name(good).unwrap();
        }
    }

    #[test]
    fn bad_schemas_are_refused_with_reasons() {
        let cases = [
            (
                r#"{"name":"x","fields":{"a":{"type":"blob"}}}"#,
                "unknown variant",
            ),
            (r#"{"name":"x","fields":{}}"#, "at least one field"),
            (
                r#"{"name":"x","fields":{"v":{"type":"vector"}}}"#,
                "need a dimension",
            ),
            (
                r#"{"name":"x","fields":{"v":{"type":"vector","dimension":0}}}"#,
                "dimension must be",
            ),
            (
                r#"{"name":"x","fields":{"a":{"type":"text","dimension":3}}}"#,
                "vector fields only",
            ),
            (
                r#"{"name":"x","fields":{"_a":{"type":"text"}}}"#,
                "not starting with '_'",
            ),
            (
                r#"{"name":"x","fields":{"a":{"type":"text","analyzer":"klingon"}}}"#,
                "unknown analyzer",
            ),
            (
                r#"{"name":"x","fields":{"a":{"type":"text","tpyo":1}}}"#,
                "unknown field",
            ),
            (
                r#"{"name":"x","shards":0,"fields":{"a":{"type":"text"}}}"#,
                "shards",
            ),
        ];
        for (body, needle) in cases {
            let err = CollectionSchema::from_json(body.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn documents_are_validated_per_field() {
        let s = articles();
        let ok = s
            .prepare_document(
                json!({"id":"a","fields":{"title":"t","year":2020,"embedding":[1,0,0]}}),
            )
            .unwrap();
        assert_eq!(
            ok.vectors,
            vec![("embedding".to_string(), vec![1.0, 0.0, 0.0])]
        );
        assert!(!ok.source.contains_key("embedding"));
        let cases = [
            (json!({"fields":{"title":"t"}}), "no \"id\""),
            (json!({"id":"","fields":{}}), "1 to 512"),
            (
                json!({"id":"a","fields":{"embedding":[1,0]}}),
                "expects 3 dimensions, got 2",
            ),
            (
                json!({"id":"a","fields":{"embedding":[0,0,0]}}),
                "zero vector",
            ),
            (
                json!({"id":"a","fields":{"embedding":["x",0,0]}}),
                "not a number",
            ),
            (json!({"id":"a","fields":{"year":"old"}}), "signed 64-bit"),
            (json!({"id":"a","fields":{"nope":1}}), "not in the schema"),
            (json!({"id":"a","fields":[]}), "must be a JSON object"),
        ];
        for (doc, needle) in cases {
            let err = s.prepare_document(doc.clone()).unwrap_err().to_string();
            assert!(err.contains(needle), "{doc}: {err}");
        }
    }

    #[test]
    fn prepared_docs_survive_the_binary_log_codec() {
        let s = articles();
        let doc = s
            .prepare_document(
                json!({"id":"a","fields":{"title":"héllo","tag":["x","y"],"embedding":[0.5,1,2]}}),
            )
            .unwrap();
        let bytes = postcard::to_stdvec(&doc).unwrap();
        let back: PreparedDoc = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, doc);
        // Found by fuzzing: without serde_json's float_roundtrip this number came back one
        // ULP off, so a replayed document differed from the one indexed live.
        let float_schema =
            CollectionSchema::from_json(br#"{"name":"f","fields":{"price":{"type":"f64"}}}"#)
                .unwrap();
        let doc = float_schema
            .prepare_document(
                serde_json::from_str(r#"{"id":"a","fields":{"price":0.118446744073709551615}}"#)
                    .unwrap(),
            )
            .unwrap();
        let back: PreparedDoc = postcard::from_bytes(&postcard::to_stdvec(&doc).unwrap()).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn field_names_tantivy_refuses_are_refused_first() {
        for name in ["-a", "_a", ""] {
            let body = format!(r#"{{"name":"x","fields":{{"{name}":{{"type":"text"}}}}}}"#);
            let e = CollectionSchema::from_json(body.as_bytes()).unwrap_err();
            assert_eq!(e.code(), "invalid_schema", "{name:?}");
        }
        assert!(
            CollectionSchema::from_json(br#"{"name":"x","fields":{"a-b":{"type":"text"}}}"#)
                .is_ok()
        );
    }

    #[test]
    fn dates_accept_rfc3339_and_epoch_seconds() {
        assert_eq!(
            parse_date(&json!("1970-01-01T00:01:00Z")).unwrap(),
            parse_date(&json!(60)).unwrap()
        );
        assert!(parse_date(&json!("yesterday")).is_err());
    }

    #[test]
    fn dates_outside_tantivys_range_are_refused_not_wrapped() {
        assert!(parse_date(&json!(0)).is_ok());
        assert!(parse_date(&json!(9_223_372_036i64)).is_ok());
        assert!(parse_date(&json!(10_000_000_000i64)).is_err());
        assert!(parse_date(&json!(-10_000_000_000i64)).is_err());
        assert!(parse_date(&json!("2262-04-11T00:00:00Z")).is_ok());
        assert!(parse_date(&json!("9999-01-01T00:00:00Z")).is_err());
        assert!(parse_date(&json!("1600-01-01T00:00:00Z")).is_err());
        let d = parse_date(&json!(1_700_000_000i64)).unwrap();
        assert_eq!(d.into_timestamp_secs(), 1_700_000_000);
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_json_strict(br#"{"a": 1, "b": {"c": [1, {"d": 2}]}}"#).is_ok());
        for bad in [
            &br#"{"a": 1, "a": 2}"#[..],
            br#"{"x": {"id": "p", "id": "q"}}"#,
            br#"[{"k": 1, "k": 1}]"#,
        ] {
            assert!(
                parse_json_strict(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let e = CollectionSchema::from_json(
            br#"{"name":"d","fields":{"a":{"type":"text"},"a":{"type":"i64"}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), "invalid_schema");
        assert!(e.to_string().contains("twice"), "{e}");
    }

    #[test]
    fn a_keyword_past_tantivys_term_limit_is_refused() {
        let s = articles();
        let ok = s
            .prepare_document(json!({"id": "k", "fields": {"tag": "k".repeat(MAX_KEYWORD_BYTES)}}));
        assert!(ok.is_ok());
        let e = s
            .prepare_document(
                json!({"id": "k", "fields": {"tag": "k".repeat(MAX_KEYWORD_BYTES + 1)}}),
            )
            .unwrap_err();
        assert_eq!(e.code(), "invalid_document");
    }

    /// The seed of a randomized property test: `PRISM_PROPTEST_SEED`, or a fixed default so
    /// that CI runs the same cases; printed, so that a failure can be replayed.
    pub(crate) fn property_seed(test: &str) -> u64 {
        let seed = std::env::var("PRISM_PROPTEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(18);
        eprintln!("{test}: seed {seed} (PRISM_PROPTEST_SEED={seed} replays it)");
        seed
    }

    /// The text of a random JSON number: an i64, a u64, a long run of digits (beyond u64),
    /// a fraction, an exponent, or a negative zero.
    fn random_number_text(rng: &mut impl rand::Rng) -> String {
        let digits = |rng: &mut dyn rand::RngCore, n: usize| -> String {
            let mut out = String::new();
            for i in 0..n {
                let first = i == 0 && n > 1;
                out.push(char::from(
                    b'0' + rand::Rng::gen_range(rng, u8::from(first)..10),
                ));
            }
            out
        };
        let sign = |rng: &mut dyn rand::RngCore| {
            if rand::Rng::gen_bool(rng, 0.5) {
                "-"
            } else {
                ""
            }
        };
        match rng.gen_range(0..9) {
            0 => rng.gen::<i64>().to_string(),
            1 => rng.gen::<u64>().to_string(),
            2 => [
                i64::MIN.to_string(),
                i64::MAX.to_string(),
                u64::MAX.to_string(),
            ][rng.gen_range(0..3)]
            .clone(),
            // Around the edges of u64 and i64: one past them, and their neighbours.
            3 => {
                let edge = [u128::from(u64::MAX), 1u128 << 63][rng.gen_range(0..2)];
                let n = edge - 2 + u128::from(rng.gen_range(0u8..5));
                format!("{}{n}", sign(rng))
            }
            4 => {
                let n = rng.gen_range(1..45);
                format!("{}{}", sign(rng), digits(rng, n))
            }
            5 => {
                let (a, b) = (rng.gen_range(1..20), rng.gen_range(1..20));
                format!("{}{}.{}", sign(rng), digits(rng, a), digits(rng, b))
            }
            6 => {
                let a = rng.gen_range(1..20);
                let e = ["e", "E", "e+", "e-", "E-"][rng.gen_range(0..5)];
                format!("{}{}{e}{}", sign(rng), digits(rng, a), rng.gen_range(0..30))
            }
            7 => {
                let (a, b) = (rng.gen_range(1..5), rng.gen_range(1..5));
                format!(
                    "{}{}.{}e{}",
                    sign(rng),
                    digits(rng, a),
                    digits(rng, b),
                    rng.gen_range(0..400)
                )
            }
            _ => ["-0", "0", "-0.0", "0.0", "0e0", "1.0", "1e2", "-1"][rng.gen_range(0..8)]
                .to_string(),
        }
    }

    /// Property: a numeric id either comes back as exactly the digits sent, or is refused
    /// with the rule; an integer that fits i64 or u64 is never refused, and anything else
    /// (fraction, exponent, beyond u64, negative zero) never accepted.
    #[test]
    fn numeric_ids_are_kept_exactly_as_sent_or_refused() {
        use rand::SeedableRng;
        let seed = property_seed("numeric_ids_are_kept_exactly_as_sent_or_refused");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let s = articles();
        let (mut kept, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let text = random_number_text(&mut rng);
            let body = format!(r#"{{"id": {text}, "fields": {{}}}}"#);
            let exact_integer = !text.contains(['.', 'e', 'E'])
                && text != "-0"
                && (text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok());
            // Both parsers a request can meet: the server's strict one and serde_json's own.
            // A number past f64's range is no JSON they take (`malformed_json`): never an id.
            let values = match parse_json_strict(body.as_bytes()) {
                Ok(strict) => vec![strict, serde_json::from_str(&body).unwrap()],
                Err(e) => {
                    assert!(e.to_string().contains("number out of range"), "{body}: {e}");
                    assert!(!exact_integer, "{body} was refused: {e}");
                    refused += 1;
                    continue;
                }
            };
            for value in values {
                match s.prepare_document(value) {
                    Ok(doc) => {
                        assert_eq!(doc.id, text, "{body} was stored under another id");
                        assert!(exact_integer, "{body} was accepted");
                        kept += 1;
                    }
                    Err(e) => {
                        assert_eq!(e.code(), "invalid_document");
                        assert!(e.to_string().contains(NUMERIC_ID_RULE), "{body}: {e}");
                        assert!(!exact_integer, "{body} was refused: {e}");
                        refused += 1;
                    }
                }
            }
        }
        // Both sides of the property were exercised.
        assert!(
            kept > 5_000 && refused > 5_000,
            "kept {kept}, refused {refused}"
        );
    }

    #[test]
    fn ids_that_fit_no_integer_are_refused_not_merged() {
        let s = articles();
        let id = |text: &str| {
            s.prepare_document(
                parse_json_strict(format!(r#"{{"id": {text}, "fields": {{}}}}"#).as_bytes())
                    .unwrap(),
            )
            .map(|d| d.id)
            .map_err(|e| e.to_string())
        };
        assert_eq!(id("18446744073709551615").unwrap(), "18446744073709551615");
        assert_eq!(id("-9223372036854775808").unwrap(), "-9223372036854775808");
        assert_eq!(id("3").unwrap(), "3");
        // Once two distinct documents that rounded through f64 to one.
        for text in [
            "123456789012345678901234567890",
            "123456789012345678901234567891",
            "18446744073709551616",
            "1e2",
            "100.0",
            "0.5",
            "-0",
            "-9223372036854775809",
        ] {
            let e = id(text).unwrap_err();
            assert!(
                e.contains("send any other id as a JSON string"),
                "{text}: {e}"
            );
        }
        assert!(id("true")
            .unwrap_err()
            .contains("must be a string or an integer"));
        assert!(id("null")
            .unwrap_err()
            .contains("must be a string or an integer"));
    }
}

//! The schema format of the original Prism (`mikalv/prism` 0.6), read as it is:
//!
//! ```yaml
//! collection: articles
//! description: News articles
//! backends:
//!   text:
//!     fields:
//!       - {name: title, type: text, stored: true, indexed: true}
//!       - {name: category, type: string, stored: true, indexed: true}
//!   vector:
//!     embedding_field: embedding
//!     dimension: 384
//!     distance: cosine
//! ```
//!
//! It becomes a [`CollectionSchema`]. What the original configures and Prism does not
//! implement is refused by name, never ignored.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{CollectionSchema, Distance, FieldDef, FieldType};
use crate::error::{Error, Result};

/// Whether `value` is a schema in the original's format: it names its collection with
/// `collection` (this crate's format says `name`).
pub fn is_original(value: &Value) -> bool {
    value.get("collection").is_some() && value.get("name").is_none()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Original {
    collection: String,
    #[serde(default)]
    description: Option<String>,
    backends: Backends,
    #[serde(default)]
    embedding_generation: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Backends {
    #[serde(default)]
    text: Option<TextBackend>,
    #[serde(default)]
    vector: Option<VectorBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextBackend {
    fields: Vec<TextField>,
    #[serde(default)]
    bm25_k1: Option<f64>,
    #[serde(default)]
    bm25_b: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextField {
    name: String,
    #[serde(rename = "type")]
    field_type: String,
    // The original's defaults: neither stored nor indexed unless said.
    #[serde(default)]
    stored: bool,
    #[serde(default)]
    indexed: bool,
    #[serde(default)]
    tokenizer: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorBackend {
    embedding_field: String,
    dimension: usize,
    #[serde(default)]
    distance: Option<String>,
    #[serde(default)]
    hnsw_m: Option<usize>,
    #[serde(default)]
    hnsw_ef_construction: Option<usize>,
    #[serde(default)]
    hnsw_ef_search: Option<usize>,
}

/// tantivy's BM25 constants, the only ones Prism ranks with.
const BM25_K1: f64 = 1.2;
const BM25_B: f64 = 0.75;
/// The original's `hnsw_ef_search` default (this crate's is 64).
const ORIGINAL_EF_SEARCH: usize = 100;

fn invalid(message: String) -> Error {
    Error::InvalidSchema(message)
}

/// Reads a schema of the original's format.
pub fn convert(value: Value) -> Result<CollectionSchema> {
    let original: Original = serde_json::from_value(value).map_err(|e| {
        invalid(format!(
            "{e} (a schema with `collection:` is read in the original Prism's format: collection, description, backends.text.fields, backends.vector)"
        ))
    })?;
    if original.embedding_generation.is_some() {
        return Err(invalid(
            "`embedding_generation` is not supported: Prism does not compute embeddings; send each document's vector in its `backends.vector.embedding_field` and remove the section".into(),
        ));
    }
    let mut fields = BTreeMap::new();
    if let Some(text) = original.backends.text {
        for (key, value, expected) in [
            ("bm25_k1", text.bm25_k1, BM25_K1),
            ("bm25_b", text.bm25_b, BM25_B),
        ] {
            if let Some(v) = value.filter(|v| (v - expected).abs() > 1e-9) {
                return Err(invalid(format!(
                    "`{key}: {v}` is not supported: Prism ranks with BM25 k1 = {BM25_K1} and b = {BM25_B} (tantivy's) until BM25 parameters are configurable; remove `{key}` or set it to {expected}"
                )));
            }
        }
        for field in text.fields {
            let def = text_field(&field)?;
            if fields.insert(field.name.clone(), def).is_some() {
                return Err(invalid(format!("field {:?} is declared twice", field.name)));
            }
        }
    }
    if let Some(vector) = original.backends.vector {
        let distance = match vector.distance.as_deref() {
            None | Some("cosine") => Distance::Cosine,
            Some("euclidean") => Distance::L2,
            Some("dot") => Distance::Dot,
            Some(other) => {
                return Err(invalid(format!(
                    "vector distance {other:?} is not one of cosine, euclidean, dot"
                )))
            }
        };
        let def = FieldDef {
            field_type: FieldType::Vector,
            indexed: true,
            stored: true,
            fast: None,
            analyzer: None,
            dimension: Some(vector.dimension),
            distance: Some(distance),
            m: vector.hnsw_m,
            ef_construction: vector.hnsw_ef_construction,
            ef_search: Some(vector.hnsw_ef_search.unwrap_or(ORIGINAL_EF_SEARCH)),
        };
        if fields.insert(vector.embedding_field.clone(), def).is_some() {
            return Err(invalid(format!(
                "the embedding field {:?} is also a text field",
                vector.embedding_field
            )));
        }
    }
    Ok(CollectionSchema {
        name: original.collection,
        fields,
        shards: 1,
        replication_factor: 1,
        version: 1,
        description: original.description,
    })
}

fn text_field(field: &TextField) -> Result<FieldDef> {
    let field_type = match field.field_type.as_str() {
        "text" => FieldType::Text,
        "string" => FieldType::Keyword,
        "i64" => FieldType::I64,
        "u64" => FieldType::U64,
        "f64" => FieldType::F64,
        "bool" => FieldType::Bool,
        "date" => FieldType::Date,
        other => {
            return Err(invalid(format!(
                "field {:?} has type {other:?}, which Prism does not support; use text, string, i64, u64, f64, bool or date",
                field.name
            )))
        }
    };
    // The original's default tokenizer is tantivy's: lower case, no stemming.
    let analyzer = match (field_type, field.tokenizer.as_deref()) {
        (FieldType::Text, None | Some("default")) => Some("default".to_string()),
        (FieldType::Text, Some("raw")) => Some("raw".to_string()),
        (_, None) => None,
        (_, Some(other)) => {
            return Err(invalid(format!(
                "field {:?}: tokenizer {other:?} is not supported; use default or raw",
                field.name
            )))
        }
    };
    Ok(FieldDef {
        field_type,
        indexed: field.indexed,
        stored: field.stored,
        fast: None,
        analyzer,
        dimension: None,
        distance: None,
        m: None,
        ef_construction: None,
        ef_search: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARTICLES: &str = "collection: articles
description: News articles
backends:
  text:
    fields:
      - name: title
        type: text
        stored: true
        indexed: true
      - name: category
        type: string
        indexed: true
        stored: true
      - name: indexed_at
        type: string
        stored: true
        indexed: false
    bm25_k1: 1.2
    bm25_b: 0.75
  vector:
    embedding_field: embedding
    dimension: 3
    distance: euclidean
    hnsw_m: 8
";

    #[test]
    fn the_originals_schema_reads_as_this_crates_format() {
        let schema = CollectionSchema::from_yaml(ARTICLES).unwrap();
        let ours = CollectionSchema::from_json(
            br#"{"name": "articles", "description": "News articles", "fields": {
                "title": {"type": "text", "analyzer": "default"},
                "category": {"type": "keyword"},
                "indexed_at": {"type": "keyword", "indexed": false},
                "embedding": {"type": "vector", "dimension": 3, "distance": "l2", "m": 8, "ef_search": 100}}}"#,
        )
        .unwrap();
        assert_eq!(schema, ours);
        // The same schema as JSON reads the same.
        let as_json: Value = serde_yaml_ng::from_str(ARTICLES).unwrap();
        let from_json = CollectionSchema::from_json(as_json.to_string().as_bytes()).unwrap();
        assert_eq!(from_json, ours);
    }

    #[test]
    fn what_prism_does_not_implement_is_refused_by_name() {
        for (yaml, named) in [
            (
                "collection: a\nbackends: {text: {fields: [{name: t, type: text}]}}\nembedding_generation: {enabled: true, model: m, source_field: t, target_field: e}\n",
                "embedding_generation",
            ),
            (
                "collection: a\nbackends: {text: {fields: [{name: t, type: text}], bm25_k1: 2.0}}\n",
                "bm25_k1",
            ),
            (
                "collection: a\nbackends: {text: {fields: [{name: t, type: text}], bm25_b: 0.5}}\n",
                "bm25_b",
            ),
            (
                "collection: a\nbackends: {text: {fields: [{name: t, type: bytes}]}}\n",
                "bytes",
            ),
            (
                "collection: a\nbackends: {text: {fields: [{name: t, type: text}]}}\nfacets: {}\n",
                "facets",
            ),
            (
                "collection: a\nbackends: {graph: {}}\n",
                "graph",
            ),
        ] {
            let error = CollectionSchema::from_yaml(yaml).expect_err(yaml);
            assert_eq!(error.code(), "invalid_schema", "{yaml}");
            assert!(error.to_string().contains(named), "{yaml}: {error}");
        }
    }
}

//! A collection schema as `PUT /collections/{c}` (JSON) and `--schemas-dir` (YAML) receive
//! it. A schema that parses must be valid, must map to a tantivy schema holding every
//! non-vector field (what a shard is created with), and must read back equal from the JSON
//! the engine stores it as.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prism_core::schema::{CollectionSchema, FieldType};

fn check(schema: &CollectionSchema) {
    schema.validate().expect("a parsed schema is valid");
    let tantivy = schema.tantivy_schema();
    for (name, def) in &schema.fields {
        if def.field_type != FieldType::Vector {
            assert!(tantivy.get_field(name).is_ok(), "field {name:?} is missing");
        }
    }
    let _ = schema.text_fields();
    let _ = schema.vector_fields().count();
    let stored = serde_json::to_vec(schema).expect("a schema serializes");
    let back = CollectionSchema::from_json(&stored).expect("a stored schema reads back");
    assert_eq!(&back, schema, "the stored schema reads back different");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(schema) = CollectionSchema::from_json(data) {
        check(&schema);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(schema) = CollectionSchema::from_yaml(text) {
            check(&schema);
        }
    }
});

//! A document batch as `POST /collections/{c}/documents` receives it: strict JSON, then each
//! element of "documents" validated against the fuzz collection's schema. A document that
//! validates must survive the shard log's codec unchanged (what is acknowledged is what a
//! replay applies). Nothing is written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prism_core::schema::{parse_json_strict, PreparedDoc};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(mut body)) = parse_json_strict(data) else {
        return;
    };
    let Some(Value::Array(documents)) = body.remove("documents") else {
        return;
    };
    let schema = prism_fuzz::schema();
    for document in documents {
        let Ok(prepared) = schema.prepare_document(document) else {
            continue;
        };
        let bytes = postcard::to_stdvec(&prepared).expect("a prepared document encodes");
        let decoded: PreparedDoc = postcard::from_bytes(&bytes).expect("and decodes");
        assert_eq!(
            decoded, prepared,
            "the log codec changed a prepared document"
        );
    }
});

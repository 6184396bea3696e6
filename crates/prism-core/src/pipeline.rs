//! Ingest pipelines, as the original Prism has them: named lists of processors that rewrite a
//! document's fields before it is validated and indexed.
//!
//! ```yaml
//! name: normalize
//! description: Normalize text fields
//! processors:
//!   - lowercase: {field: title}
//!   - html_strip: {field: content}
//!   - set: {field: indexed_at, value: "{{_now}}"}
//!   - remove: {field: scratch}
//!   - rename: {from: old, to: new}
//! ```
//!
//! A processor on a missing field does nothing; one that needs a string and finds another
//! type refuses the document, which then fails alone, as a document that does not validate.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One step of a pipeline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Processor {
    Lowercase {
        field: String,
    },
    HtmlStrip {
        field: String,
    },
    /// `{{_now}}` in a string value becomes the time of indexing (RFC 3339, UTC).
    Set {
        field: String,
        value: Value,
    },
    Remove {
        field: String,
    },
    Rename {
        from: String,
        to: String,
    },
}

/// The time `{{_now}}` becomes: now, RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The pipelines of a node, by name.
pub type Pipelines = BTreeMap<String, Pipeline>;

/// A named list of processors.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub processors: Vec<Processor>,
}

/// What `GET /admin/pipelines` lists of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PipelineSummary {
    pub name: String,
    pub description: Option<String>,
    pub processor_count: usize,
}

impl Pipeline {
    /// Reads a pipeline file. Through a JSON value, so that each processor is the original's
    /// one-key map (`- lowercase: {field: title}`), not a YAML tag.
    pub fn from_yaml(text: &str) -> std::result::Result<Pipeline, String> {
        let value: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// Rewrites the `fields` of `document` (`{"id", "fields": {...}}`); `now` is what
    /// `{{_now}}` becomes. Err says why the document is refused.
    pub fn apply(&self, document: &mut Value, now: &str) -> std::result::Result<(), String> {
        let Some(fields) = document.get_mut("fields").and_then(Value::as_object_mut) else {
            // Not a document: validation refuses it with its own message.
            return Ok(());
        };
        for processor in &self.processors {
            apply_one(processor, fields, now)
                .map_err(|e| format!("pipeline {:?}: {e}", self.name))?;
        }
        Ok(())
    }

    pub fn summary(&self) -> PipelineSummary {
        PipelineSummary {
            name: self.name.clone(),
            description: self.description.clone(),
            processor_count: self.processors.len(),
        }
    }
}

fn apply_one(
    processor: &Processor,
    fields: &mut Map<String, Value>,
    now: &str,
) -> std::result::Result<(), String> {
    match processor {
        Processor::Lowercase { field } => {
            map_strings(fields, field, "lowercase", |s| s.to_lowercase())
        }
        Processor::HtmlStrip { field } => map_strings(fields, field, "html_strip", strip_html),
        Processor::Set { field, value } => {
            let value = match value {
                Value::String(s) => Value::String(s.replace("{{_now}}", now)),
                other => other.clone(),
            };
            fields.insert(field.clone(), value);
            Ok(())
        }
        Processor::Remove { field } => {
            fields.remove(field);
            Ok(())
        }
        Processor::Rename { from, to } => {
            if let Some(value) = fields.remove(from) {
                fields.insert(to.clone(), value);
            }
            Ok(())
        }
    }
}

/// Applies `f` to the string, or to each string of the array, in `field`.
fn map_strings(
    fields: &mut Map<String, Value>,
    field: &str,
    name: &str,
    f: impl Fn(&str) -> String,
) -> std::result::Result<(), String> {
    let not_string = || format!("{name}: field {field:?} is not a string");
    match fields.get_mut(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) => {
            *s = f(s);
            Ok(())
        }
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => *s = f(s),
                    _ => return Err(not_string()),
                }
            }
            Ok(())
        }
        Some(_) => Err(not_string()),
    }
}

/// Text without its HTML: tags and comments removed, `<script>` and `<style>` removed with
/// their content, entities decoded (`html-escape`), whitespace runs left by tags collapsed.
pub fn strip_html(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        text.push_str(&rest[..start]);
        let tag = &rest[start..];
        let skip_to = |end: &str| tag.find(end).map_or(tag.len(), |i| i + end.len());
        let lower: String = tag.chars().take(8).collect::<String>().to_ascii_lowercase();
        let consumed = if tag.starts_with("<!--") {
            skip_to("-->")
        } else if lower.starts_with("<script") {
            find_ascii_case_insensitive(tag, "</script>").map_or(tag.len(), |i| i + 9)
        } else if lower.starts_with("<style") {
            find_ascii_case_insensitive(tag, "</style>").map_or(tag.len(), |i| i + 8)
        } else {
            skip_to(">")
        };
        // A tag separates words: `a<br>b` is two words.
        text.push(' ');
        rest = &tag[consumed..];
    }
    text.push_str(rest);
    let decoded = html_escape::decode_html_entities(&text);
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn find_ascii_case_insensitive(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The pipelines of `dir` (`*.yaml`, `*.yml`), by name; none when `dir` does not exist. A
/// file that does not parse, or a name used twice, is an error naming the file.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, Pipeline>> {
    let mut pipelines = BTreeMap::new();
    let paths = match crate::schema::files_with_extensions(dir, &["yaml", "yml"]) {
        Ok(paths) => paths,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pipelines),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let pipeline = Pipeline::from_yaml(&text)
            .map_err(|e| Error::InvalidRequest(format!("pipeline file {}: {e}", path.display())))?;
        if let Some(earlier) = pipelines.insert(pipeline.name.clone(), pipeline) {
            return Err(Error::InvalidRequest(format!(
                "pipeline file {}: the name {:?} is used by another file too",
                path.display(),
                earlier.name
            )));
        }
    }
    Ok(pipelines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NORMALIZE: &str = "name: normalize
description: Normalize text fields for E2E tests
processors:
  - lowercase:
      field: title
  - set:
      field: indexed_at
      value: \"{{_now}}\"
  - html_strip:
      field: body
  - remove:
      field: scratch
  - rename:
      from: old
      to: new
";

    #[test]
    fn the_originals_processors_rewrite_fields_in_order() {
        let pipeline = Pipeline::from_yaml(NORMALIZE).unwrap();
        let mut doc = json!({"id": "a", "fields": {
            "title": "Hello WORLD", "body": "<p>Fish &amp; <b>chips</b></p><script>x()</script>",
            "scratch": 1, "old": "kept", "tags": ["A"]}});
        pipeline.apply(&mut doc, "2026-12-01T10:00:00Z").unwrap();
        assert_eq!(
            doc["fields"],
            json!({"title": "hello world", "indexed_at": "2026-12-01T10:00:00Z",
                "body": "Fish & chips", "new": "kept", "tags": ["A"]})
        );
        assert_eq!(pipeline.summary().processor_count, 5);
        // Missing fields are skipped; a number where a string is needed refuses the document.
        let mut missing = json!({"id": "b", "fields": {}});
        pipeline.apply(&mut missing, "now").unwrap();
        let mut wrong = json!({"id": "c", "fields": {"title": 5}});
        let error = pipeline.apply(&mut wrong, "now").unwrap_err();
        assert!(
            error.contains("lowercase") && error.contains("title"),
            "{error}"
        );
    }

    #[test]
    fn html_is_stripped_to_its_text() {
        for (html, text) in [
            ("<p>Hello <b>World</b></p>", "Hello World"),
            ("a<br>b", "a b"),
            ("<!-- note -->kept", "kept"),
            ("<STYLE>p{}</STYLE>shown &lt;3 &#233;", "shown <3 é"),
            ("no tags", "no tags"),
            ("broken <tag", "broken"),
        ] {
            assert_eq!(strip_html(html), text, "{html}");
        }
    }

    #[test]
    fn a_directory_of_pipelines_loads_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_dir(&dir.path().join("absent")).unwrap().is_empty());
        std::fs::write(dir.path().join("normalize.yaml"), NORMALIZE).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let loaded = load_dir(dir.path()).unwrap();
        assert_eq!(loaded.keys().collect::<Vec<_>>(), vec!["normalize"]);
        std::fs::write(
            dir.path().join("typo.yml"),
            "name: t\nprocessors:\n  - uppercase: {field: a}\n",
        )
        .unwrap();
        let error = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("typo.yml") && error.contains("uppercase"),
            "{error}"
        );
    }
}

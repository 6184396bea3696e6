//! `prism import`: reads JSONL or CSV, converts rows to documents, and sends
//! them to the bulk route in batches while showing progress.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::client::{ApiError, BulkResponse, Client, FieldSpec};

/// How many individual errors the final report keeps for display.
pub const MAX_REPORTED_ERRORS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[value(alias = "ndjson")]
    Jsonl,
    Csv,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

pub struct ImportOptions {
    pub collection: String,
    /// `-` means standard input.
    pub path: PathBuf,
    pub format: Option<Format>,
    pub batch_size: usize,
    pub id_field: String,
}

/// Outcome of an import that ran to the end of the input.
#[derive(Debug)]
pub struct Report {
    pub imported: u64,
    pub errors: u64,
    /// The first [`MAX_REPORTED_ERRORS`] errors, already formatted.
    pub samples: Vec<String>,
    /// Errors left out of `samples` (a rejected batch is one entry).
    pub unlisted: u64,
    pub elapsed: Duration,
}

/// The document shape the bulk route expects on each NDJSON line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    pub id: String,
    pub fields: Map<String, Value>,
}

/// One input record: a document, or the reason it was skipped.
#[derive(Debug)]
pub enum Item {
    Doc { line: u64, doc: Document },
    Invalid { line: u64, message: String },
}

/// A reader of input records. Per-record problems are `Item::Invalid`;
/// an `Err` (I/O failure) aborts the import.
pub trait Source {
    fn next_item(&mut self) -> Result<Option<Item>>;
    fn bytes_read(&self) -> u64;
}

pub fn run(client: &Client, options: &ImportOptions) -> Result<Report> {
    let format = match options.format {
        Some(format) => format,
        None if is_stdin(&options.path) => {
            bail!("reading standard input needs --format jsonl or --format csv")
        }
        None => match Format::from_path(&options.path) {
            Some(format) => format,
            None => bail!(
                "cannot tell the format of {} from its extension; pass --format jsonl or --format csv",
                options.path.display()
            ),
        },
    };

    // Fetching the collection first fails fast on a missing collection or
    // server, and gives the schema the CSV conversion needs.
    let info = client.collection(&options.collection)?;

    let (input, total_bytes) = open_input(&options.path)?;
    let mut source: Box<dyn Source> = match format {
        Format::Jsonl => Box::new(JsonlSource::new(input, &options.id_field)),
        Format::Csv => {
            let source = CsvSource::new(input, &info.schema.fields, &options.id_field)?;
            let unknown = source.converter.unknown_columns();
            if !unknown.is_empty() {
                eprintln!(
                    "warning: columns not in the schema of `{}`: {}; rows with values in them will be skipped",
                    options.collection,
                    unknown.join(", ")
                );
            }
            Box::new(source)
        }
    };

    let progress = Progress::new(total_bytes)?;
    let result = run_pipeline(source.as_mut(), options.batch_size, &progress, |body| {
        client.bulk(&options.collection, body)
    });
    progress.finish();
    result
}

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

fn open_input(path: &Path) -> Result<(Box<dyn Read>, Option<u64>)> {
    if is_stdin(path) {
        return Ok((Box::new(io::stdin().lock()), None));
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().ok().map(|meta| meta.len());
    Ok((Box::new(file), len))
}

/// Reads and batches on the calling thread while a second thread sends, so
/// parsing the next batch overlaps the request in flight. `send` gets each
/// batch's NDJSON body.
pub fn run_pipeline<S, F>(
    source: &mut S,
    batch_size: usize,
    progress: &Progress,
    mut send: F,
) -> Result<Report>
where
    S: Source + ?Sized,
    F: FnMut(Vec<u8>) -> Result<BulkResponse, ApiError> + Send,
{
    let start = Instant::now();
    let tally = Tally::default();
    let tally = &tally;

    let (read_result, send_result) = thread::scope(|scope| {
        // Rendezvous channel: at most one batch in flight and one being built.
        let (tx, rx) = mpsc::sync_channel::<Batch>(0);
        let sender = scope.spawn(move || -> Result<(), ApiError> {
            for batch in rx {
                let meta = batch.meta;
                match send(batch.body) {
                    Ok(response) => tally.record_response(meta, response),
                    // The server answers 400 when every document in a batch is
                    // invalid: those are document errors, not a reason to stop.
                    Err(ApiError::Server {
                        status: StatusCode::BAD_REQUEST,
                        code,
                        message,
                    }) => tally.record_rejected_batch(meta, &code, &message),
                    Err(err) => return Err(err),
                }
                progress.refresh(tally, start);
            }
            Ok(())
        });
        let read_result = read_batches(source, batch_size, tally, progress, start, |batch| {
            tx.send(batch).is_ok()
        });
        drop(tx);
        let send_result = sender
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (read_result, send_result)
    });

    let abort = match (send_result, read_result) {
        (Err(err), _) => Some(anyhow::Error::new(err)),
        (Ok(()), Err(err)) => Some(err),
        (Ok(()), Ok(())) => None,
    };
    if let Some(mut err) = abort {
        if let Some(ApiError::Server {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            ..
        }) = err.downcast_ref::<ApiError>()
        {
            err = err.context(format!(
                "a batch of {batch_size} documents is too large for the server; lower --batch-size"
            ));
        }
        let imported = tally.imported.load(Ordering::Relaxed);
        if imported > 0 {
            progress.finish();
            eprintln!("import aborted after {imported} documents were imported");
        }
        return Err(err);
    }

    Ok(Report {
        imported: tally.imported.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        samples: tally.samples.lock().map(|s| s.clone()).unwrap_or_default(),
        unlisted: tally.unlisted.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    })
}

/// Groups documents into batches; stops early when `emit` reports the
/// sender has gone away (it failed, and its error is reported instead).
fn read_batches<S: Source + ?Sized>(
    source: &mut S,
    batch_size: usize,
    tally: &Tally,
    progress: &Progress,
    start: Instant,
    mut emit: impl FnMut(Batch) -> bool,
) -> Result<()> {
    let mut batch = Batch::default();
    while let Some(item) = source.next_item()? {
        match item {
            Item::Doc { line, doc } => {
                batch.push(line, &doc)?;
                if batch.meta.docs >= batch_size && !emit(std::mem::take(&mut batch)) {
                    return Ok(());
                }
            }
            Item::Invalid { line, message } => {
                tally.record_invalid(line, &message);
                progress.refresh(tally, start);
            }
        }
        progress.set_position(source.bytes_read());
    }
    if batch.meta.docs > 0 {
        emit(batch);
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Batch {
    body: Vec<u8>,
    meta: BatchMeta,
}

#[derive(Debug, Default, Clone, Copy)]
struct BatchMeta {
    docs: usize,
    first_line: u64,
    last_line: u64,
}

impl Batch {
    fn push(&mut self, line: u64, doc: &Document) -> Result<()> {
        serde_json::to_writer(&mut self.body, doc)?;
        self.body.push(b'\n');
        if self.meta.docs == 0 {
            self.meta.first_line = line;
        }
        self.meta.last_line = line;
        self.meta.docs += 1;
        Ok(())
    }
}

/// Counters shared by the reading and the sending thread.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    imported: AtomicU64,
    errors: AtomicU64,
    samples: Mutex<Vec<String>>,
    unlisted: AtomicU64,
}

impl Tally {
    fn sample(&self, message: String) {
        if let Ok(mut samples) = self.samples.lock() {
            if samples.len() < MAX_REPORTED_ERRORS {
                samples.push(message);
            } else {
                self.unlisted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn record_invalid(&self, line: u64, message: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.sample(format!("line {line}: {message}"));
    }

    fn record_response(&self, meta: BatchMeta, response: BulkResponse) {
        self.sent.fetch_add(meta.docs as u64, Ordering::Relaxed);
        self.imported
            .fetch_add(response.successful_docs, Ordering::Relaxed);
        // Trust whichever is larger in case the server truncates its list.
        let failed = response.failed_docs.max(response.errors.len() as u64);
        self.errors.fetch_add(failed, Ordering::Relaxed);
        for error in response.errors {
            self.sample(format!(
                "id {}: {}: {}",
                error.id, error.code, error.message
            ));
        }
    }

    fn record_rejected_batch(&self, meta: BatchMeta, code: &str, message: &str) {
        self.sent.fetch_add(meta.docs as u64, Ordering::Relaxed);
        self.errors.fetch_add(meta.docs as u64, Ordering::Relaxed);
        self.sample(format!(
            "lines {}-{}: all {} documents rejected: {code}: {message}",
            meta.first_line, meta.last_line, meta.docs
        ));
    }
}

/// Byte-based progress bar on stderr; indicatif hides it when stderr is not a
/// terminal.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(total_bytes: Option<u64>) -> Result<Self> {
        let (bar, template) = match total_bytes {
            Some(total) => (
                ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
                "{spinner} {elapsed_precise} [{bar:30}] {binary_bytes}/{binary_total_bytes} eta {eta} | {msg}",
            ),
            None => (
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                "{spinner} {elapsed_precise} {binary_bytes} read | {msg}",
            ),
        };
        bar.set_style(ProgressStyle::with_template(template)?.progress_chars("=> "));
        // Keeps the spinner and ETA moving while a slow request is in flight.
        bar.enable_steady_tick(Duration::from_millis(200));
        Ok(Progress { bar })
    }

    #[cfg(test)]
    pub fn hidden() -> Self {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    fn set_position(&self, bytes: u64) {
        self.bar.set_position(bytes);
    }

    fn refresh(&self, tally: &Tally, start: Instant) {
        let sent = tally.sent.load(Ordering::Relaxed);
        let errors = tally.errors.load(Ordering::Relaxed);
        let rate = per_second(sent, start.elapsed());
        self.bar
            .set_message(format!("{rate} docs/s, {sent} sent, {errors} errors"));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

pub fn per_second(count: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0;
    }
    (count as f64 / secs).round() as u64
}

/// JSONL input: one JSON object per non-empty line.
pub struct JsonlSource<R> {
    reader: BufReader<R>,
    id_field: String,
    line: u64,
    bytes: u64,
    buf: Vec<u8>,
}

impl<R: Read> JsonlSource<R> {
    pub fn new(reader: R, id_field: &str) -> Self {
        JsonlSource {
            reader: BufReader::with_capacity(256 * 1024, reader),
            id_field: id_field.to_string(),
            line: 0,
            bytes: 0,
            buf: Vec::new(),
        }
    }
}

impl<R: Read> Source for JsonlSource<R> {
    fn next_item(&mut self) -> Result<Option<Item>> {
        loop {
            self.buf.clear();
            let read = self.reader.read_until(b'\n', &mut self.buf)?;
            if read == 0 {
                return Ok(None);
            }
            self.bytes += read as u64;
            self.line += 1;
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let line = self.line;
            return Ok(Some(match jsonl_to_document(&self.buf, &self.id_field) {
                Ok(doc) => Item::Doc { line, doc },
                Err(message) => Item::Invalid { line, message },
            }));
        }
    }

    fn bytes_read(&self) -> u64 {
        self.bytes
    }
}

/// Parses one JSONL line into a document.
pub fn jsonl_to_document(line: &[u8], id_field: &str) -> Result<Document, String> {
    let value: Value =
        serde_json::from_slice(line).map_err(|err| format!("invalid JSON: {err}"))?;
    json_to_document(value, id_field)
}

/// Accepts either the bulk shape `{"id":..,"fields":{..}}` or a flat object
/// whose `id_field` key is the id and whose other keys are the fields.
pub fn json_to_document(value: Value, id_field: &str) -> Result<Document, String> {
    let Value::Object(mut object) = value else {
        return Err(format!(
            "expected a JSON object, found {}",
            json_kind(&value)
        ));
    };
    match object.remove("fields") {
        Some(Value::Object(fields)) => {
            let id = take_id(&mut object, "id")?;
            if let Some(extra) = object.keys().next() {
                return Err(format!(
                    "unexpected top-level key `{extra}` next to `fields` (only `id` and `fields` are allowed)"
                ));
            }
            Ok(Document { id, fields })
        }
        other => {
            // A non-object `fields` is just a field of a flat document.
            if let Some(value) = other {
                object.insert("fields".to_string(), value);
            }
            let id = take_id(&mut object, id_field)?;
            Ok(Document { id, fields: object })
        }
    }
}

fn take_id(object: &mut Map<String, Value>, key: &str) -> Result<String, String> {
    match object.remove(key) {
        Some(Value::String(id)) if !id.is_empty() => Ok(id),
        Some(Value::String(_)) => Err(format!("id field `{key}` is empty")),
        // Kept as its digits, as the server keeps it; a number serde_json read as an f64
        // (a fraction, an exponent, beyond u64) would be rounded, so it is refused.
        Some(Value::Number(number)) if !number.is_f64() => Ok(number.to_string()),
        Some(Value::Number(_)) => Err(format!(
            "id field `{key}`: a numeric id is kept as its digits, so it must be an integer from -9223372036854775808 to 18446744073709551615 written without a fraction or an exponent; make this id a string"
        )),
        Some(other) => Err(format!(
            "id field `{key}` must be a string or a number, found {}",
            json_kind(&other)
        )),
        None => Err(format!("missing id field `{key}`")),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A collection field type, as far as CSV conversion cares.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    Text,
    Keyword,
    I64,
    U64,
    F64,
    Bool,
    Date,
    Vector {
        dimension: Option<usize>,
    },
    /// A type this client does not know; cells are sent as strings and the
    /// server decides.
    Other(String),
}

impl From<&FieldSpec> for FieldType {
    fn from(spec: &FieldSpec) -> Self {
        match spec.kind.as_str() {
            "text" => FieldType::Text,
            "keyword" => FieldType::Keyword,
            "i64" => FieldType::I64,
            "u64" => FieldType::U64,
            "f64" => FieldType::F64,
            "bool" => FieldType::Bool,
            "date" => FieldType::Date,
            "vector" => FieldType::Vector {
                dimension: spec.dimension,
            },
            other => FieldType::Other(other.to_string()),
        }
    }
}

/// Converts one non-empty CSV cell to the JSON value for a field type.
pub fn convert_cell(field_type: &FieldType, cell: &str) -> Result<Value, String> {
    let trimmed = cell.trim();
    match field_type {
        FieldType::Text | FieldType::Keyword | FieldType::Date | FieldType::Other(_) => {
            Ok(Value::String(cell.to_string()))
        }
        FieldType::I64 => trimmed
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("`{cell}` is not a valid i64")),
        FieldType::U64 => trimmed
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| format!("`{cell}` is not a valid u64")),
        FieldType::F64 => trimmed
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("`{cell}` is not a valid finite f64")),
        FieldType::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Value::Bool(true)),
            "false" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("`{cell}` is not a bool (expected true or false)")),
        },
        FieldType::Vector { dimension } => {
            let not_vector = || {
                format!(
                    "`{}` is not a JSON array of numbers",
                    crate::output::truncate(cell, 40)
                )
            };
            let value: Value = serde_json::from_str(trimmed).map_err(|_| not_vector())?;
            let Value::Array(items) = &value else {
                return Err(not_vector());
            };
            if !items.iter().all(Value::is_number) {
                return Err(not_vector());
            }
            match dimension {
                Some(dimension) if items.len() != *dimension => Err(format!(
                    "vector has {} values, the schema expects {dimension}",
                    items.len()
                )),
                _ => Ok(value),
            }
        }
    }
}

/// Maps CSV columns to schema fields.
#[derive(Debug)]
pub struct CsvConverter {
    id_index: usize,
    id_field: String,
    columns: Vec<Column>,
}

#[derive(Debug)]
struct Column {
    index: usize,
    name: String,
    /// `None` for a column that is not in the schema.
    field_type: Option<FieldType>,
}

impl CsvConverter {
    pub fn new(
        headers: &[&str],
        schema: &BTreeMap<String, FieldSpec>,
        id_field: &str,
    ) -> Result<Self> {
        let mut seen = HashSet::new();
        for name in headers {
            if !seen.insert(*name) {
                bail!("the CSV header has the column `{name}` more than once");
            }
        }
        let Some(id_index) = headers.iter().position(|name| *name == id_field) else {
            bail!("the CSV header has no `{id_field}` column for the document id (set --id-field)");
        };
        let columns = headers
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != id_index)
            .map(|(index, name)| Column {
                index,
                name: name.to_string(),
                field_type: schema.get(*name).map(FieldType::from),
            })
            .collect();
        Ok(CsvConverter {
            id_index,
            id_field: id_field.to_string(),
            columns,
        })
    }

    pub fn unknown_columns(&self) -> Vec<&str> {
        self.columns
            .iter()
            .filter(|column| column.field_type.is_none())
            .map(|column| column.name.as_str())
            .collect()
    }

    /// Converts one row; blank cells are left out of the document.
    pub fn convert(&self, row: &csv::StringRecord) -> Result<Document, String> {
        let id = row.get(self.id_index).unwrap_or("").trim();
        if id.is_empty() {
            return Err(format!("empty id in column `{}`", self.id_field));
        }
        let mut fields = Map::new();
        for column in &self.columns {
            let cell = row.get(column.index).unwrap_or("");
            if cell.trim().is_empty() {
                continue;
            }
            let Some(field_type) = &column.field_type else {
                return Err(format!(
                    "column `{}` is not a field of the collection schema",
                    column.name
                ));
            };
            let value = convert_cell(field_type, cell)
                .map_err(|err| format!("column `{}`: {err}", column.name))?;
            fields.insert(column.name.clone(), value);
        }
        Ok(Document {
            id: id.to_string(),
            fields,
        })
    }
}

/// CSV input with a header row.
pub struct CsvSource<R> {
    reader: csv::Reader<R>,
    record: csv::StringRecord,
    converter: CsvConverter,
}

impl<R: Read> CsvSource<R> {
    pub fn new(input: R, schema: &BTreeMap<String, FieldSpec>, id_field: &str) -> Result<Self> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(input);
        let headers = reader
            .headers()
            .context("cannot read the CSV header")?
            .clone();
        let names: Vec<&str> = headers.iter().collect();
        let converter = CsvConverter::new(&names, schema, id_field)?;
        Ok(CsvSource {
            reader,
            record: csv::StringRecord::new(),
            converter,
        })
    }
}

impl<R: Read> Source for CsvSource<R> {
    fn next_item(&mut self) -> Result<Option<Item>> {
        match self.reader.read_record(&mut self.record) {
            Ok(false) => Ok(None),
            Ok(true) => {
                let line = self.record.position().map_or(0, csv::Position::line);
                Ok(Some(match self.converter.convert(&self.record) {
                    Ok(doc) => Item::Doc { line, doc },
                    Err(message) => Item::Invalid { line, message },
                }))
            }
            Err(err) if err.is_io_error() => {
                Err(anyhow::Error::new(err).context("cannot read the CSV input"))
            }
            // Malformed rows (wrong column count, bad UTF-8) only lose that row.
            Err(err) => {
                let line = err.position().map_or(0, csv::Position::line);
                let message = match err.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => format!("expected {expected_len} columns, found {len}"),
                    csv::ErrorKind::Utf8 { err, .. } => {
                        format!("invalid UTF-8 in column {}", err.field() + 1)
                    }
                    _ => err.to_string(),
                };
                Ok(Some(Item::Invalid { line, message }))
            }
        }
    }

    fn bytes_read(&self) -> u64 {
        self.reader.position().byte()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::BulkItemError;
    use serde_json::json;

    fn spec(kind: &str, dimension: Option<usize>) -> FieldSpec {
        FieldSpec {
            kind: kind.to_string(),
            dimension,
        }
    }

    fn schema() -> BTreeMap<String, FieldSpec> {
        BTreeMap::from([
            ("title".to_string(), spec("text", None)),
            ("tag".to_string(), spec("keyword", None)),
            ("year".to_string(), spec("i64", None)),
            ("views".to_string(), spec("u64", None)),
            ("rating".to_string(), spec("f64", None)),
            ("published".to_string(), spec("bool", None)),
            ("date".to_string(), spec("date", None)),
            ("embedding".to_string(), spec("vector", Some(3))),
        ])
    }

    fn fields(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn flat_jsonl_object_becomes_document() {
        let doc = jsonl_to_document(br#"{"id":"a1","title":"Hello","year":2001}"#, "id").unwrap();
        assert_eq!(doc.id, "a1");
        assert_eq!(doc.fields, fields(json!({"title":"Hello","year":2001})));
    }

    #[test]
    fn numeric_and_custom_id_fields() {
        let doc = jsonl_to_document(br#"{"sku":42,"name":"x","id":"kept"}"#, "sku").unwrap();
        assert_eq!(doc.id, "42");
        // With a custom id field, an `id` key is an ordinary field.
        assert_eq!(doc.fields, fields(json!({"name":"x","id":"kept"})));
        // Integers are kept as their digits, to the ends of i64 and u64.
        for digits in ["18446744073709551615", "-9223372036854775808", "0"] {
            let line = format!(r#"{{"sku":{digits}}}"#);
            assert_eq!(
                jsonl_to_document(line.as_bytes(), "sku").unwrap().id,
                digits
            );
        }
        // Anything else would be rounded through an f64 (two ids beyond u64 would become
        // one): refused, with the rule.
        for number in ["123456789012345678901234567890", "1e2", "2.5", "-0"] {
            let line = format!(r#"{{"sku":{number}}}"#);
            let err = jsonl_to_document(line.as_bytes(), "sku").unwrap_err();
            assert!(err.contains("make this id a string"), "{number}: {err}");
        }
    }

    #[test]
    fn bulk_shaped_jsonl_is_used_as_is() {
        let doc = jsonl_to_document(br#"{"id":7,"fields":{"title":"T"}}"#, "other").unwrap();
        assert_eq!(doc.id, "7");
        assert_eq!(doc.fields, fields(json!({"title":"T"})));
        let err = jsonl_to_document(br#"{"id":"a","fields":{},"x":1}"#, "id").unwrap_err();
        assert!(err.contains("unexpected top-level key `x`"), "{err}");
    }

    #[test]
    fn non_object_fields_key_is_a_flat_field() {
        let doc = jsonl_to_document(br#"{"id":"a","fields":"title,body"}"#, "id").unwrap();
        assert_eq!(doc.fields, fields(json!({"fields":"title,body"})));
    }

    #[test]
    fn invalid_jsonl_lines_are_errors() {
        assert!(jsonl_to_document(b"{not json", "id")
            .unwrap_err()
            .starts_with("invalid JSON"));
        assert_eq!(
            jsonl_to_document(br#"{"title":"x"}"#, "id").unwrap_err(),
            "missing id field `id`"
        );
        assert_eq!(
            jsonl_to_document(br#"{"id":""}"#, "id").unwrap_err(),
            "id field `id` is empty"
        );
        assert_eq!(
            jsonl_to_document(br#"{"id":true}"#, "id").unwrap_err(),
            "id field `id` must be a string or a number, found a boolean"
        );
        assert_eq!(
            jsonl_to_document(b"[1,2]", "id").unwrap_err(),
            "expected a JSON object, found an array"
        );
    }

    #[test]
    fn jsonl_source_counts_lines_and_bytes() {
        let input = "{\"id\":\"a\"}\n\n  \nnot json\r\n{\"id\":\"b\",\"n\":1}";
        let mut source = JsonlSource::new(input.as_bytes(), "id");
        let mut items = Vec::new();
        while let Some(item) = source.next_item().unwrap() {
            items.push(item);
        }
        assert_eq!(source.bytes_read(), input.len() as u64);
        assert!(matches!(&items[0], Item::Doc { line: 1, doc } if doc.id == "a"));
        assert!(
            matches!(&items[1], Item::Invalid { line: 4, message } if message.starts_with("invalid JSON"))
        );
        assert!(matches!(&items[2], Item::Doc { line: 5, doc } if doc.id == "b"));
        assert_eq!(items.len(), 3);
    }

    #[test]
    fn cells_convert_by_field_type() {
        let t = |kind: &str, cell: &str| convert_cell(&FieldType::from(&spec(kind, None)), cell);
        assert_eq!(t("text", "Hello, world").unwrap(), json!("Hello, world"));
        assert_eq!(t("keyword", "42").unwrap(), json!("42"));
        assert_eq!(t("date", "2024-01-02").unwrap(), json!("2024-01-02"));
        assert_eq!(t("i64", " -17 ").unwrap(), json!(-17));
        assert_eq!(t("u64", "18446744073709551615").unwrap(), json!(u64::MAX));
        assert_eq!(t("f64", "2.5").unwrap(), json!(2.5));
        assert_eq!(t("f64", "3").unwrap(), json!(3.0));
        assert_eq!(t("bool", "TRUE").unwrap(), json!(true));
        assert_eq!(t("bool", "0").unwrap(), json!(false));
        assert_eq!(t("vector", "[0.1, 0.2]").unwrap(), json!([0.1, 0.2]));
    }

    #[test]
    fn bad_cells_are_rejected() {
        let t = |kind: &str, cell: &str| convert_cell(&FieldType::from(&spec(kind, None)), cell);
        assert_eq!(t("i64", "12abc").unwrap_err(), "`12abc` is not a valid i64");
        assert_eq!(t("i64", "1.5").unwrap_err(), "`1.5` is not a valid i64");
        assert_eq!(t("u64", "-1").unwrap_err(), "`-1` is not a valid u64");
        assert!(t("f64", "NaN").is_err());
        assert!(t("f64", "abc").is_err());
        assert!(t("bool", "yes").is_err());
        assert!(t("vector", "0.1,0.2").is_err());
        assert!(t("vector", r#"[0.1, "x"]"#).is_err());
        let vector3 = FieldType::Vector { dimension: Some(3) };
        assert_eq!(
            convert_cell(&vector3, "[1, 2]").unwrap_err(),
            "vector has 2 values, the schema expects 3"
        );
    }

    fn record(cells: &[&str]) -> csv::StringRecord {
        csv::StringRecord::from(cells.to_vec())
    }

    #[test]
    fn csv_row_converts_with_schema() {
        let headers = [
            "id",
            "title",
            "tag",
            "year",
            "views",
            "rating",
            "published",
            "date",
            "embedding",
        ];
        let converter = CsvConverter::new(&headers, &schema(), "id").unwrap();
        assert!(converter.unknown_columns().is_empty());
        let doc = converter
            .convert(&record(&[
                "d1",
                "A title",
                "rust",
                "2001",
                "7",
                "4.5",
                "false",
                "2024-05-01",
                "[1, 0.5, -2]",
            ]))
            .unwrap();
        assert_eq!(
            doc,
            Document {
                id: "d1".into(),
                fields: fields(json!({
                    "title": "A title",
                    "tag": "rust",
                    "year": 2001,
                    "views": 7,
                    "rating": 4.5,
                    "published": false,
                    "date": "2024-05-01",
                    "embedding": [1, 0.5, -2],
                })),
            }
        );
    }

    #[test]
    fn csv_empty_cells_are_omitted() {
        let converter = CsvConverter::new(&["title", "id", "year"], &schema(), "id").unwrap();
        let doc = converter.convert(&record(&["", "d2", "  "])).unwrap();
        assert_eq!(doc.id, "d2");
        assert!(doc.fields.is_empty());
    }

    #[test]
    fn csv_row_errors() {
        let converter = CsvConverter::new(&["id", "year", "extra"], &schema(), "id").unwrap();
        assert_eq!(converter.unknown_columns(), vec!["extra"]);
        assert_eq!(
            converter.convert(&record(&["d3", "abc", ""])).unwrap_err(),
            "column `year`: `abc` is not a valid i64"
        );
        assert_eq!(
            converter.convert(&record(&["d3", "1", "x"])).unwrap_err(),
            "column `extra` is not a field of the collection schema"
        );
        // A blank cell in an unknown column is harmless.
        assert!(converter.convert(&record(&["d3", "1", ""])).is_ok());
        assert_eq!(
            converter.convert(&record(&["", "1", ""])).unwrap_err(),
            "empty id in column `id`"
        );
    }

    #[test]
    fn csv_header_must_have_id_column() {
        let err = CsvConverter::new(&["key", "title"], &schema(), "id").unwrap_err();
        assert!(err.to_string().contains("no `id` column"), "{err}");
        let converter = CsvConverter::new(&["key", "title"], &schema(), "key").unwrap();
        assert_eq!(converter.convert(&record(&["k", "t"])).unwrap().id, "k");
        assert!(CsvConverter::new(&["id", "a", "a"], &schema(), "id").is_err());
    }

    #[test]
    fn csv_source_skips_malformed_rows() {
        let input = "id,title,year\n1,a,10\n2,b\n3,\"c, quoted\",x\n4,d,40\n";
        let mut source = CsvSource::new(input.as_bytes(), &schema(), "id").unwrap();
        let mut docs = Vec::new();
        let mut invalid = Vec::new();
        while let Some(item) = source.next_item().unwrap() {
            match item {
                Item::Doc { line, doc } => docs.push((line, doc.id)),
                Item::Invalid { line, message } => invalid.push((line, message)),
            }
        }
        assert_eq!(docs, vec![(2, "1".to_string()), (5, "4".to_string())]);
        assert_eq!(
            invalid,
            vec![
                (3, "expected 3 columns, found 2".to_string()),
                (4, "column `year`: `x` is not a valid i64".to_string()),
            ]
        );
        assert_eq!(source.bytes_read(), input.len() as u64);
    }

    /// A source over prepared items, for pipeline tests.
    struct VecSource(std::vec::IntoIter<Item>);

    impl Source for VecSource {
        fn next_item(&mut self) -> Result<Option<Item>> {
            Ok(self.0.next())
        }
        fn bytes_read(&self) -> u64 {
            0
        }
    }

    fn docs(range: std::ops::RangeInclusive<u64>) -> Vec<Item> {
        range
            .map(|line| Item::Doc {
                line,
                doc: Document {
                    id: format!("d{line}"),
                    fields: Map::new(),
                },
            })
            .collect()
    }

    #[test]
    fn pipeline_batches_and_counts_errors() {
        let mut items = docs(1..=5);
        items.insert(
            2,
            Item::Invalid {
                line: 99,
                message: "invalid JSON".into(),
            },
        );
        let mut source = VecSource(items.into_iter());
        let mut batches = Vec::new();
        let report = run_pipeline(&mut source, 2, &Progress::hidden(), |body| {
            let ids: Vec<String> = String::from_utf8(body)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str::<Value>(line).unwrap()["id"].to_string())
                .collect();
            let rejected = ids.iter().any(|id| id == "\"d4\"");
            let successful = ids.len() as u64 - u64::from(rejected);
            batches.push(ids);
            Ok(BulkResponse {
                successful_docs: successful,
                failed_docs: u64::from(rejected),
                errors: if rejected {
                    vec![BulkItemError {
                        id: "d4".into(),
                        code: "invalid_field".into(),
                        message: "bad".into(),
                    }]
                } else {
                    Vec::new()
                },
            })
        })
        .unwrap();
        assert_eq!(
            batches,
            vec![
                vec!["\"d1\"", "\"d2\""],
                vec!["\"d3\"", "\"d4\""],
                vec!["\"d5\""]
            ]
        );
        assert_eq!(report.imported, 4);
        assert_eq!(report.errors, 2);
        assert_eq!(
            report.samples,
            vec!["line 99: invalid JSON", "id d4: invalid_field: bad"]
        );
    }

    #[test]
    fn pipeline_keeps_only_the_first_errors() {
        let items = (1..=15).map(|line| Item::Invalid {
            line,
            message: "bad".into(),
        });
        let mut source = VecSource(items.collect::<Vec<_>>().into_iter());
        let report = run_pipeline(&mut source, 10, &Progress::hidden(), |_| {
            panic!("no document should be sent")
        })
        .unwrap();
        assert_eq!(report.imported, 0);
        assert_eq!(report.errors, 15);
        assert_eq!(report.samples.len(), MAX_REPORTED_ERRORS);
        assert_eq!(report.samples[0], "line 1: bad");
        assert_eq!(report.unlisted, 5);
    }

    #[test]
    fn pipeline_counts_rejected_batch_and_continues() {
        let mut source = VecSource(docs(1..=4).into_iter());
        let mut calls = 0;
        let report = run_pipeline(&mut source, 2, &Progress::hidden(), |_| {
            calls += 1;
            if calls == 1 {
                Err(ApiError::Server {
                    status: StatusCode::BAD_REQUEST,
                    code: "invalid_document".into(),
                    message: "nope".into(),
                })
            } else {
                Ok(BulkResponse {
                    successful_docs: 2,
                    ..BulkResponse::default()
                })
            }
        })
        .unwrap();
        assert_eq!(report.imported, 2);
        assert_eq!(report.errors, 2);
        assert_eq!(report.unlisted, 0);
        assert_eq!(
            report.samples,
            vec!["lines 1-2: all 2 documents rejected: invalid_document: nope"]
        );
    }

    #[test]
    fn pipeline_aborts_on_server_error() {
        let mut source = VecSource(docs(1..=10).into_iter());
        let mut calls = 0;
        let err = run_pipeline(&mut source, 2, &Progress::hidden(), |_| {
            calls += 1;
            Err(ApiError::Server {
                status: StatusCode::NOT_FOUND,
                code: "collection_not_found".into(),
                message: "no such collection".into(),
            })
        })
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "collection_not_found: no such collection"
        );
        assert_eq!(calls, 1);
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(
            Format::from_path(Path::new("a/b.jsonl")),
            Some(Format::Jsonl)
        );
        assert_eq!(
            Format::from_path(Path::new("b.NDJSON")),
            Some(Format::Jsonl)
        );
        assert_eq!(Format::from_path(Path::new("b.csv")), Some(Format::Csv));
        assert_eq!(Format::from_path(Path::new("b.json")), None);
        assert_eq!(Format::from_path(Path::new("noext")), None);
    }

    #[test]
    fn rate_per_second() {
        assert_eq!(per_second(1000, Duration::from_millis(500)), 2000);
        assert_eq!(per_second(5, Duration::ZERO), 0);
    }
}

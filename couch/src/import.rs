//! Import of CouchDB dumps made by other tools: files holding the response of
//! `GET /{db}/_all_docs?include_docs=true`, one per database.
//!
//! [`read_all_docs`] streams such a file: memory is bounded by one row, never
//! the whole file. It accepts
//!
//! - the response object `{"total_rows":N,"offset":0,"rows":[…]}` (members in
//!   any order, `update_seq` and unknown members ignored);
//! - a bare JSON array of rows, or of documents;
//! - newline-delimited (or just whitespace-separated) rows or documents.
//!
//! Each document is handed over with its `_rev` so it can be restored with
//! `_bulk_docs` and `new_edits:false`. Attachment stubs are dropped (the dump
//! has no data for them); the rest of the document keeps its exact bytes.
//!
//! Nothing is guessed silently: a row without a document (no `include_docs`,
//! an `error` row, a deleted document) is counted in
//! [`DumpStats::skipped_rows`]; anything else unexpected is an error that
//! says where it is (line and byte offset).

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::value::RawValue;

/// One document of a dump.
#[derive(Debug, Clone)]
pub(crate) struct ImportedDoc {
    pub id: String,
    pub rev: String,
    /// The dump's `doc` object, byte for byte as in the file. When it had
    /// attachment stubs, the `_attachments` member (or just its stubs, if some
    /// attachments carry inline `data`) is cut out and the other members are
    /// re-joined with `,`: their bytes are kept, whitespace between them is not.
    pub doc: Box<RawValue>,
    /// Attachment stubs dropped from this doc.
    pub dropped_attachments: usize,
}

impl PartialEq for ImportedDoc {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.rev == other.rev
            && self.doc.get() == other.doc.get()
            && self.dropped_attachments == other.dropped_attachments
    }
}

/// What a dump held.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct DumpStats {
    /// Rows (or bare documents) read: `docs + skipped_rows`.
    pub rows: u64,
    /// Documents handed to the callback, design documents included.
    pub docs: u64,
    /// Of `docs`, those whose id starts with `_design/`.
    pub design_docs: u64,
    /// Rows without a document: no `doc` (dump made without
    /// `include_docs=true`), `"doc":null` (deleted), or an `error` row.
    pub skipped_rows: u64,
    /// Attachment stubs removed from documents.
    pub dropped_attachments: u64,
    /// The response's `total_rows`, when the file has it. Not checked against
    /// `rows`: a dump made with `limit`/`skip` legitimately differs.
    pub total_rows: Option<u64>,
}

/// Why a dump cannot be imported.
#[derive(Debug)]
pub(crate) enum ImportError {
    /// Reading the file failed.
    Io(io::Error),
    /// The file is not valid JSON (`truncated`: it ends in the middle of a value).
    Json {
        line: u64,
        column: u64,
        byte: u64,
        truncated: bool,
        detail: String,
    },
    /// Valid JSON, but not a dump CouchDB can take back. `row` counts rows (or
    /// bare documents) from 0 in file order; `line`/`byte` (1-based / 0-based)
    /// are where the row starts, or where the problem was found.
    Shape {
        row: Option<u64>,
        line: u64,
        byte: u64,
        detail: String,
    },
    /// Returned by the caller's callback, passed through unchanged.
    Callback(String),
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "reading the dump failed: {e}"),
            Self::Json {
                line,
                column,
                byte,
                truncated: true,
                detail,
            } => write!(
                f,
                "the dump is truncated: it ends at line {line}, column {column} (byte offset {byte}) \
                 in the middle of a JSON value ({detail})"
            ),
            Self::Json {
                line,
                column,
                byte,
                truncated: false,
                detail,
            } => {
                write!(
                    f,
                    "invalid JSON at line {line}, column {column} (byte offset {byte}): {detail}"
                )
            }
            Self::Shape {
                row: Some(row),
                line,
                byte,
                detail,
            } => write!(
                f,
                "row {row} (counting from 0; starts at line {line}, byte offset {byte}): {detail}"
            ),
            Self::Shape {
                row: None,
                line,
                byte,
                detail,
            } => {
                write!(f, "at line {line} (byte offset {byte}): {detail}")
            }
            Self::Callback(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ImportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads an `_all_docs?include_docs=true` response from `reader`, calling
/// `each` for every document in file order.
///
/// The callback sees documents before the end of the file has been checked:
/// on `Err` (a truncated or malformed file, or the callback's own error, which
/// stops the reading) the caller must discard everything it was given.
/// `reader` need not be buffered.
pub(crate) fn read_all_docs<R: Read>(
    reader: R,
    mut each: impl FnMut(ImportedDoc) -> Result<(), ImportError>,
) -> Result<DumpStats, ImportError> {
    let pos = Pos::new();
    let mut input = Source::new(reader, &pos);
    let layout = input.sniff().map_err(ImportError::Io)?;
    if matches!(layout, Layout::Empty) {
        return Err(ImportError::Shape {
            row: None,
            line: pos.newlines.get() + 1,
            byte: pos.bytes.get(),
            detail: "the file is empty: expected an _all_docs response".to_owned(),
        });
    }
    let mut ctx = Ctx {
        each: &mut each,
        stats: DumpStats::default(),
        kind: None,
        failure: None,
        pos: &pos,
        parsing_row: None,
    };
    match layout {
        Layout::Empty => {}
        Layout::Envelope | Layout::Array => {
            let mut de = serde_json::Deserializer::from_reader(input);
            let parsed = if matches!(layout, Layout::Envelope) {
                (&mut de).deserialize_map(EnvelopeVisitor { ctx: &mut ctx })
            } else {
                RowsSeed { ctx: &mut ctx }.deserialize(&mut de)
            };
            if let Err(e) = parsed.and_then(|()| de.end()) {
                return Err(ctx
                    .failure
                    .take()
                    .unwrap_or_else(|| json_error(e, &pos, ctx.parsing_row)));
            }
        }
        Layout::Records => {
            let stream = serde_json::Deserializer::from_reader(input).into_iter::<Box<RawValue>>();
            for record in stream {
                let raw = record.map_err(|e| json_error(e, &pos, Some(ctx.stats.rows)))?;
                let at = pos.start_of(raw.get());
                ctx.handle(Record::Raw(raw), at)?;
            }
        }
    }
    Ok(ctx.stats)
}

/// The database a dump file is for: `lms_notes.json` → `lms_notes`. `None`
/// for anything but `.json` (compressed dumps are not supported).
pub(crate) fn db_name_from_file(path: &Path) -> Option<String> {
    if !path.extension()?.to_str()?.eq_ignore_ascii_case("json") {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (!stem.is_empty()).then(|| stem.to_owned())
}

/// Looks through a backup manifest of unknown format for objects naming a
/// database (`db`, `db_name`, `database` or `name`) and a file (`file`,
/// `filename`, `file_name` or `path`), anywhere in the tree, in document
/// order for arrays. `None` if `bytes` is not JSON or no such object exists.
pub(crate) fn read_manifest(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    const DB_KEYS: [&str; 4] = ["db", "db_name", "database", "name"];
    const FILE_KEYS: [&str; 4] = ["file", "filename", "file_name", "path"];
    fn first_str<'a>(
        map: &'a serde_json::Map<String, serde_json::Value>,
        keys: &[&str],
    ) -> Option<&'a str> {
        keys.iter().find_map(|k| map.get(*k)?.as_str())
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let root: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let mut found: Vec<(String, String)> = Vec::new();
    let mut stack = vec![&root];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                let pair = first_str(map, &DB_KEYS).zip(first_str(map, &FILE_KEYS));
                if let Some((db, file)) =
                    pair.filter(|(db, file)| !found.iter().any(|(d, f)| d == db && f == file))
                {
                    found.push((db.to_owned(), file.to_owned()));
                }
                stack.extend(map.values().rev());
            }
            serde_json::Value::Array(items) => stack.extend(items.iter().rev()),
            _ => {}
        }
    }
    (!found.is_empty()).then_some(found)
}

// ---------------------------------------------------------------------------
// Reading: layout detection and position tracking.

/// How the file is laid out, from its first bytes.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Nothing but whitespace.
    Empty,
    /// `{"total_rows":…, "rows":[…]}`.
    Envelope,
    /// `[row or doc, …]`.
    Array,
    /// Row or doc objects one after another (NDJSON).
    Records,
}

/// The members that start an `_all_docs` response (CouchDB writes
/// `total_rows` first; a key-sorting reformatter puts `offset` first).
const ENVELOPE_KEYS: [&[u8]; 4] = [b"total_rows", b"offset", b"rows", b"update_seq"];

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// How many line starts [`Pos`] remembers.
const LINES_KEPT: u64 = 16;

/// Bytes and newlines handed to the parser so far.
#[derive(Debug)]
struct Pos {
    bytes: Cell<u64>,
    newlines: Cell<u64>,
    /// Where the last [`LINES_KEPT`] lines start, by line number modulo
    /// [`LINES_KEPT`]: serde_json reports errors by line and column, and may
    /// have read a little further before it does.
    line_starts: [Cell<u64>; 16],
}

impl Pos {
    fn new() -> Self {
        Self {
            bytes: Cell::new(0),
            newlines: Cell::new(0),
            line_starts: Default::default(),
        }
    }

    /// serde_json does not see a byte-order mark: its line 1 starts after it.
    fn skip_bom(&self) {
        self.bytes.set(3);
        self.line_start(1).set(3);
    }

    /// Counts byte `b`, handed to the parser.
    #[inline]
    fn advance(&self, b: u8) {
        let bytes = self.bytes.get() + 1;
        self.bytes.set(bytes);
        if b == b'\n' {
            let line = self.newlines.get() + 1;
            self.newlines.set(line);
            self.line_start(line + 1).set(bytes);
        }
    }

    fn line_start(&self, line: u64) -> &Cell<u64> {
        &self.line_starts[usize::try_from(line % LINES_KEPT).unwrap_or_default()]
    }

    /// The byte offset of serde_json's `line`:`column` (1-based; the column
    /// counts bytes), if that line is among the last ones read.
    fn byte_at(&self, line: u64, column: u64) -> Option<u64> {
        let current = self.newlines.get() + 1;
        (line <= current && current - line < LINES_KEPT)
            .then(|| self.line_start(line).get() + column.saturating_sub(1))
    }

    /// Where a record starts, once the parser has peeked its first byte
    /// (which serde_json has done when it asks a seed for a sequence element).
    fn at_peeked(&self) -> Location {
        Location {
            line: self.newlines.get() + 1,
            byte: self.bytes.get().saturating_sub(1),
        }
    }

    /// Where `raw` starts, once the parser has just read it.
    fn start_of(&self, raw: &str) -> Location {
        let newlines = raw.bytes().filter(|&b| b == b'\n').count() as u64;
        Location {
            line: (self.newlines.get() + 1).saturating_sub(newlines),
            byte: self.bytes.get().saturating_sub(raw.len() as u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Location {
    line: u64,
    byte: u64,
}

/// A buffered reader keeping [`Pos`] at the last byte it handed out.
/// serde_json reads one byte at a time, so that is where the parser is.
#[derive(Debug)]
struct Source<'p, R> {
    inner: R,
    buf: Box<[u8]>,
    /// `buf[start..end]` is read but not handed out yet.
    start: usize,
    end: usize,
    pos: &'p Pos,
}

impl<'p, R: Read> Source<'p, R> {
    fn new(inner: R, pos: &'p Pos) -> Self {
        Self {
            inner,
            buf: vec![0; 1 << 16].into_boxed_slice(),
            start: 0,
            end: 0,
            pos,
        }
    }

    /// The byte `ahead` bytes after the next one, reading more if needed;
    /// `None` at the end of the file (or beyond what the buffer can hold).
    fn peek(&mut self, ahead: usize) -> io::Result<Option<u8>> {
        while self.end - self.start <= ahead {
            if self.end == self.buf.len() {
                if self.start == 0 {
                    return Ok(None);
                }
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match self
                .inner
                .read(self.buf.get_mut(self.end..).unwrap_or_default())
            {
                Ok(0) => return Ok(None),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.buf.get(self.start + ahead).copied())
    }

    /// Tells the layout from the first bytes: whitespace, then `[`, or `{`
    /// and its first key. Consumes only a byte-order mark and whitespace.
    fn sniff(&mut self) -> io::Result<Layout> {
        if self.peek(0)? == Some(0xEF) && self.peek(1)? == Some(0xBB) && self.peek(2)? == Some(0xBF)
        {
            self.start += 3;
            self.pos.skip_bom();
        }
        while let Some(b) = self.peek(0)?.filter(|&b| is_ws(b)) {
            self.start += 1;
            self.pos.advance(b);
        }
        Ok(match self.peek(0)? {
            None => Layout::Empty,
            Some(b'[') => Layout::Array,
            Some(b'{') => {
                let mut ahead = 1;
                while self.peek(ahead)?.is_some_and(is_ws) {
                    ahead += 1;
                }
                let mut layout = Layout::Records;
                if self.peek(ahead)? == Some(b'"') {
                    let mut key = Vec::new();
                    loop {
                        ahead += 1;
                        match self.peek(ahead)? {
                            Some(b'"') if ENVELOPE_KEYS.contains(&key.as_slice()) => {
                                layout = Layout::Envelope;
                                break;
                            }
                            Some(b) if b != b'"' && b != b'\\' && key.len() < 16 => key.push(b),
                            _ => break,
                        }
                    }
                }
                layout
            }
            Some(_) => Layout::Records,
        })
    }
}

impl<R: Read> Read for Source<'_, R> {
    #[inline]
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end && self.peek(0)?.is_none() {
            return Ok(0);
        }
        if let ([slot], Some(&b)) = (&mut *out, self.buf.get(self.start)) {
            *slot = b;
            self.start += 1;
            self.pos.advance(b);
            return Ok(1);
        }
        let ready = self.buf.get(self.start..self.end).unwrap_or_default();
        let n = ready.len().min(out.len());
        let ready = ready.get(..n).unwrap_or_default();
        out.get_mut(..n).unwrap_or_default().copy_from_slice(ready);
        for &b in ready {
            self.pos.advance(b);
        }
        self.start += n;
        Ok(n)
    }
}

/// serde_json's message without its " at line L column C".
fn json_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    full.strip_suffix(&suffix)
        .map_or_else(|| full.clone(), str::to_owned)
}

fn json_error(e: serde_json::Error, pos: &Pos, row: Option<u64>) -> ImportError {
    use serde_json::error::Category;
    if e.is_io() {
        return ImportError::Io(e.into());
    }
    let detail = json_message(&e);
    let (line, column) = (e.line() as u64, e.column() as u64);
    // serde_json may have read past the error (closing the enclosing arrays
    // and objects), so the byte offset comes from its line and column.
    let byte = pos.byte_at(line, column).unwrap_or_else(|| pos.bytes.get());
    match e.classify() {
        Category::Eof => ImportError::Json {
            line,
            column,
            byte: pos.bytes.get(),
            truncated: true,
            detail,
        },
        Category::Syntax => ImportError::Json {
            line,
            column,
            byte,
            truncated: false,
            detail,
        },
        Category::Data | Category::Io => ImportError::Shape {
            row,
            line,
            byte,
            detail,
        },
    }
}

// ---------------------------------------------------------------------------
// Rows and documents.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Row,
    Doc,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Row => "an _all_docs row",
            Self::Doc => "a bare document",
        }
    }
}

/// One element of the rows array or one NDJSON record.
#[derive(Debug)]
enum Record {
    /// Not looked at yet: a document, or a row of a file whose kind is not known yet.
    Raw(Box<RawValue>),
    /// A row, parsed while reading.
    Row(RowFields),
}

/// The members of an `_all_docs` row.
#[derive(Debug, Default)]
struct RowFields {
    id: Option<String>,
    value: Option<Box<RawValue>>,
    doc: Option<Box<RawValue>>,
    error: bool,
    /// `_id` or `_rev`, found in what should be a row.
    doc_member: Option<&'static str>,
}

impl<'de> Deserialize<'de> for RowFields {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Field {
            Id,
            Value,
            Doc,
            Error,
            #[serde(rename = "_id")]
            DocId,
            #[serde(rename = "_rev")]
            DocRev,
            #[serde(other)]
            Other,
        }
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = RowFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an _all_docs row object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RowFields, A::Error> {
                fn once<T, E: de::Error>(
                    slot: &mut Option<T>,
                    value: T,
                    name: &'static str,
                ) -> Result<(), E> {
                    if slot.replace(value).is_some() {
                        return Err(E::duplicate_field(name));
                    }
                    Ok(())
                }
                let mut row = RowFields::default();
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Id => once(&mut row.id, map.next_value()?, "id")?,
                        Field::Value => once(&mut row.value, map.next_value()?, "value")?,
                        Field::Doc => once(&mut row.doc, map.next_value()?, "doc")?,
                        Field::Error => {
                            map.next_value::<IgnoredAny>()?;
                            row.error = true;
                        }
                        Field::DocId | Field::DocRev => {
                            map.next_value::<IgnoredAny>()?;
                            row.doc_member
                                .get_or_insert(if matches!(field, Field::DocId) {
                                    "_id"
                                } else {
                                    "_rev"
                                });
                        }
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(row)
            }
        }
        deserializer.deserialize_map(RowVisitor)
    }
}

/// A row's `value`.
#[derive(Debug, Deserialize)]
struct RowValue {
    rev: Option<String>,
}

/// What one record gave.
#[derive(Debug)]
enum Outcome {
    Doc(ImportedDoc),
    Skip,
}

/// Members a row may have (`reason` comes with `error`).
const ROW_KEYS: [&str; 6] = ["id", "key", "value", "doc", "error", "reason"];

/// The state of one import, shared by the visitors.
struct Ctx<'a> {
    each: &'a mut dyn FnMut(ImportedDoc) -> Result<(), ImportError>,
    stats: DumpStats,
    /// What the records of this file are, once the first one told.
    kind: Option<Kind>,
    /// The error that made a visitor stop serde_json.
    failure: Option<ImportError>,
    pos: &'a Pos,
    /// The row being parsed, for serde_json's data errors.
    parsing_row: Option<u64>,
}

impl Ctx<'_> {
    /// Stops serde_json, keeping `error` to report instead of serde_json's.
    fn fail<E: de::Error>(&mut self, error: ImportError) -> E {
        self.failure = Some(error);
        E::custom("import stopped")
    }

    fn handle(&mut self, record: Record, at: Location) -> Result<(), ImportError> {
        let index = self.stats.rows;
        self.stats.rows += 1;
        let outcome = match record {
            Record::Raw(raw) => self.raw(raw),
            Record::Row(row) => self.row(row),
        };
        let outcome = outcome.map_err(|detail| ImportError::Shape {
            row: Some(index),
            line: at.line,
            byte: at.byte,
            detail,
        })?;
        match outcome {
            Outcome::Skip => self.stats.skipped_rows += 1,
            Outcome::Doc(doc) => {
                self.stats.docs += 1;
                if doc.id.starts_with("_design/") {
                    self.stats.design_docs += 1;
                }
                self.stats.dropped_attachments += doc.dropped_attachments as u64;
                (self.each)(doc)?;
            }
        }
        Ok(())
    }

    fn set_kind(&mut self, kind: Kind) -> Result<(), String> {
        match self.kind {
            Some(known) if known != kind => Err(format!(
                "this is {} but the rows before it are {}s; a dump must not mix them",
                kind.name(),
                known
                    .name()
                    .trim_start_matches("a ")
                    .trim_start_matches("an ")
            )),
            _ => {
                self.kind = Some(kind);
                Ok(())
            }
        }
    }

    /// A record whose kind is not known: a document, or a row.
    fn raw(&mut self, raw: Box<RawValue>) -> Result<Outcome, String> {
        let text = raw.get();
        let Some(members) = object_members(text) else {
            return Err(format!(
                "expected a JSON object (an _all_docs row or a document), found `{}`",
                excerpt(text)
            ));
        };
        let has = |name: &str| members.iter().any(|m| m.key == name);
        if has("_id") || has("_rev") {
            self.set_kind(Kind::Doc)?;
            let facts = doc_facts(text, &members)?;
            drop(members);
            return finish_doc(raw, facts).map(Outcome::Doc);
        }
        let row_like = members.iter().all(|m| ROW_KEYS.contains(&m.key.as_ref()));
        if row_like && (has("id") || has("key")) {
            self.set_kind(Kind::Row)?;
            let row: RowFields = serde_json::from_str(text)
                .map_err(|e| format!("malformed _all_docs row: {}", json_message(&e)))?;
            return self.row(row);
        }
        if has("error") {
            return Err(format!(
                "this is a CouchDB error response, not a dump: `{}`",
                excerpt(text)
            ));
        }
        Err(match self.kind {
            Some(Kind::Doc) => "document has no `_id` and no `_rev`".to_owned(),
            _ => "neither an _all_docs row (no `id`/`key`) nor a document (no `_id`/`_rev`)"
                .to_owned(),
        })
    }

    fn row(&mut self, row: RowFields) -> Result<Outcome, String> {
        if let Some(member) = row.doc_member {
            return Err(format!(
                "has a `{member}` member like a document, but it is in a list of _all_docs rows"
            ));
        }
        self.set_kind(Kind::Row)?;
        let Some(doc) = row.doc.filter(|doc| !row.error && doc.get() != "null") else {
            return Ok(Outcome::Skip); // error row, deleted doc, or no include_docs
        };
        let rev = match &row.value {
            Some(value) => {
                serde_json::from_str::<RowValue>(value.get())
                    .map_err(|e| {
                        format!(
                            "`value` should be like {{\"rev\":\"…\"}}: {}",
                            json_message(&e)
                        )
                    })?
                    .rev
            }
            None => None,
        };
        let facts = {
            let text = doc.get();
            let members = object_members(text)
                .ok_or_else(|| format!("`doc` is not a JSON object: `{}`", excerpt(text)))?;
            doc_facts(text, &members)?
        };
        if let Some(id) = row.id.filter(|id| *id != facts.id) {
            return Err(format!(
                "the row's id `{id}` differs from its document's `_id` `{}`",
                facts.id
            ));
        }
        if let Some(rev) = rev.filter(|rev| *rev != facts.rev) {
            return Err(format!(
                "the row's value.rev `{rev}` differs from its document's `_rev` `{}` (document `{}`)",
                facts.rev, facts.id
            ));
        }
        finish_doc(doc, facts).map(Outcome::Doc)
    }
}

/// What the `doc` of a record says.
#[derive(Debug)]
struct DocFacts {
    id: String,
    rev: String,
    dropped: usize,
    /// The document without its stubs, when it had some.
    rewritten: Option<String>,
}

fn doc_facts(text: &str, members: &[Member<'_>]) -> Result<DocFacts, String> {
    let string = |m: &Member<'_>| -> Result<String, String> {
        serde_json::from_str::<String>(m.value)
            .map_err(|_| format!("`{}` is not a string: `{}`", m.key, excerpt(m.value)))
    };
    let (mut id, mut rev, mut attachments) = (None, None, None);
    for (index, m) in members.iter().enumerate() {
        let slot_taken = match m.key.as_ref() {
            "_id" => id.replace(string(m)?).is_some(),
            "_rev" => rev.replace(string(m)?).is_some(),
            "_attachments" => attachments.replace((index, attachment_stubs(m)?)).is_some(),
            _ => false,
        };
        if slot_taken {
            return Err(format!("document has two `{}` members", m.key));
        }
    }
    let id = id
        .filter(|id| !id.is_empty())
        .ok_or("document has no `_id` (or an empty one)")?;
    let rev = rev.ok_or_else(|| format!("document `{id}` has no `_rev`"))?;
    let well_formed = rev.split_once('-').is_some_and(|(n, hash)| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !hash.is_empty()
    });
    if !well_formed {
        return Err(format!(
            "document `{id}` has `_rev` `{rev}`, not of the form N-hash"
        ));
    }
    let (dropped, rewritten) = match attachments {
        Some((index, stubs)) if stubs.dropped > 0 => (
            stubs.dropped,
            Some(without_stubs(text, members, index, &stubs.kept)),
        ),
        _ => (0, None),
    };
    Ok(DocFacts {
        id,
        rev,
        dropped,
        rewritten,
    })
}

/// An `_attachments` object, sorted: entries with inline `data` are kept,
/// stubs (no `data`) dropped.
#[derive(Debug)]
struct Stubs<'a> {
    kept: Vec<&'a str>,
    dropped: usize,
}

fn attachment_stubs<'a>(m: &Member<'a>) -> Result<Stubs<'a>, String> {
    let entries = object_members(m.value).ok_or_else(|| {
        format!(
            "`_attachments` is not a JSON object: `{}`",
            excerpt(m.value)
        )
    })?;
    let mut stubs = Stubs {
        kept: Vec::new(),
        dropped: 0,
    };
    for entry in &entries {
        let fields = object_members(entry.value)
            .ok_or_else(|| format!("attachment `{}` is not a JSON object", entry.key))?;
        if fields.iter().any(|f| f.key == "data") {
            stubs.kept.push(entry.entry);
        } else {
            stubs.dropped += 1;
        }
    }
    Ok(stubs)
}

/// `text` (an object with `members`) re-emitted without member `index`'s
/// stubs: members joined by `,`, each with its exact bytes.
fn without_stubs(text: &str, members: &[Member<'_>], index: usize, kept: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    out.push('{');
    for (i, m) in members.iter().enumerate() {
        if i == index {
            if kept.is_empty() {
                continue;
            }
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(m.key_raw);
            out.push_str(":{");
            out.push_str(&kept.join(","));
            out.push('}');
        } else {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(m.entry);
        }
    }
    out.push('}');
    out
}

fn finish_doc(raw: Box<RawValue>, facts: DocFacts) -> Result<ImportedDoc, String> {
    let doc = match facts.rewritten {
        None => raw,
        Some(text) => RawValue::from_string(text)
            .map_err(|e| format!("internal error removing attachment stubs: {e}"))?,
    };
    Ok(ImportedDoc {
        id: facts.id,
        rev: facts.rev,
        doc,
        dropped_attachments: facts.dropped,
    })
}

/// The start of `text`, for messages.
fn excerpt(text: &str) -> Cow<'_, str> {
    const MAX: usize = 80;
    if text.len() <= MAX {
        return Cow::Borrowed(text);
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", text.get(..end).unwrap_or_default()))
}

// ---------------------------------------------------------------------------
// Top-level members of a JSON object, by byte position. Only ever run on text
// serde_json has already validated, so it need not check everything; on
// malformed input it returns `None` rather than panicking.

#[derive(Debug)]
struct Member<'a> {
    /// The decoded key.
    key: Cow<'a, str>,
    /// The key as written, quotes included.
    key_raw: &'a str,
    /// The value as written.
    value: &'a str,
    /// From the key's opening quote to the value's end.
    entry: &'a str,
}

fn object_members(text: &str) -> Option<Vec<Member<'_>>> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut members = Vec::new();
    if b.get(i) == Some(&b'}') {
        return Some(members);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_start = i;
        let key_end = string_end(b, i)?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(b, i + 1);
        let value_end = value_end(b, value_start)?;
        let key_raw = text.get(key_start..key_end)?;
        members.push(Member {
            key: decode_key(key_raw)?,
            key_raw,
            value: text.get(value_start..value_end)?,
            entry: text.get(key_start..value_end)?,
        });
        i = skip_ws(b, value_end);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return Some(members),
            _ => return None,
        }
    }
}

fn decode_key(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.get(1..raw.len().checked_sub(1)?)?;
    if inner.contains('\\') {
        serde_json::from_str(raw).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|&c| is_ws(c)) {
        i += 1;
    }
    i
}

/// Just past the string whose opening quote is at `start`.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        i += b.get(i..)?.iter().position(|&c| c == b'"' || c == b'\\')?;
        if b.get(i)? == &b'"' {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// Just past the value starting at `start`.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    match b.get(start)? {
        b'"' => string_end(b, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                i += b
                    .get(i..)?
                    .iter()
                    .position(|&c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']'))?;
                match b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    _ => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                }
                i += 1;
            }
        }
        _ => {
            let rest = b.get(start..)?;
            let len = rest
                .iter()
                .position(|&c| matches!(c, b',' | b'}' | b']') || is_ws(c))
                .unwrap_or(rest.len());
            (len > 0).then_some(start + len)
        }
    }
}

// ---------------------------------------------------------------------------
// serde visitors over the response object and the rows array.

/// The `_all_docs` response object.
struct EnvelopeVisitor<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
}

impl<'de> Visitor<'de> for EnvelopeVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an _all_docs response object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut saw_rows = false;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "rows" => {
                    if saw_rows {
                        let error = self.shape_here("the response has two `rows` members");
                        return Err(self.ctx.fail(error));
                    }
                    saw_rows = true;
                    map.next_value_seed(RowsSeed {
                        ctx: &mut *self.ctx,
                    })?;
                }
                "total_rows" => self.ctx.stats.total_rows = map.next_value::<Option<u64>>()?,
                "_id" | "_rev" | "id" | "key" | "value" | "doc" => {
                    let error = self.shape_here(&format!(
                        "the top-level object has `rows`-style members and a `{key}` member; \
                         it is neither clearly an _all_docs response nor a row or document"
                    ));
                    return Err(self.ctx.fail(error));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !saw_rows {
            let error = self.shape_here("the _all_docs response has no `rows` member");
            return Err(self.ctx.fail(error));
        }
        Ok(())
    }
}

impl EnvelopeVisitor<'_, '_> {
    fn shape_here(&self, detail: &str) -> ImportError {
        ImportError::Shape {
            row: None,
            line: self.ctx.pos.newlines.get() + 1,
            byte: self.ctx.pos.bytes.get(),
            detail: detail.to_owned(),
        }
    }
}

/// The rows array (or a bare array of rows or documents).
struct RowsSeed<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of _all_docs rows or of documents")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            self.ctx.parsing_row = Some(self.ctx.stats.rows);
            let seed = RecordSeed {
                kind: self.ctx.kind,
                pos: self.ctx.pos,
            };
            let Some((record, at)) = seq.next_element_seed(seed)? else {
                break;
            };
            if let Err(error) = self.ctx.handle(record, at) {
                return Err(self.ctx.fail(error));
            }
        }
        self.ctx.parsing_row = None;
        Ok(())
    }
}

/// One element of a rows array: parsed as a row straight away when the file
/// is known to hold rows, kept raw otherwise.
struct RecordSeed<'p> {
    kind: Option<Kind>,
    pos: &'p Pos,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = (Record, Location);

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        let at = self.pos.at_peeked();
        let record = match self.kind {
            Some(Kind::Row) => Record::Row(RowFields::deserialize(deserializer)?),
            _ => Record::Raw(Box::<RawValue>::deserialize(deserializer)?),
        };
        Ok((record, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = (Vec<ImportedDoc>, DumpStats);

    fn parse(input: &str) -> Result<Parsed, ImportError> {
        let mut docs = Vec::new();
        let stats = read_all_docs(input.as_bytes(), |doc| {
            docs.push(doc);
            Ok(())
        })?;
        Ok((docs, stats))
    }

    fn parse_ok(input: &str) -> Parsed {
        match parse(input) {
            Ok(parsed) => parsed,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn parse_err(input: &str) -> ImportError {
        match parse(input) {
            Ok(parsed) => panic!("expected an error, got {parsed:?}"),
            Err(e) => e,
        }
    }

    fn texts(docs: &[ImportedDoc]) -> Vec<&str> {
        docs.iter().map(|d| d.doc.get()).collect()
    }

    /// A reader handing out at most `chunk` bytes per call.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.data.len());
            let (head, tail) = self.data.split_at(n);
            buf.get_mut(..n).unwrap_or_default().copy_from_slice(head);
            self.data = tail;
            Ok(n)
        }
    }

    /// As CouchDB writes it: one row per line, `\r\n`.
    const COUCH: &str = "{\"total_rows\":3,\"offset\":0,\"rows\":[\r\n\
        {\"id\":\"_design/app\",\"key\":\"_design/app\",\"value\":{\"rev\":\"2-d1\"},\"doc\":{\"_id\":\"_design/app\",\"_rev\":\"2-d1\",\"views\":{}}},\r\n\
        {\"id\":\"a\",\"key\":\"a\",\"value\":{\"rev\":\"1-aa\"},\"doc\":{\"_id\":\"a\",\"_rev\":\"1-aa\",\"x\":1}},\r\n\
        {\"id\":\"b\",\"key\":\"b\",\"value\":{\"rev\":\"3-bb\"},\"doc\":{\"_id\":\"b\",\"_rev\":\"3-bb\",\"y\":[1,{\"z\":\"}\"}]}}\r\n\
        ]}\n";

    #[test]
    fn couchdb_response() {
        let (docs, stats) = parse_ok(COUCH);
        assert_eq!(
            stats,
            DumpStats {
                rows: 3,
                docs: 3,
                design_docs: 1,
                skipped_rows: 0,
                dropped_attachments: 0,
                total_rows: Some(3)
            }
        );
        let ids: Vec<_> = docs
            .iter()
            .map(|d| (d.id.as_str(), d.rev.as_str()))
            .collect();
        assert_eq!(ids, [("_design/app", "2-d1"), ("a", "1-aa"), ("b", "3-bb")]);
        assert_eq!(
            texts(&docs),
            [
                r#"{"_id":"_design/app","_rev":"2-d1","views":{}}"#,
                r#"{"_id":"a","_rev":"1-aa","x":1}"#,
                r#"{"_id":"b","_rev":"3-bb","y":[1,{"z":"}"}]}"#
            ]
        );
        // The same through a reader giving one byte at a time, and with a BOM.
        let mut trickled = Vec::new();
        let with_bom = format!("\u{feff}{COUCH}");
        let again = read_all_docs(
            Trickle {
                data: with_bom.as_bytes(),
                chunk: 1,
            },
            |d| {
                trickled.push(d);
                Ok(())
            },
        );
        assert_eq!(again.ok(), Some(stats));
        assert_eq!(trickled, docs);
    }

    #[test]
    fn members_in_any_order_and_pretty_printed() {
        let input = r#"
        {
          "offset": 0,
          "rows": [
            {
              "doc": { "_rev": "1-aa", "_id": "a", "n": 1.50 },
              "value": { "rev": "1-aa" },
              "key": "a",
              "id": "a"
            }
          ],
          "update_seq": "12-g1AAAA",
          "total_rows": 1,
          "unknown": {"ignored": [1, 2]}
        }"#;
        let (docs, stats) = parse_ok(input);
        assert_eq!(stats.total_rows, Some(1));
        assert_eq!(stats.docs, 1);
        assert_eq!(
            texts(&docs),
            [r#"{ "_rev": "1-aa", "_id": "a", "n": 1.50 }"#]
        );
        // total_rows missing or null is fine too.
        assert_eq!(
            parse_ok(r#"{"rows":[],"total_rows":null}"#).1,
            DumpStats::default()
        );
    }

    #[test]
    fn bare_array_of_rows() {
        let input = r#"[{"id":"a","key":"a","value":{"rev":"1-a"},"doc":{"_id":"a","_rev":"1-a"}},
                        {"id":"b","key":"b","value":{"rev":"1-b"},"doc":{"_id":"b","_rev":"1-b"}}]"#;
        let (docs, stats) = parse_ok(input);
        assert_eq!((stats.rows, stats.docs, stats.total_rows), (2, 2, None));
        assert_eq!(docs.get(1).map(|d| d.id.as_str()), Some("b"));
    }

    #[test]
    fn bare_array_of_documents() {
        let input = r#"[ {"_id":"a","_rev":"1-a","k":"v"}, {"_id":"_design/d","_rev":"4-d"} ]"#;
        let (docs, stats) = parse_ok(input);
        assert_eq!((stats.rows, stats.docs, stats.design_docs), (2, 2, 1));
        assert_eq!(
            texts(&docs),
            [
                r#"{"_id":"a","_rev":"1-a","k":"v"}"#,
                r#"{"_id":"_design/d","_rev":"4-d"}"#
            ]
        );
        assert_eq!(parse_ok("[]").1, DumpStats::default());
    }

    #[test]
    fn ndjson_documents_and_rows() {
        let docs_input = "{\"_id\":\"a\",\"_rev\":\"1-a\"}\n{\"_id\":\"b\",\"_rev\":\"2-b\",\"nested\":{\"rows\":[]}}\n\n";
        let (docs, stats) = parse_ok(docs_input);
        assert_eq!((stats.rows, stats.docs), (2, 2));
        assert_eq!(
            texts(&docs),
            [
                r#"{"_id":"a","_rev":"1-a"}"#,
                r#"{"_id":"b","_rev":"2-b","nested":{"rows":[]}}"#
            ]
        );

        let rows_input = "{\"id\":\"a\",\"key\":\"a\",\"value\":{\"rev\":\"1-a\"},\"doc\":{\"_id\":\"a\",\"_rev\":\"1-a\"}}\n\
                          {\"key\":\"gone\",\"error\":\"not_found\"}\n";
        let (docs, stats) = parse_ok(rows_input);
        assert_eq!((stats.rows, stats.docs, stats.skipped_rows), (2, 1, 1));
        assert_eq!(texts(&docs), [r#"{"_id":"a","_rev":"1-a"}"#]);

        // A document whose first member is `rows` looks like a response: an
        // error, not a guess.
        assert!(matches!(
            parse_err(r#"{"rows":1,"_id":"r","_rev":"1-r"}"#),
            ImportError::Shape { .. }
        ));
        // The rows of a response may be bare documents.
        let (docs, _) = parse_ok(r#"{"total_rows":1,"rows":[{"_id":"a","_rev":"1-a"}]}"#);
        assert_eq!(texts(&docs), [r#"{"_id":"a","_rev":"1-a"}"#]);
    }

    #[test]
    fn rows_without_documents_are_skipped() {
        let input = r#"{"total_rows":4,"rows":[
            {"id":"a","key":"a","value":{"rev":"1-a"}},
            {"id":"b","key":"b","value":{"rev":"2-b","deleted":true},"doc":null},
            {"key":"c","error":"not_found"},
            {"id":"d","key":"d","value":{"rev":"1-d"},"doc":{"_id":"d","_rev":"1-d"}}
        ]}"#;
        let (docs, stats) = parse_ok(input);
        assert_eq!(
            stats,
            DumpStats {
                rows: 4,
                docs: 1,
                design_docs: 0,
                skipped_rows: 3,
                dropped_attachments: 0,
                total_rows: Some(4)
            }
        );
        assert_eq!(docs.first().map(|d| d.id.as_str()), Some("d"));
    }

    #[test]
    fn attachment_stubs_are_removed_and_other_bytes_kept() {
        let doc = r#"{"_id":"a","_rev":"2-x","title":"Caf\u00e9 \"q\" \/","_attachments":{"f.txt":{"content_type":"text/plain","revpos":2,"digest":"md5-AAA=","length":5,"stub":true},"g.png":{"stub":true,"length":1}},"n":1.50,"e":1E3}"#;
        let input = format!(
            r#"{{"total_rows":1,"offset":0,"rows":[{{"id":"a","key":"a","value":{{"rev":"2-x"}},"doc":{doc}}}]}}"#
        );
        let (docs, stats) = parse_ok(&input);
        assert_eq!(stats.dropped_attachments, 2);
        assert_eq!(docs.first().map(|d| d.dropped_attachments), Some(2));
        assert_eq!(
            texts(&docs),
            [r#"{"_id":"a","_rev":"2-x","title":"Caf\u00e9 \"q\" \/","n":1.50,"e":1E3}"#]
        );

        // As first, last and only member; inline attachments are kept.
        let input = concat!(
            r#"{"_attachments":{"s":{"stub":true}},"_id":"a","_rev":"1-a"}"#,
            "\n",
            r#"{"_id":"b","_rev":"1-b","_attachments":{"s":{"stub":true}}}"#,
            "\n",
            r#"{"_id":"c","_rev":"1-c","_attachments":{"s":{"stub":true},"i":{"content_type":"text/plain","data":"aGk="}},"z":0}"#,
            "\n",
            r#"{"_id":"d","_rev":"1-d","_attachments":{"i":{"data":"aGk="}}}"#,
            "\n",
            r#"{"_id":"e","_rev":"1-e","_attachments":{}}"#,
        );
        let (docs, stats) = parse_ok(input);
        assert_eq!(
            texts(&docs),
            [
                r#"{"_id":"a","_rev":"1-a"}"#,
                r#"{"_id":"b","_rev":"1-b"}"#,
                r#"{"_id":"c","_rev":"1-c","_attachments":{"i":{"content_type":"text/plain","data":"aGk="}},"z":0}"#,
                r#"{"_id":"d","_rev":"1-d","_attachments":{"i":{"data":"aGk="}}}"#,
                r#"{"_id":"e","_rev":"1-e","_attachments":{}}"#,
            ]
        );
        assert_eq!(stats.dropped_attachments, 3);
        // Pretty-printed: members keep their bytes, the whitespace between them goes.
        let pretty = "{\n  \"_id\": \"p\",\n  \"_rev\": \"1-p\",\n  \"_attachments\": {\n    \"s\": { \"stub\": true }\n  },\n  \"list\": [ 1, 2 ]\n}\n";
        let (pretty_docs, _) = parse_ok(pretty);
        assert_eq!(
            texts(&pretty_docs),
            ["{\"_id\": \"p\",\"_rev\": \"1-p\",\"list\": [ 1, 2 ]}"]
        );
        let dropped: Vec<_> = docs.iter().map(|d| d.dropped_attachments).collect();
        assert_eq!(dropped, [1, 1, 1, 0, 0]);
    }

    fn shape(e: &ImportError) -> (Option<u64>, u64, u64, &str) {
        match e {
            ImportError::Shape {
                row,
                line,
                byte,
                detail,
            } => (*row, *line, *byte, detail),
            other => panic!("expected a shape error, got {other:?}"),
        }
    }

    #[test]
    fn id_and_rev_mismatch() {
        let e = parse_err(
            COUCH
                .replace(r#""id":"a","key":"a""#, r#""id":"A","key":"a""#)
                .as_str(),
        );
        let (row, line, byte, detail) = shape(&e);
        assert_eq!(row, Some(1));
        assert_eq!(line, 3);
        // The byte offset points at the row's opening brace.
        let start = COUCH.find(r#"{"id":"a""#).map(|b| b as u64);
        assert_eq!(Some(byte), start);
        assert!(detail.contains("`A`") && detail.contains("`a`"), "{detail}");
        assert!(
            e.to_string()
                .starts_with("row 1 (counting from 0; starts at line 3, byte offset "),
            "{e}"
        );

        let e = parse_err(&COUCH.replace(r#""value":{"rev":"3-bb"}"#, r#""value":{"rev":"2-bb"}"#));
        let (row, line, _, detail) = shape(&e);
        assert_eq!((row, line), (Some(2), 4));
        assert!(
            detail.contains("2-bb") && detail.contains("3-bb"),
            "{detail}"
        );
    }

    #[test]
    fn missing_id_or_rev() {
        let e = parse_err(&COUCH.replace(r#""_id":"a","_rev":"1-aa","x":1"#, r#""_id":"a","x":1"#));
        let (row, line, _, detail) = shape(&e);
        assert_eq!((row, line), (Some(1), 3));
        assert!(detail.contains("no `_rev`"), "{detail}");

        let e = parse_err("{\"_id\":\"a\",\"_rev\":\"1-a\"}\n{\"_rev\":\"1-b\",\"v\":1}\n");
        let (row, line, byte, detail) = shape(&e);
        assert_eq!((row, line, byte), (Some(1), 2, 25));
        assert!(detail.contains("no `_id`"), "{detail}");

        let e = parse_err(r#"[{"_id":"a","_rev":"1-a"}, {"v":1}]"#);
        let (row, line, byte, _) = shape(&e);
        assert_eq!((row, line, byte), (Some(1), 1, 27));
        let e = parse_err(r#"[{"_id":"a","_rev":"zzz"}]"#);
        assert!(shape(&e).3.contains("N-hash"));
        let e = parse_err(r#"[{"_id":7,"_rev":"1-a"}]"#);
        assert!(shape(&e).3.contains("not a string"));
    }

    #[test]
    fn truncated_file() {
        let cut = COUCH.get(..COUCH.len() - 30).unwrap_or_default();
        let e = parse_err(cut);
        match &e {
            ImportError::Json {
                line,
                byte,
                truncated,
                ..
            } => {
                assert!(*truncated);
                assert_eq!(*line, 4);
                assert_eq!(*byte, cut.len() as u64);
            }
            other => panic!("expected truncation, got {other:?}"),
        }
        assert!(e.to_string().contains("truncated"), "{e}");
        // Cut between rows, and right after the opening brace.
        let cut = COUCH
            .get(..COUCH.find("\r\n{\"id\":\"b\"").unwrap_or_default())
            .unwrap_or_default();
        assert!(matches!(
            parse_err(cut),
            ImportError::Json {
                truncated: true,
                ..
            }
        ));
        assert!(matches!(
            parse_err("{"),
            ImportError::Json {
                truncated: true,
                ..
            }
        ));
        assert!(matches!(
            parse_err("{\"_id\":\"a\",\"_rev\":\"1-a\"}\n{\"_id\":\"b\""),
            ImportError::Json {
                truncated: true,
                ..
            }
        ));
    }

    #[test]
    fn invalid_json() {
        let bad = COUCH.replace(r#""x":1"#, r#""x":1,,"#);
        let e = parse_err(&bad);
        match &e {
            ImportError::Json {
                line,
                column,
                byte,
                truncated: false,
                ..
            } => {
                let at = bad.find(",,").map(|b| b as u64 + 1);
                assert_eq!(Some(*byte), at);
                assert_eq!(*line, 3);
                let line_start = bad
                    .match_indices('\n')
                    .nth(1)
                    .map(|(i, _)| i as u64 + 1)
                    .unwrap_or_default();
                assert_eq!(*column, *byte - line_start + 1);
            }
            other => panic!("expected invalid JSON, got {other:?}"),
        }
        assert!(
            e.to_string().starts_with("invalid JSON at line 3, column "),
            "{e}"
        );
        // Trailing garbage, and data after the response.
        assert!(matches!(
            parse_err(&format!("{COUCH}x")),
            ImportError::Json {
                truncated: false,
                ..
            }
        ));
        assert!(matches!(
            parse_err(&format!("{COUCH}{COUCH}")),
            ImportError::Json {
                truncated: false,
                ..
            }
        ));
        assert!(matches!(parse_err("nonsense"), ImportError::Json { .. }));
        assert!(matches!(
            parse_err("\u{feff}\u{feff}{}"),
            ImportError::Json { .. }
        ));
    }

    #[test]
    fn other_shapes_rejected() {
        let cases = [
            ("", "empty"),
            ("  \n", "empty"),
            (
                r#"{"error":"not_found","reason":"Database does not exist."}"#,
                "error response",
            ),
            (r#"{"total_rows":1,"offset":0}"#, "no `rows`"),
            (r#"{"total_rows":1,"rows":{}}"#, "invalid type"),
            (r#"{"total_rows":"many","rows":[]}"#, "invalid type"),
            (
                r#"{"rows":[{"id":"a","key":"a"},{"_id":"b","_rev":"1-b"}]}"#,
                "like a document",
            ),
            (r#"{"rows":[],"_id":"x"}"#, "neither clearly"),
            (
                r#"[{"id":"a","key":"a","doc":{"_id":"a","_rev":"1-a"}},{"_id":"b","_rev":"1-b"}]"#,
                "a `_id` member",
            ),
            (
                "{\"_id\":\"a\",\"_rev\":\"1-a\"}\n{\"id\":\"b\",\"key\":\"b\"}",
                "mix",
            ),
            (
                r#"[{"id":"a","key":"a","value":3,"doc":{"_id":"a","_rev":"1-a"}}]"#,
                "value",
            ),
            (r#"[{"id":"a","key":"a","doc":[1]}]"#, "not a JSON object"),
            (
                r#"[{"id":"a","key":"a","doc":{"_id":"a","_rev":"1-a","_attachments":[]}}]"#,
                "`_attachments` is not",
            ),
            (r#"[{"_id":"a","_id":"b","_rev":"1-a"}]"#, "two `_id`"),
            ("[1]", "expected a JSON object"),
            (r#"[{"foo":1}]"#, "neither"),
        ];
        for (input, expected) in cases {
            let e = parse_err(input);
            assert!(e.to_string().contains(expected), "{input}: {e}");
        }
    }

    #[test]
    fn read_errors_are_io_errors() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let data = COUCH.as_bytes().get(self.0..).unwrap_or_default();
                if self.0 >= 100 {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"));
                }
                let n = buf.len().min(data.len()).min(10);
                buf.get_mut(..n)
                    .unwrap_or_default()
                    .copy_from_slice(data.get(..n).unwrap_or_default());
                self.0 += n;
                Ok(n)
            }
        }
        let result = read_all_docs(Failing(0), |_| Ok(()));
        assert!(
            matches!(&result, Err(ImportError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset),
            "{result:?}"
        );
        let result = read_all_docs(Failing(100), |_| Ok(()));
        assert!(matches!(result, Err(ImportError::Io(_))), "{result:?}");
    }

    #[test]
    fn callback_error_stops_the_import() {
        let mut seen = 0;
        let result = read_all_docs(COUCH.as_bytes(), |_| {
            seen += 1;
            if seen == 2 {
                Err(ImportError::Callback("disk full".to_owned()))
            } else {
                Ok(())
            }
        });
        assert!(matches!(result, Err(ImportError::Callback(ref m)) if m == "disk full"));
        assert_eq!(seen, 2);
    }

    /// Generates a response of `rows` rows without holding it.
    struct Generated {
        rows: u64,
        next: u64,
        buf: Vec<u8>,
        at: usize,
    }

    impl Generated {
        fn refill(&mut self) {
            self.buf.clear();
            self.at = 0;
            let i = self.next;
            if i == 0 {
                self.buf.extend_from_slice(
                    format!("{{\"total_rows\":{},\"offset\":0,\"rows\":[\r\n", self.rows)
                        .as_bytes(),
                );
            }
            if i < self.rows {
                let id = if i.rem_euclid(10_000) == 0 {
                    format!("_design/d{i}")
                } else {
                    format!("doc{i:08}")
                };
                let attachments = if i.rem_euclid(1000) == 1 {
                    r#","_attachments":{"a.bin":{"stub":true,"length":3}}"#
                } else {
                    ""
                };
                let sep = if i + 1 < self.rows { ",\r\n" } else { "\r\n" };
                self.buf.extend_from_slice(
                    format!(
                        r#"{{"id":"{id}","key":"{id}","value":{{"rev":"1-{i:x}"}},"doc":{{"_id":"{id}","_rev":"1-{i:x}","n":{i},"s":"x\"y"{attachments}}}}}{sep}"#
                    )
                    .as_bytes(),
                );
            } else if i == self.rows {
                self.buf.extend_from_slice(b"]}\n");
            }
            self.next += 1;
        }
    }

    impl Read for Generated {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            while self.at >= self.buf.len() {
                if self.next > self.rows {
                    return Ok(0);
                }
                self.refill();
            }
            let rest = self.buf.get(self.at..).unwrap_or_default();
            let n = rest.len().min(out.len());
            out.get_mut(..n)
                .unwrap_or_default()
                .copy_from_slice(rest.get(..n).unwrap_or_default());
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn many_rows() {
        let rows = 200_000;
        let (mut count, mut bytes) = (0u64, 0usize);
        let stats = read_all_docs(
            Generated {
                rows,
                next: 0,
                buf: Vec::new(),
                at: 0,
            },
            |doc| {
                count += 1;
                bytes += doc.doc.get().len();
                Ok(())
            },
        );
        let stats = match stats {
            Ok(stats) => stats,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(count, rows);
        assert!(bytes > 0);
        assert_eq!(
            stats,
            DumpStats {
                rows,
                docs: rows,
                design_docs: 20,
                skipped_rows: 0,
                dropped_attachments: 200,
                total_rows: Some(rows)
            }
        );
    }

    #[test]
    fn db_names() {
        assert_eq!(
            db_name_from_file(Path::new("/backups/lms_notes.json")),
            Some("lms_notes".to_owned())
        );
        assert_eq!(
            db_name_from_file(Path::new("a.b.JSON")),
            Some("a.b".to_owned())
        );
        assert_eq!(db_name_from_file(Path::new("lms_notes.json.gz")), None);
        assert_eq!(db_name_from_file(Path::new("lms_notes.zst")), None);
        assert_eq!(db_name_from_file(Path::new("lms_notes")), None);
        assert_eq!(db_name_from_file(Path::new(".json")), None);
    }

    #[test]
    fn manifests() {
        let pairs = |v: &[(&str, &str)]| {
            Some(
                v.iter()
                    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                    .collect::<Vec<_>>(),
            )
        };
        let m = br#"{"created":"2024-05-01","host":"couch1","databases":[
            {"name":"lms_notes","file":"lms_notes.json","docs":12},
            {"database":"users","path":"./users.json"},
            {"db":"lms_notes","filename":"lms_notes.json"}]}"#;
        assert_eq!(
            read_manifest(m),
            pairs(&[("lms_notes", "lms_notes.json"), ("users", "./users.json")])
        );
        let m =
            br#"{"backup":{"items":{"x":{"db_name":"x","file_name":"x.json"}}}, "name":"nightly"}"#;
        assert_eq!(read_manifest(m), pairs(&[("x", "x.json")]));
        assert_eq!(
            read_manifest(br#"[{"db":"a","file":"a.json"},{"db":"b","file":7}]"#),
            pairs(&[("a", "a.json")])
        );
        assert_eq!(
            read_manifest(br#"{"name":"nightly","files":["a.json"]}"#),
            None
        );
        assert_eq!(read_manifest(b"db=a file=a.json"), None);
        assert_eq!(read_manifest(b""), None);
    }

    #[test]
    fn scanner() {
        let text = r#" { "a" : "x\"}" , "b\u0041":[1,{"c":"]"}], "d":-1.5e3 ,"e":null } "#;
        let members = object_members(text).unwrap_or_default();
        let keys: Vec<_> = members.iter().map(|m| m.key.as_ref()).collect();
        assert_eq!(keys, ["a", "bA", "d", "e"]);
        let values: Vec<_> = members.iter().map(|m| m.value).collect();
        assert_eq!(values, [r#""x\"}""#, r#"[1,{"c":"]"}]"#, "-1.5e3", "null"]);
        assert_eq!(members.first().map(|m| m.entry), Some(r#""a" : "x\"}""#));
        assert!(object_members("[]").is_none());
        assert_eq!(object_members("{}").map(|m| m.len()), Some(0));
    }
}

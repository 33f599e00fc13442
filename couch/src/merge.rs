//! Reading a database's documents as one sorted sequence of groups (all
//! leaves of one id), merged from the base (`docs.ndjson`) and its overlays
//! (`docs.0001.ndjson`, …): an id in an overlay replaces the lines of the
//! base and of earlier overlays, or removes them with `{"id":…,"gone":true}`.

use std::io::{self, BufRead};

use serde::Deserialize;

use crate::format;
use crate::pipe::Lines;

/// All lines of one document id.
#[derive(Debug, Default)]
pub(crate) struct Group {
    pub id: String,
    /// Leaf revisions, in line order.
    pub revs: Vec<String>,
    /// The lines, each with its `\n`.
    pub lines: Vec<u8>,
    /// An overlay removes this id.
    pub gone: bool,
    /// The base has this id.
    pub in_base: bool,
    /// The lines come from an overlay.
    pub from_delta: bool,
    /// Some leaf is not a deletion (CouchDB counts the document in
    /// `doc_count`, else in `doc_del_count`).
    pub live: bool,
}

#[derive(Deserialize)]
struct Gone {
    id: String,
    gone: bool,
}

/// One line: its id, its revision (`None` for a removal), whether that is
/// a deletion, its bytes.
type Line = (String, Option<String>, bool, Vec<u8>);

/// Groups of one sorted stream of lines.
pub(crate) struct GroupReader<R> {
    lines: Lines<R>,
    pending: Option<Line>,
    buf: Vec<u8>,
    what: String,
}

fn invalid(what: &str, line: u64, detail: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} line {line}: {detail}"),
    )
}

impl<R: BufRead> GroupReader<R> {
    /// Reads `lines`; `what` names the stream in errors.
    pub fn new(lines: Lines<R>, what: String) -> Self {
        GroupReader {
            lines,
            pending: None,
            buf: Vec::new(),
            what,
        }
    }

    fn next_line(&mut self) -> io::Result<Option<Line>> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        if !self.lines.next_into(&mut self.buf)? {
            return Ok(None);
        }
        let n = self.lines.number;
        let (id, rev, del) = match format::parse_doc_line(&self.buf) {
            Ok(line) => (line.id.into_owned(), Some(line.rev.into_owned()), line.del),
            Err(e) => match serde_json::from_slice::<Gone>(&self.buf) {
                Ok(g) if g.gone => (g.id, None, false),
                _ => return Err(invalid(&self.what, n, e)),
            },
        };
        let mut line = self.buf.clone();
        line.push(b'\n');
        Ok(Some((id, rev, del, line)))
    }

    /// The next group; ids must ascend.
    pub fn next_group(&mut self) -> io::Result<Option<Group>> {
        let Some((id, rev, del, line)) = self.next_line()? else {
            return Ok(None);
        };
        let mut group = Group {
            id,
            live: rev.is_some() && !del,
            gone: rev.is_none(),
            revs: rev.into_iter().collect(),
            lines: line,
            ..Group::default()
        };
        while let Some((id, rev, del, line)) = self.next_line()? {
            if id != group.id {
                if id.as_bytes() < group.id.as_bytes() {
                    return Err(invalid(
                        &self.what,
                        self.lines.number,
                        format!("id {id:?} comes after {:?}: not sorted", group.id),
                    ));
                }
                self.pending = Some((id, rev, del, line));
                break;
            }
            match rev {
                Some(rev) if !group.gone => {
                    group.live |= !del;
                    group.revs.push(rev);
                }
                _ => {
                    return Err(invalid(
                        &self.what,
                        self.lines.number,
                        format!("id {id:?} is both removed and present"),
                    ));
                }
            }
            group.lines.extend_from_slice(&line);
        }
        Ok(Some(group))
    }
}

/// The base and its overlays as one sequence of groups.
pub(crate) struct Merged<R> {
    /// The base, then the overlays, oldest first.
    readers: Vec<GroupReader<R>>,
    heads: Vec<Option<Group>>,
    started: bool,
    /// Bytes of base groups read so far, when asked to keep them.
    pub base_bytes: Option<Vec<u8>>,
}

impl<R: BufRead> Merged<R> {
    /// Merges `base` with `overlays` (oldest first).
    pub fn new(base: GroupReader<R>, overlays: Vec<GroupReader<R>>) -> Self {
        let mut readers = vec![base];
        readers.extend(overlays);
        Merged {
            heads: readers.iter().map(|_| None).collect(),
            readers,
            started: false,
            base_bytes: None,
        }
    }

    /// Merges a dump's base item with its overlay items, each opened with
    /// `open` and named in errors by `name` of its file name
    /// (`docs.ndjson`, `docs.0001.ndjson`, …).
    pub fn open<I>(
        base: &I,
        overlays: &[I],
        open: impl Fn(&I) -> Lines<R>,
        name: impl Fn(&str) -> String,
    ) -> Self {
        let base = GroupReader::new(open(base), name(format::DOCS_FILE));
        let overlays = overlays
            .iter()
            .enumerate()
            .map(|(i, o)| GroupReader::new(open(o), name(&format::overlay_file(i + 1))))
            .collect();
        Merged::new(base, overlays)
    }

    fn pull(&mut self, i: usize) -> io::Result<()> {
        self.heads[i] = self.readers[i].next_group()?;
        Ok(())
    }

    /// The next group, removals included (`gone`).
    pub fn next_group(&mut self) -> io::Result<Option<Group>> {
        if !self.started {
            self.started = true;
            for i in 0..self.readers.len() {
                self.pull(i)?;
            }
        }
        let Some(min) = self
            .heads
            .iter()
            .flatten()
            .map(|g| g.id.clone())
            .min_by(|a, b| a.as_bytes().cmp(b.as_bytes()))
        else {
            return Ok(None);
        };
        // The newest file holding the id wins; the others' groups are consumed.
        let mut winner: Option<(usize, Group)> = None;
        let mut in_base = false;
        for i in 0..self.readers.len() {
            if self.heads[i].as_ref().is_some_and(|g| g.id == min) {
                let g = self.heads[i].take().unwrap_or_default();
                if i == 0 {
                    in_base = true;
                    if let Some(keep) = &mut self.base_bytes {
                        keep.extend_from_slice(&g.lines);
                    }
                }
                self.pull(i)?;
                winner = Some((i, g));
            }
        }
        Ok(winner.map(|(i, mut g)| {
            g.in_base = in_base;
            g.from_delta = i > 0;
            g
        }))
    }
}

pub(crate) use format::encode_gone;

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, rev: &str) -> String {
        format!(
            "{{\"id\":\"{id}\",\"rev\":\"{rev}\",\"doc\":{{\"_id\":\"{id}\",\"_rev\":\"{rev}\"}}}}\n"
        )
    }

    fn reader(text: &str) -> GroupReader<&[u8]> {
        GroupReader::new(Lines::new(text.as_bytes()), "test".into())
    }

    #[test]
    fn the_overlay_replaces_and_removes() {
        let base = [
            line("a", "1-a"),
            line("b", "1-b"),
            line("b", "1-c"),
            line("c", "1-c"),
        ]
        .concat();
        let mut gone = Vec::new();
        encode_gone("c", &mut gone);
        let delta = [
            line("b", "2-b"),
            line("bb", "1-x"),
            String::from_utf8(gone).unwrap(),
        ]
        .concat();
        let second = [line("a", "2-a"), line("b", "3-b")].concat();
        let mut merged = Merged::new(reader(&base), vec![reader(&delta), reader(&second)]);
        merged.base_bytes = Some(Vec::new());
        let mut seen = Vec::new();
        while let Some(g) = merged.next_group().unwrap() {
            seen.push((g.id, g.revs, g.gone, g.in_base, g.from_delta));
        }
        assert_eq!(
            seen,
            [
                ("a".into(), vec!["2-a".to_string()], false, true, true),
                ("b".into(), vec!["3-b".into()], false, true, true),
                ("bb".into(), vec!["1-x".into()], false, false, true),
                ("c".into(), vec![], true, true, true),
            ]
        );
        assert_eq!(merged.base_bytes.unwrap(), base.as_bytes());
    }

    #[test]
    fn unsorted_or_bad_lines_are_errors() {
        let text = [line("b", "1-b"), line("a", "1-a")].concat();
        assert!(reader(&text).next_group().is_err());
        assert!(reader("not json\n").next_group().is_err());
    }
}

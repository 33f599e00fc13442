//! Confirming restored documents from the target's own listing.
//!
//! After a restore, every leaf of the snapshot must be on the target. Most
//! documents have one leaf, live: `_all_docs` lists it as the document's
//! winning revision, a page of thousands at a time in one sequential scan
//! of the server's id index. Only what the listing does not show as
//! expected (tombstones, conflicts, a winner that differs, an id not
//! listed) is asked for leaf by leaf with `_revs_diff`. On pouchdb-server
//! the listing costs about two thirds of asking for every leaf; on CouchDB
//! it is a B-tree scan on each shard instead of a lookup per document.
//!
//! Nothing here is trusted beyond what it can only confirm: a page that is
//! not the continuation asked for, out of byte order, or more than the
//! database can hold ends the listing, and everything after it is asked.

use std::collections::VecDeque;

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use cairn_store::error::Result;

use crate::client::{CouchClient, db_path, query_value};

/// Rows asked for per `_all_docs` page.
pub(crate) const PAGE_ROWS: usize = 10_000;

/// The target's documents and their winning revisions, in id order, read a
/// page at a time as the ids to confirm advance.
#[derive(Debug)]
pub(crate) struct Listing {
    rows: VecDeque<(String, String)>,
    /// The last id listed (the next page starts there).
    last: Option<String>,
    /// No further page will be asked for.
    ended: bool,
    /// Rows listed so far, and the most that may be.
    listed: u64,
    cap: u64,
}

impl Listing {
    /// A listing of a database that should hold about `expected` live
    /// documents; more than twice that (and a page) ends it.
    pub(crate) fn new(expected: u64) -> Listing {
        Listing {
            rows: VecDeque::new(),
            last: None,
            ended: false,
            listed: 0,
            cap: expected.saturating_mul(2).saturating_add(PAGE_ROWS as u64),
        }
    }

    /// Where the next page starts (inclusive), if not at the beginning.
    pub(crate) fn last(&self) -> Option<&str> {
        self.last.as_deref()
    }

    /// Whether a page must be read before `id` can be judged.
    pub(crate) fn needs_page(&mut self, id: &[u8]) -> bool {
        self.skip_before(id);
        self.rows.is_empty() && !self.ended
    }

    /// Takes the next page, `None` when the server would not list: rows as
    /// the server sent them, `limit` asked for.
    pub(crate) fn add_page(&mut self, page: Option<Vec<(String, String)>>, limit: usize) {
        let Some(mut page) = page else {
            self.ended = true;
            return;
        };
        let full = page.len() >= limit;
        let ordered = page
            .windows(2)
            .all(|w| w[0].0.as_bytes() < w[1].0.as_bytes());
        // `start_key` is inclusive: a continuation repeats the last row.
        if let Some(last) = &self.last {
            if page.first().map(|(id, _)| id) != Some(last) {
                self.end();
                return;
            }
            page.remove(0);
        }
        self.listed = self.listed.saturating_add(page.len() as u64);
        if !ordered || self.listed > self.cap {
            self.end();
            return;
        }
        if let Some((id, _)) = page.last() {
            self.last = Some(id.clone());
        }
        self.ended = !full || page.is_empty();
        self.rows.extend(page);
    }

    /// Whether the listing shows `id` with `leaves` as the snapshot has it:
    /// one leaf, the listed winner.
    pub(crate) fn confirms(&mut self, id: &[u8], leaves: &[String]) -> bool {
        self.skip_before(id);
        match self.rows.front() {
            Some((listed, rev)) if listed.as_bytes() == id => {
                let confirmed = matches!(leaves, [only] if only == rev);
                self.rows.pop_front();
                confirmed
            }
            _ => false,
        }
    }

    fn skip_before(&mut self, id: &[u8]) {
        while self.rows.front().is_some_and(|(l, _)| l.as_bytes() < id) {
            self.rows.pop_front();
        }
    }

    fn end(&mut self) {
        self.rows.clear();
        self.ended = true;
    }
}

#[derive(Deserialize)]
struct AllDocs {
    rows: Vec<AllDocsRow>,
}

#[derive(Deserialize)]
struct AllDocsRow {
    id: String,
    value: RowValue,
}

#[derive(Deserialize)]
struct RowValue {
    rev: String,
}

impl CouchClient {
    /// One page of `db`'s `_all_docs` from `start` (inclusive): ids and
    /// winning revisions; `None` when the server refuses to list.
    pub(crate) async fn all_docs_page(
        &self,
        db: &str,
        start: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<(String, String)>>> {
        let mut path = format!("{}/_all_docs?limit={limit}", db_path(db));
        if let Some(start) = start {
            let key = serde_json::Value::from(start).to_string();
            path.push_str(&format!("&start_key={}", query_value(&key)));
        }
        let response = self.request(Method::GET, &path, None).await?;
        if response.status != StatusCode::OK {
            tracing::debug!("{}: {}; asking _revs_diff", path, response.reason());
            return Ok(None);
        }
        let page: AllDocs = match response.json(&self.url_of(&path), "_all_docs") {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!("{e}; asking _revs_diff");
                return Ok(None);
            }
        };
        Ok(Some(
            page.rows.into_iter().map(|r| (r.id, r.value.rev)).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(ids: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            ids.iter()
                .map(|(i, r)| (i.to_string(), r.to_string()))
                .collect(),
        )
    }

    fn leaves(revs: &[&str]) -> Vec<String> {
        revs.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn one_live_leaf_listed_as_the_winner_is_confirmed_anything_else_is_not() {
        let mut l = Listing::new(10);
        assert!(l.needs_page(b"a"));
        l.add_page(rows(&[("a", "1-a"), ("b", "2-b"), ("d", "1-d")]), 3);
        assert!(!l.needs_page(b"a"));
        assert!(l.confirms(b"a", &leaves(&["1-a"])));
        // Another winner, more leaves, an id not listed (a tombstone).
        assert!(!l.confirms(b"b", &leaves(&["1-b"])));
        assert!(!l.confirms(b"c", &leaves(&["3-c"])));
        assert!(!l.confirms(b"d", &leaves(&["1-d", "1-e"])));
        // A full page: the next one starts at "d".
        assert!(l.needs_page(b"e"));
        assert_eq!(l.last(), Some("d"));
        l.add_page(rows(&[("d", "1-d"), ("e", "1-e")]), 3);
        assert!(l.confirms(b"e", &leaves(&["1-e"])));
        // A short page was the last.
        assert!(!l.needs_page(b"z"));
        assert!(!l.confirms(b"z", &leaves(&["1-z"])));
    }

    #[test]
    fn a_page_that_does_not_continue_or_is_out_of_order_ends_the_listing() {
        for bad in [
            rows(&[("x", "1-x"), ("y", "1-y")]),               // not from "b"
            rows(&[("b", "1-b"), ("d", "1-d"), ("c", "1-c")]), // out of order
            rows(&[("b", "1-b"), ("b", "1-b")]),               // repeated
            None,                                              // refused
        ] {
            let mut l = Listing::new(10);
            l.add_page(rows(&[("a", "1-a"), ("b", "1-b")]), 2);
            assert!(l.confirms(b"a", &leaves(&["1-a"])));
            assert!(l.confirms(b"b", &leaves(&["1-b"])));
            assert!(l.needs_page(b"c"));
            l.add_page(bad, 3);
            assert!(!l.needs_page(b"c"), "ended");
            assert!(!l.confirms(b"c", &leaves(&["1-c"])));
            assert!(!l.confirms(b"d", &leaves(&["1-d"])));
        }
    }

    #[test]
    fn a_listing_longer_than_the_database_can_be_ends() {
        // Expecting one document: at most 2 + PAGE_ROWS rows are read.
        let mut l = Listing::new(1);
        let ids: Vec<String> = (0..PAGE_ROWS + 3).map(|i| format!("{i:08}")).collect();
        let page: Vec<(&str, &str)> = ids.iter().map(|i| (i.as_str(), "1-x")).collect();
        l.add_page(rows(&page), page.len());
        assert!(!l.needs_page(b"99999999"));
        assert!(!l.confirms(b"00000000", &leaves(&["1-x"])));
    }
}

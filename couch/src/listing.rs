//! Confirming restored documents from the target's own listing.
//!
//! After a restore, every leaf of the snapshot must be on the target. Most
//! documents have one leaf, live: `_all_docs` lists it as the document's
//! winning revision, thousands a page in one ordered read of the server's
//! id index. Only what the listing does not show as expected (tombstones,
//! conflicts, a winner that differs, an id not listed) is asked for leaf
//! by leaf with `_revs_diff`. On pouchdb-server the listing and the few
//! questions left cost 1.0 s where asking for every leaf cost 1.7 s
//! (100,916 documents); on CouchDB it reads each shard's id B-tree in
//! order where `_revs_diff` looks up every document (not measured here).
//!
//! The listing is asked for with POST (its parameters in the body), so no
//! cache in front of the server answers with an older listing. Its pages
//! are not otherwise trusted more than `_revs_diff`'s answers: a page that
//! is not the continuation asked for, out of byte order, longer than asked
//! or than the database can be, too large, refused or unreadable ends the
//! listing, and every document after it is asked for.

use std::collections::VecDeque;

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use cairn_store::error::{Error, Result};

use crate::client::{Body, CouchClient, db_path};

/// Rows asked for per `_all_docs` page.
pub(crate) const PAGE_ROWS: usize = 10_000;
/// The longest page read (10,000 rows of ids up to about 3 KiB).
const MAX_PAGE_LEN: u64 = 32 << 20;

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
    /// Why the listing ended before the database's end, if it did.
    cut_short: Option<&'static str>,
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
            cut_short: None,
        }
    }

    /// Why the listing ended early (the documents after it were asked).
    pub(crate) fn cut_short(&self) -> Option<&'static str> {
        self.cut_short
    }

    /// Where the next page starts (inclusive), if not at the beginning.
    pub(crate) fn last(&self) -> Option<&str> {
        self.last.as_deref()
    }

    /// Moves on to `id` (rows before it are no longer needed); whether a
    /// page must be read before `id` can be judged.
    pub(crate) fn advance_to(&mut self, id: &[u8]) -> bool {
        self.skip_before(id);
        self.rows.is_empty() && !self.ended
    }

    /// Takes the next page (`limit` rows asked for), or why there is none.
    pub(crate) fn add_page(
        &mut self,
        page: std::result::Result<Vec<(String, String)>, &'static str>,
        limit: usize,
    ) {
        let mut page = match page {
            Ok(page) => page,
            Err(why) => return self.end(why),
        };
        if page.len() > limit {
            return self.end("a page longer than asked for");
        }
        let full = page.len() == limit;
        if !page
            .windows(2)
            .all(|w| w[0].0.as_bytes() < w[1].0.as_bytes())
        {
            return self.end("a page out of byte order");
        }
        // `start_key` is inclusive: a continuation repeats the last row.
        if let Some(last) = &self.last {
            if page.first().map(|(id, _)| id) != Some(last) {
                return self.end("a page that does not continue the one before");
            }
            page.remove(0);
        }
        self.listed = self.listed.saturating_add(page.len() as u64);
        if self.listed > self.cap {
            return self.end("more rows than the database can hold");
        }
        if let Some((id, _)) = page.last() {
            self.last = Some(id.clone());
        }
        self.ended = !full || page.is_empty();
        self.rows.extend(page);
    }

    /// Whether the listing shows `id` with `leaves` as the snapshot has it:
    /// one leaf, the listed winner. Moves on past `id`.
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

    fn end(&mut self, why: &'static str) {
        self.rows.clear();
        self.ended = true;
        self.cut_short = Some(why);
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
    /// winning revisions. Asked for with POST, the parameters in the body
    /// (CouchDB 2.2 and later, pouchdb-server), so that no cache answers.
    /// Any failure but the login's is why there is no page: the documents
    /// are then asked for with `_revs_diff`, which reports a real outage.
    pub(crate) async fn all_docs_page(
        &self,
        db: &str,
        start: Option<&str>,
        limit: usize,
    ) -> Result<std::result::Result<Vec<(String, String)>, &'static str>> {
        let path = format!("{}/_all_docs", db_path(db));
        let mut query = serde_json::json!({ "limit": limit });
        if let Some(start) = start {
            query["start_key"] = start.into();
        }
        let body = Body::json(query.to_string());
        let response = match self
            .request_bounded(Method::POST, &path, Some(body), MAX_PAGE_LEN)
            .await
        {
            Ok(response) => response,
            Err(e @ Error::CouchAuth { .. }) => return Err(e),
            Err(e) => {
                tracing::debug!("{e}; asking _revs_diff instead");
                return Ok(Err("no answer to _all_docs"));
            }
        };
        if response.status != StatusCode::OK {
            tracing::debug!("{path}: {}; asking _revs_diff instead", response.reason());
            return Ok(Err("_all_docs refused"));
        }
        match response.json::<AllDocs>(&self.url_of(&path), "_all_docs") {
            Ok(page) => Ok(Ok(page
                .rows
                .into_iter()
                .map(|r| (r.id, r.value.rev))
                .collect())),
            Err(e) => {
                tracing::debug!("{e}; asking _revs_diff instead");
                Ok(Err("an _all_docs answer that does not parse"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(ids: &[(&str, &str)]) -> std::result::Result<Vec<(String, String)>, &'static str> {
        Ok(ids
            .iter()
            .map(|(i, r)| (i.to_string(), r.to_string()))
            .collect())
    }

    fn leaves(revs: &[&str]) -> Vec<String> {
        revs.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn one_live_leaf_listed_as_the_winner_is_confirmed_anything_else_is_not() {
        let mut l = Listing::new(10);
        assert!(l.advance_to(b"a"));
        l.add_page(rows(&[("a", "1-a"), ("b", "2-b"), ("d", "1-d")]), 3);
        assert!(!l.advance_to(b"a"));
        assert!(l.confirms(b"a", &leaves(&["1-a"])));
        // Another winner, more leaves, an id not listed (a tombstone).
        assert!(!l.confirms(b"b", &leaves(&["1-b"])));
        assert!(!l.confirms(b"c", &leaves(&["3-c"])));
        assert!(!l.confirms(b"d", &leaves(&["1-d", "1-e"])));
        // A full page: the next one starts at "d".
        assert!(l.advance_to(b"e"));
        assert_eq!(l.last(), Some("d"));
        l.add_page(rows(&[("d", "1-d"), ("e", "1-e")]), 3);
        assert!(l.confirms(b"e", &leaves(&["1-e"])));
        // A short page was the last.
        assert!(!l.advance_to(b"z"));
        assert_eq!(l.cut_short(), None);
        assert!(!l.confirms(b"z", &leaves(&["1-z"])));
    }

    #[test]
    fn a_page_that_does_not_continue_is_out_of_order_too_long_or_refused_ends_the_listing() {
        for bad in [
            rows(&[("x", "1-x"), ("y", "1-y")]),               // not from "b"
            rows(&[("b", "1-b"), ("d", "1-d"), ("c", "1-c")]), // out of order
            rows(&[("b", "1-b"), ("b", "1-b")]),               // repeated
            rows(&[("b", "1-b"), ("c", "1-c"), ("d", "1-d"), ("e", "1-e")]), // longer than asked
            Err("refused"),
        ] {
            let mut l = Listing::new(10);
            l.add_page(rows(&[("a", "1-a"), ("b", "1-b")]), 2);
            assert!(l.confirms(b"a", &leaves(&["1-a"])));
            assert!(l.confirms(b"b", &leaves(&["1-b"])));
            assert!(l.advance_to(b"c"));
            l.add_page(bad, 3);
            assert!(!l.advance_to(b"c"), "ended");
            assert!(l.cut_short().is_some());
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
        assert_eq!(l.cut_short(), Some("more rows than the database can hold"));
        assert!(!l.advance_to(b"99999999"));
        assert!(!l.confirms(b"00000000", &leaves(&["1-x"])));
    }
}

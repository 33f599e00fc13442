//! What the two stores Cairn implements itself (`http.rs`, the client of
//! `cairn serve`, and `ssh.rs`, SFTP) share: GET answers and listings as
//! streams, and only create-only and overwriting PUTs.

use std::future::Future;
use std::ops::Range;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetResult, GetResultPayload, ListResult, ObjectMeta, PutMode, PutResult, Result,
};

/// Whether a PUT is create-only (`true`) or an overwrite (`false`);
/// conditional updates are not offered.
pub fn is_create(mode: &PutMode, implementer: &str) -> Result<bool> {
    match mode {
        PutMode::Create => Ok(true),
        PutMode::Overwrite => Ok(false),
        PutMode::Update(_) => Err(not_implemented("conditional update", implementer)),
    }
}

/// The error for an operation Cairn never asks of these stores.
pub fn not_implemented(operation: &str, implementer: &str) -> object_store::Error {
    object_store::Error::NotImplemented {
        operation: operation.into(),
        implementer: implementer.into(),
    }
}

/// A successful PUT (these stores have no ETags or versions).
pub fn put_result() -> PutResult {
    PutResult {
        e_tag: None,
        version: None,
        extensions: Default::default(),
    }
}

/// A GET's answer: `bytes`, which are `range` of the object `meta`.
pub fn get_result(meta: ObjectMeta, bytes: Bytes, range: Range<u64>) -> GetResult {
    GetResult {
        payload: GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed()),
        meta,
        range,
        attributes: Default::default(),
        extensions: Default::default(),
    }
}

/// A GET's answer whose body arrives as `stream`, `range` of the object `meta`.
pub fn get_result_stream(
    meta: ObjectMeta,
    stream: BoxStream<'static, Result<Bytes>>,
    range: Range<u64>,
) -> GetResult {
    GetResult {
        payload: GetResultPayload::Stream(stream),
        meta,
        range,
        attributes: Default::default(),
        extensions: Default::default(),
    }
}

/// A listing fetched in one piece by `fetch`, as the stream `list` returns.
pub fn list_stream(
    fetch: impl Future<Output = Result<Vec<ObjectMeta>>> + Send + 'static,
) -> BoxStream<'static, Result<ObjectMeta>> {
    futures::stream::once(fetch)
        .map(|r| match r {
            Ok(v) => futures::stream::iter(v.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
}

/// `list_with_delimiter` for stores without directories: every object
/// under the prefix, no common prefixes.
pub async fn list_flat(listing: BoxStream<'static, Result<ObjectMeta>>) -> Result<ListResult> {
    Ok(ListResult {
        common_prefixes: Vec::new(),
        objects: listing.try_collect().await?,
        extensions: Default::default(),
    })
}

/// `delete_stream` one object at a time: `delete(store, location)` for each,
/// answering each location deleted.
pub fn delete_each<S, F, Fut>(
    store: S,
    locations: BoxStream<'static, Result<Path>>,
    delete: F,
) -> BoxStream<'static, Result<Path>>
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, Path) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    locations
        .then(move |location| {
            let pending = location.map(|l| (delete(store.clone(), l.clone()), l));
            async move {
                let (deleting, location) = pending?;
                deleting.await?;
                Ok(location)
            }
        })
        .boxed()
}

//! Values larger than a backend's item limit (Memcached's `-I`, DynamoDB's 400 KB), split
//! into chunks and reassembled transparently, so every model fits every channel.
//!
//! Every item starts with a tag byte. `0`: the value follows inline. `1`: a manifest
//! (`u32` chunk count, `u64` total length, `u64` nonce); the chunks are the items
//! `{key}#{nonce:x}#{i}`. Chunks are written first and the manifest last, and a rewrite uses
//! a fresh nonce, so a reader sees the old value or the new one, never a mix; the chunks of a
//! replaced large value are deleted after the new manifest is in place.
//!
//! Only a large put looks at the previous item (one extra read, negligible next to moving
//! the chunks): a small put is a single request, because small puts are on every
//! collective's critical path. So a key that goes from a chunked value to an inline one
//! leaves the old chunks behind; lambdaml never does this (a key's values keep their size
//! within a job), and a user overwriting keys by hand should delete first.
//!
//! A delete must find a large value's chunks, so it reads the items first, except those
//! this channel saw inline itself (written or read; `KnownInline`): their read would move
//! the whole value only to learn that it has no chunks, which was a third of the bytes of
//! a Memcached reduce_scatter round. By the same rule as above, a key that another process
//! turned from inline to chunked after this one saw it would leave its chunks behind.

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};

use super::{Channel, ChannelError, PollPolicy};

const INLINE: u8 = 0;
const MANIFEST: u8 = 1;
const MANIFEST_LEN: usize = 1 + 4 + 8 + 8;

/// What one item holds: an optional tag byte, then the body. The two stay apart so that a
/// store which streams its requests (Memcached) sends a large inline value without first
/// copying it behind its tag.
#[derive(Debug, Clone)]
pub struct Item {
    /// The tag byte in front of the body, if the item has one (inline values).
    pub tag: Option<u8>,
    /// The rest of the item.
    pub body: Bytes,
}

impl Item {
    /// Size of the item in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.tag.is_some()) + self.body.len()
    }

    /// True for an item of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The item as one buffer, for a store that needs one (a copy only when tagged).
    pub fn to_bytes(&self) -> Bytes {
        match self.tag {
            None => self.body.clone(),
            Some(tag) => {
                let mut item = BytesMut::with_capacity(self.len());
                item.put_u8(tag);
                item.put_slice(&self.body);
                item.freeze()
            }
        }
    }
}

impl From<Bytes> for Item {
    fn from(body: Bytes) -> Self {
        Item { tag: None, body }
    }
}

/// The raw operations of a backend that stores whole items of limited size.
#[async_trait]
pub trait ItemStore: Send + Sync + std::fmt::Debug {
    /// The channel URL, for messages.
    fn url(&self) -> &str;
    /// How waiters should poll.
    fn poll_policy(&self) -> PollPolicy;
    /// See [`Channel::reads_are_cheap`].
    fn reads_are_cheap(&self) -> bool {
        false
    }
    /// Largest value one item may hold, in bytes.
    fn item_limit(&self) -> usize;
    /// Stores one item.
    async fn put_item(&self, key: &str, item: Item) -> Result<(), ChannelError>;
    /// Stores several items, in one round trip where the backend allows; by default as
    /// concurrent [`Self::put_item`]s (DynamoDB answers them together).
    async fn put_items(&self, items: Vec<(String, Item)>) -> Result<(), ChannelError> {
        futures_util::future::try_join_all(
            items
                .into_iter()
                .map(|(key, item)| async move { self.put_item(&key, item).await }),
        )
        .await
        .map(drop)
    }
    /// Reads several items at once (one round trip where the backend allows).
    async fn get_items(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ChannelError>;
    /// Reads groups of items in one round trip where the backend allows, and joins each
    /// group into one value in the order of its keys: `None` for a group with a missing
    /// item. `len` is the length a group is expected to add up to (from its manifest),
    /// room to reserve; the caller checks it. By default [`Self::get_items`] and a copy;
    /// Memcached reads a group's items into one buffer instead.
    async fn get_joined(
        &self,
        groups: &[(Vec<String>, usize)],
    ) -> Result<Vec<Option<Bytes>>, ChannelError> {
        let keys: Vec<String> = groups.iter().flat_map(|(keys, _)| keys.clone()).collect();
        let mut items = self.get_items(&keys).await?.into_iter();
        Ok(groups
            .iter()
            .map(|(keys, len)| join(next_group(&mut items, keys.len())?, *len))
            .collect())
    }
    /// Deletes items; absent ones are not an error.
    async fn delete_items(&self, keys: &[String]) -> Result<(), ChannelError>;
    /// Lists item keys with a prefix, `None` when the backend cannot list.
    async fn list_items(&self, prefix: &str) -> Result<Option<Vec<String>>, ChannelError>;
}

/// The next `n` of `items`, `None` if any is missing. All `n` are taken before a miss is
/// looked for, so that the group after this one starts at its own first item.
pub(crate) fn next_group<T>(
    items: &mut impl Iterator<Item = Option<T>>,
    n: usize,
) -> Option<Vec<T>> {
    let group: Vec<Option<T>> = items.by_ref().take(n).collect();
    group.into_iter().collect()
}

/// `parts` as one value: itself when there is one, else a copy into a buffer of `len`
/// (capped: it comes from a manifest) that grows if they add up to more.
pub(crate) fn join(mut parts: Vec<Bytes>, len: usize) -> Option<Bytes> {
    if parts.len() == 1 {
        return parts.pop();
    }
    let mut value = BytesMut::with_capacity(len.min(MAX_RESERVE));
    for p in parts {
        value.put_slice(&p);
    }
    Some(value.freeze())
}

/// Most bytes reserved ahead of a value whose length a manifest announced.
pub(crate) const MAX_RESERVE: usize = 1 << 30;

/// A [`Channel`] over an [`ItemStore`], chunking values above the item limit.
#[derive(Debug)]
pub struct Chunked<S> {
    store: S,
    inline: KnownInline,
}

/// Keys this channel last wrote or read as inline items, so that deleting them needs no
/// read (see the module's documentation). Bounded: when full it starts over, and a key it
/// forgot is read before its delete, as any key it never saw.
#[derive(Debug, Default)]
struct KnownInline(std::sync::Mutex<std::collections::HashSet<String>>);

impl KnownInline {
    /// Keys remembered at most: a worker's keys of a few rounds, a few hundred kB.
    const CAPACITY: usize = 4096;

    fn set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        // The set is a cache: one left by a panicking thread is still a valid set.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut set = self.set();
        for key in keys {
            if set.len() >= Self::CAPACITY && !set.contains(key) {
                set.clear();
            }
            set.insert(key.to_string());
        }
    }

    fn remove<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut set = self.set();
        for key in keys {
            set.remove(key);
        }
    }

    /// Splits `keys` into those known inline (forgotten here, as they are being deleted)
    /// and the others.
    fn take(&self, keys: &[String]) -> (Vec<String>, Vec<String>) {
        let mut set = self.set();
        keys.iter().cloned().partition(|k| set.remove(k))
    }
}

impl<S: ItemStore> Chunked<S> {
    /// Wraps `store`.
    pub fn new(store: S) -> Self {
        Chunked {
            store,
            inline: KnownInline::default(),
        }
    }

    /// The wrapped store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn corrupt(&self, key: &str, message: &str) -> ChannelError {
        ChannelError::Backend {
            channel: self.store.url().to_string(),
            op: "get",
            key: key.to_string(),
            source: message.to_string().into(),
        }
    }

    /// Checks a large value read from its chunks against its manifest `m`: `None` when a
    /// chunk was missing (the value was rewritten meanwhile: read the manifest again), an
    /// error when they do not add up to its length.
    fn check_joined(
        &self,
        key: &str,
        m: &Manifest,
        value: Option<Bytes>,
    ) -> Result<Option<Bytes>, ChannelError> {
        match value {
            Some(value) if value.len() as u64 != m.len => {
                Err(self.corrupt(key, "chunks do not add up to the manifest length"))
            }
            value => Ok(value),
        }
    }

    /// Writes values over the item limit: the previous items of their keys read in one
    /// request, every chunk of every value in one [`ItemStore::put_items`], then the
    /// manifests in another, then the chunks the manifests replaced deleted.
    async fn put_large(&self, values: Vec<(String, Bytes)>) -> Result<(), ChannelError> {
        let limit = self.store.item_limit();
        let keys: Vec<String> = values.iter().map(|(key, _)| key.clone()).collect();
        self.inline.remove(keys.iter().map(String::as_str));
        let old = self.store.get_items(&keys).await?;
        let mut chunks = Vec::new();
        let mut manifests = Vec::with_capacity(values.len());
        for (key, value) in values {
            let nonce: u64 = rand::random();
            let n = value.len().div_ceil(limit) as u32;
            for i in 0..n {
                let at = i as usize * limit;
                let part = value.slice(at..(at + limit).min(value.len()));
                chunks.push((chunk_key(&key, nonce, i), part.into()));
            }
            let mut manifest = BytesMut::with_capacity(MANIFEST_LEN);
            manifest.put_u8(MANIFEST);
            manifest.put_u32_le(n);
            manifest.put_u64_le(value.len() as u64);
            manifest.put_u64_le(nonce);
            manifests.push((key, manifest.freeze().into()));
        }
        self.store.put_items(chunks).await?;
        self.store.put_items(manifests).await?;
        let replaced: Vec<String> = keys
            .iter()
            .zip(&old)
            .filter_map(|(key, item)| item.as_deref().and_then(|i| Self::chunk_keys(key, i)))
            .flatten()
            .collect();
        if !replaced.is_empty() {
            self.store.delete_items(&replaced).await?;
        }
        Ok(())
    }

    /// The chunk keys named by a manifest item, or `None` for an inline item.
    fn chunk_keys(key: &str, item: &[u8]) -> Option<Vec<String>> {
        Some(parse_manifest(item)?.chunk_keys(key))
    }
}

struct Manifest {
    chunks: u32,
    len: u64,
    nonce: u64,
}

impl Manifest {
    /// The keys of the chunks of `key`'s value, in order.
    fn chunk_keys(&self, key: &str) -> Vec<String> {
        (0..self.chunks)
            .map(|i| chunk_key(key, self.nonce, i))
            .collect()
    }

    /// The value's length as room to reserve for it.
    fn reserve(&self) -> usize {
        usize::try_from(self.len).unwrap_or(usize::MAX)
    }
}

/// Most chunks a manifest may name (64 GB in Memcached's smallest items, 64 KB): its count
/// comes from the store, and a key is made for every chunk before any is read.
const MAX_CHUNKS: u32 = 1 << 20;

/// The manifest in `item`, `None` when it is not one or names an impossible chunk count
/// (none, more than [`MAX_CHUNKS`], or more than the value has bytes).
fn parse_manifest(item: &[u8]) -> Option<Manifest> {
    if item.len() != MANIFEST_LEN || item[0] != MANIFEST {
        return None;
    }
    let m = Manifest {
        chunks: u32::from_le_bytes(item[1..5].try_into().ok()?),
        len: u64::from_le_bytes(item[5..13].try_into().ok()?),
        nonce: u64::from_le_bytes(item[13..21].try_into().ok()?),
    };
    (m.chunks >= 1 && m.chunks <= MAX_CHUNKS && u64::from(m.chunks) <= m.len).then_some(m)
}

fn chunk_key(key: &str, nonce: u64, i: u32) -> String {
    format!("{key}#{nonce:x}#{i}")
}

#[async_trait]
impl<S: ItemStore> Channel for Chunked<S> {
    fn url(&self) -> &str {
        self.store.url()
    }

    fn poll_policy(&self) -> PollPolicy {
        self.store.poll_policy()
    }

    fn reads_are_cheap(&self) -> bool {
        self.store.reads_are_cheap()
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<(), ChannelError> {
        self.put_many(vec![(key.to_string(), value)]).await
    }

    /// The small values in one [`ItemStore::put_items`] (a reduce_scatter worker's seven
    /// parts are one round trip on Memcached, not seven), then the large ones
    /// (`put_large`).
    async fn put_many(&self, items: Vec<(String, Bytes)>) -> Result<(), ChannelError> {
        let limit = self.store.item_limit();
        let (small, large): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|(_, value)| value.len() < limit);
        if !small.is_empty() {
            let keys: Vec<String> = small.iter().map(|(key, _)| key.clone()).collect();
            let inline = small
                .into_iter()
                .map(|(key, body)| {
                    let item = Item {
                        tag: Some(INLINE),
                        body,
                    };
                    (key, item)
                })
                .collect();
            self.store.put_items(inline).await?;
            self.inline.insert(keys.iter().map(String::as_str));
        }
        if large.is_empty() {
            return Ok(());
        }
        self.put_large(large).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, ChannelError> {
        // A concurrent rewrite may delete the chunks we are about to read: read the manifest
        // again and retry a few times.
        for _ in 0..5 {
            let Some(item) = self.store.get_items(&[key.to_string()]).await?.remove(0) else {
                return Ok(None);
            };
            match item.first() {
                Some(&INLINE) => {
                    self.inline.insert([key]);
                    return Ok(Some(item.slice(1..)));
                }
                Some(&MANIFEST) => {
                    self.inline.remove([key]);
                    let m =
                        parse_manifest(&item).ok_or_else(|| self.corrupt(key, "bad manifest"))?;
                    let group = [(m.chunk_keys(key), m.reserve())];
                    let value = self.store.get_joined(&group).await?.pop().flatten();
                    match self.check_joined(key, &m, value)? {
                        Some(value) => return Ok(Some(value)),
                        None => continue,
                    }
                }
                _ => {
                    return Err(
                        self.corrupt(key, "item has an unknown tag (not written by lambdaml)")
                    );
                }
            }
        }
        Err(self.corrupt(
            key,
            "chunks kept disappearing while reading (value rewritten too often)",
        ))
    }

    /// One request for the items, then one for the chunks of every large value among them
    /// (a leader gathering seven 16 MB parts makes two round trips, not fifteen); a value
    /// whose chunks were replaced meanwhile is read again on its own, as `get` does.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ChannelError> {
        let items = self.store.get_items(keys).await?;
        let mut values: Vec<Option<Bytes>> = vec![None; keys.len()];
        let mut large: Vec<(usize, Manifest)> = Vec::new();
        let mut inline: Vec<&str> = Vec::new();
        for (i, (key, item)) in keys.iter().zip(items).enumerate() {
            match item {
                Some(item) if item.first() == Some(&INLINE) => {
                    inline.push(key);
                    values[i] = Some(item.slice(1..));
                }
                Some(item) => match parse_manifest(&item) {
                    Some(m) => large.push((i, m)),
                    None => values[i] = self.get(key).await?,
                },
                None => {}
            }
        }
        self.inline.insert(inline);
        self.inline
            .remove(large.iter().map(|(i, _)| keys[*i].as_str()));
        if large.is_empty() {
            return Ok(values);
        }
        let groups: Vec<(Vec<String>, usize)> = large
            .iter()
            .map(|(i, m)| (m.chunk_keys(&keys[*i]), m.reserve()))
            .collect();
        let joined = self.store.get_joined(&groups).await?;
        for ((i, m), value) in large.into_iter().zip(joined) {
            values[i] = match self.check_joined(&keys[i], &m, value)? {
                Some(value) => Some(value),
                None => self.get(&keys[i]).await?,
            };
        }
        Ok(values)
    }

    async fn delete(&self, keys: &[String]) -> Result<(), ChannelError> {
        if keys.is_empty() {
            return Ok(());
        }
        let (mut all, unknown) = self.inline.take(keys);
        let items = if unknown.is_empty() {
            Vec::new()
        } else {
            self.store.get_items(&unknown).await?
        };
        all.extend(unknown.iter().cloned());
        for (key, item) in unknown.iter().zip(&items) {
            if let Some(chunks) = item.as_deref().and_then(|i| Self::chunk_keys(key, i)) {
                all.extend(chunks);
            }
        }
        self.store.delete_items(&all).await
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, ChannelError> {
        Ok(self
            .store
            .list_items(prefix)
            .await?
            .map(|keys| keys.into_iter().filter(|k| !k.contains('#')).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    /// An item store with a tiny limit that refuses larger items, like a real server.
    #[derive(Debug, Default)]
    struct Tiny(
        Mutex<BTreeMap<String, Bytes>>,
        std::sync::atomic::AtomicUsize,
    );

    #[async_trait]
    impl ItemStore for Tiny {
        fn url(&self) -> &str {
            "tiny:"
        }
        fn poll_policy(&self) -> PollPolicy {
            PollPolicy {
                initial: Duration::from_micros(1),
                max: Duration::from_micros(1),
            }
        }
        fn item_limit(&self) -> usize {
            32
        }
        async fn put_item(&self, key: &str, item: Item) -> Result<(), ChannelError> {
            assert!(
                item.len() <= 32,
                "item of {} bytes over the limit",
                item.len()
            );
            self.0.lock().unwrap().insert(key.into(), item.to_bytes());
            Ok(())
        }
        async fn get_items(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ChannelError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let m = self.0.lock().unwrap();
            Ok(keys.iter().map(|k| m.get(k).cloned()).collect())
        }
        async fn delete_items(&self, keys: &[String]) -> Result<(), ChannelError> {
            let mut m = self.0.lock().unwrap();
            keys.iter().for_each(|k| {
                m.remove(k);
            });
            Ok(())
        }
        async fn list_items(&self, prefix: &str) -> Result<Option<Vec<String>>, ChannelError> {
            Ok(Some(
                self.0
                    .lock()
                    .unwrap()
                    .keys()
                    .filter(|k| k.starts_with(prefix))
                    .cloned()
                    .collect(),
            ))
        }
    }

    #[tokio::test]
    async fn large_values_are_chunked_and_rewrites_leave_nothing_behind() {
        let ch = Chunked::new(Tiny::default());
        let big = Bytes::from((0..95u8).collect::<Vec<_>>());
        ch.put("a/b", big.clone()).await.unwrap();
        assert_eq!(ch.get("a/b").await.unwrap(), Some(big.clone()));
        assert_eq!(ch.store.0.lock().unwrap().len(), 1 + 3);
        assert_eq!(ch.list("a/").await.unwrap(), Some(vec!["a/b".to_string()]));
        // Rewrite with another large value: the old chunks go.
        let other = Bytes::from(vec![7u8; 40]);
        ch.put("a/b", other.clone()).await.unwrap();
        assert_eq!(ch.get("a/b").await.unwrap(), Some(other.clone()));
        assert_eq!(ch.store.0.lock().unwrap().len(), 1 + 2);
        ch.put("a/s", Bytes::from_static(b"tiny")).await.unwrap();
        let many = ch
            .get_many(&["a/b".into(), "a/s".into(), "a/none".into()])
            .await
            .unwrap();
        assert_eq!(
            many,
            vec![Some(other), Some(Bytes::from_static(b"tiny")), None]
        );
        ch.delete(&["a/s".into()]).await.unwrap();
        ch.put("a/c", big).await.unwrap();
        ch.delete(&["a/b".into(), "a/c".into()]).await.unwrap();
        assert!(ch.store.0.lock().unwrap().is_empty());
    }

    /// A group with a missing item is `None` and the groups after it keep their own items,
    /// wherever in its group the miss is.
    #[tokio::test]
    async fn a_group_with_a_missing_item_leaves_the_next_group_whole() {
        let store = Tiny::default();
        for key in ["b", "c", "e"] {
            store
                .put_item(key, Bytes::from(key.to_string()).into())
                .await
                .unwrap();
        }
        let group = |keys: &[&str]| (keys.iter().map(|k| k.to_string()).collect(), keys.len());
        let joined = store
            .get_joined(&[
                group(&["a", "b"]),
                group(&["b", "c"]),
                group(&["c", "d"]),
                group(&["e"]),
            ])
            .await
            .unwrap();
        assert_eq!(
            joined,
            vec![
                None,
                Some(Bytes::from_static(b"bc")),
                None,
                Some(Bytes::from_static(b"e"))
            ]
        );
    }

    #[tokio::test]
    async fn keys_seen_inline_are_deleted_without_a_read_and_others_with_their_chunks() {
        let writer = Chunked::new(Tiny::default());
        let reads = |ch: &Chunked<Tiny>| ch.store.1.load(std::sync::atomic::Ordering::Relaxed);
        let small = |k: &str| (k.to_string(), Bytes::from(vec![1u8; 20]));
        writer
            .put_many(vec![small("w/a"), small("w/b")])
            .await
            .unwrap();
        writer.put("w/c", Bytes::from(vec![2u8; 20])).await.unwrap();
        writer
            .put("w/big", Bytes::from(vec![3u8; 70]))
            .await
            .unwrap();
        let before = reads(&writer);
        writer
            .delete(&["w/a".into(), "w/b".into(), "w/c".into()])
            .await
            .unwrap();
        assert_eq!(reads(&writer), before, "written inline: deleted unread");
        writer.delete(&["w/big".into()]).await.unwrap();
        assert_eq!(
            reads(&writer),
            before + 1,
            "a large value: its manifest read"
        );
        assert!(writer.store.0.lock().unwrap().is_empty(), "chunks left");

        // Another process's channel over the same items: what it read inline it deletes
        // unread; what it never saw it reads first, and finds the chunks.
        let other = Chunked::new(Tiny::default());
        other
            .put("o/seen", Bytes::from(vec![4u8; 20]))
            .await
            .unwrap();
        let items = other.store.0.lock().unwrap().clone();
        let reader = Chunked::new(Tiny(Mutex::new(items), Default::default()));
        reader.get_many(&["o/seen".into()]).await.unwrap();
        let before = reads(&reader);
        reader.delete(&["o/seen".into()]).await.unwrap();
        assert_eq!(reads(&reader), before);
        other
            .put("o/big", Bytes::from(vec![5u8; 70]))
            .await
            .unwrap();
        let fresh = Chunked::new(Tiny(
            Mutex::new(other.store.0.lock().unwrap().clone()),
            Default::default(),
        ));
        fresh
            .delete(&["o/seen".into(), "o/big".into()])
            .await
            .unwrap();
        assert_eq!(reads(&fresh), 1);
        assert!(fresh.store.0.lock().unwrap().is_empty(), "chunks left");
    }

    #[test]
    fn known_inline_keys_start_over_when_full() {
        let known = KnownInline::default();
        let keys: Vec<String> = (0..=KnownInline::CAPACITY).map(|i| i.to_string()).collect();
        known.insert(keys.iter().map(String::as_str));
        let (seen, unseen) = known.take(&keys);
        assert_eq!(seen, vec![KnownInline::CAPACITY.to_string()]);
        assert_eq!(unseen.len(), KnownInline::CAPACITY);
    }

    #[tokio::test]
    async fn several_large_values_are_read_in_two_requests() {
        let ch = Chunked::new(Tiny::default());
        let values: Vec<Bytes> = (0..4u8)
            .map(|i| Bytes::from(vec![i; 40 + 30 * i as usize]))
            .collect();
        let keys: Vec<String> = (0..4).map(|i| format!("k/{i}")).collect();
        for (k, v) in keys.iter().zip(&values) {
            ch.put(k, v.clone()).await.unwrap();
        }
        let mut asked = keys.clone();
        asked.insert(1, "k/none".into());
        let calls = || ch.store.1.load(std::sync::atomic::Ordering::Relaxed);
        let before = calls();
        let got = ch.get_many(&asked).await.unwrap();
        assert_eq!(calls() - before, 2);
        let mut want: Vec<Option<Bytes>> = values.into_iter().map(Some).collect();
        want.insert(1, None);
        assert_eq!(got, want);
    }

    /// A manifest's chunk count comes from the store: an impossible one is an error before
    /// a key is made for each chunk (3 million here, more than the value's 10 bytes).
    #[tokio::test]
    async fn a_manifest_naming_more_chunks_than_bytes_is_refused() {
        let ch = Chunked::new(Tiny::default());
        let mut manifest = vec![MANIFEST];
        manifest.extend_from_slice(&3_000_000u32.to_le_bytes());
        manifest.extend_from_slice(&10u64.to_le_bytes());
        manifest.extend_from_slice(&7u64.to_le_bytes());
        ch.store
            .0
            .lock()
            .unwrap()
            .insert("k".into(), manifest.into());
        for err in [
            ch.get("k").await.unwrap_err(),
            ch.get_many(&["k".into()]).await.unwrap_err(),
        ] {
            let err = format!("{:#}", anyhow::Error::from(err));
            assert!(err.contains("bad manifest"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_missing_chunk_is_an_error_not_garbage() {
        let ch = Chunked::new(Tiny::default());
        ch.put("k", Bytes::from(vec![1u8; 70])).await.unwrap();
        let chunk = ch
            .store
            .0
            .lock()
            .unwrap()
            .keys()
            .find(|k| k.contains('#'))
            .cloned()
            .unwrap();
        ch.store.0.lock().unwrap().remove(&chunk);
        let err = ch.get("k").await.unwrap_err();
        assert!(format!("{:#}", anyhow::Error::from(err)).contains("kept disappearing"));
    }
}

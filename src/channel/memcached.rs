//! `memcached://host:port[,host:port...][?item_size=BYTES]` — Memcached or ElastiCache.
//!
//! Several nodes shard keys on the client, as with an ElastiCache cluster. Values above the
//! item size (the server's `-I`, 1 MiB by default) are chunked by [`Chunked`]. Memcached
//! cannot list keys; nothing in lambdaml needs it to.
//!
//! The client is synchronous and is called directly: a worker is one task in its own
//! process, and a loopback round trip is shorter than a hop to a blocking thread pool.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::chunked::{Chunked, Item, ItemStore, MAX_RESERVE, join, next_group};
use super::meter::{self, Op};
use super::retry::{BackendError, RetryPolicy, with_retries};
use super::{ChannelError, PollPolicy};

/// Default item size of memcached and ElastiCache (`-I 1m`).
pub const DEFAULT_ITEM_SIZE: usize = 1 << 20;
/// Room for the key and memcached's per-item header within the item size.
use super::url::ITEM_OVERHEAD;
/// One request may not take longer (a paused server shows up as a timeout, then a retry).
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The raw Memcached store (use through [`open`]).
pub struct MemcachedStore {
    url: String,
    servers: Vec<String>,
    /// Replaced wholesale after a transport error: the crate returns a connection whose reply
    /// was cut off to its pool, and a late reply must never be read as the next one's.
    client: std::sync::RwLock<std::sync::Arc<memcache::Client>>,
    item_size: usize,
    retry: RetryPolicy,
    expiry: Option<Duration>,
}

impl std::fmt::Debug for MemcachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedStore")
            .field("url", &self.url)
            .finish()
    }
}

/// Opens a Memcached channel on `hosts` whose servers store items of up to `item_size`
/// bytes (default [`DEFAULT_ITEM_SIZE`]); `url` names it in messages. Items expire `expiry`
/// after they were written (never when `None`).
pub async fn open(
    url: &str,
    hosts: &[String],
    item_size: Option<usize>,
    retry: RetryPolicy,
    expiry: Option<Duration>,
) -> Result<Chunked<MemcachedStore>, ChannelError> {
    let item_size = item_size.unwrap_or(DEFAULT_ITEM_SIZE);
    let servers: Vec<String> = hosts
        .iter()
        .map(|h| {
            format!(
                "memcache://{h}?protocol=ascii&tcp_nodelay=true&timeout={}",
                OP_TIMEOUT.as_secs_f64()
            )
        })
        .collect();
    let client = with_retries(&retry, url, "connect", "", || async {
        connect(&servers).map_err(classify)
    })
    .await?;
    Ok(Chunked::new(MemcachedStore {
        url: url.to_string(),
        servers,
        client: std::sync::RwLock::new(std::sync::Arc::new(client)),
        item_size,
        retry,
        expiry,
    }))
}

/// One connection pool per server. The pools skip r2d2's test-on-checkout, which would send
/// a `version` round trip before every request and double the latency; a broken connection
/// shows up as an error instead, and the store then reconnects. The read timeout is in the
/// URL so that every connection the pool opens gets it.
fn connect(servers: &[String]) -> Result<memcache::Client, memcache::MemcacheError> {
    let pools = servers
        .iter()
        .map(|s| {
            let url = memcache::Url::parse(s)
                .map_err(|e| memcache::MemcacheError::BadURL(e.to_string()))?;
            let pool = r2d2::Pool::builder()
                .max_size(4)
                .min_idle(Some(0))
                .test_on_check_out(false)
                .connection_timeout(OP_TIMEOUT)
                .build(memcache::ConnectionManager::new(url))?;
            Ok(pool)
        })
        .collect::<Result<Vec<_>, memcache::MemcacheError>>()?;
    memcache::Client::with_pools(pools)
}

impl MemcachedStore {
    fn client(&self) -> std::sync::Arc<memcache::Client> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A multi-get of `keys`, each value appended to the buffer its key names, of
    /// `reserve.len()` buffers whose room to reserve up front is `reserve` (capped): the
    /// buffers, and where in its buffer each key's value is.
    #[allow(clippy::type_complexity)]
    fn read_into(
        &self,
        keys: &[(&str, usize)],
        reserve: &[usize],
    ) -> Result<(Vec<Bytes>, Vec<Option<std::ops::Range<usize>>>), BackendError> {
        let mut bufs: Vec<Vec<u8>> = reserve
            .iter()
            .map(|len| Vec::with_capacity((*len).min(MAX_RESERVE)))
            .collect();
        let found = self.client().gets_into(keys, &mut bufs);
        // memcached counts every key of a multi-get as one get (`cmd_get`).
        let bytes = bufs.iter().map(|b| b.len() as u64).sum();
        meter::record(Op::Get, keys.len() as u64, bytes);
        let found = found.map_err(|e| self.failed(e))?;
        Ok((bufs.into_iter().map(Bytes::from).collect(), found))
    }

    /// Classifies an error; after a transport error, starts over with fresh connections.
    fn failed(&self, e: memcache::MemcacheError) -> BackendError {
        let e = classify(e);
        if e.transient
            && let Ok(fresh) = connect(&self.servers)
        {
            *self.client.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(fresh);
        }
        e
    }
}

/// Memcached's expiration time for an item written now: 0 (never) without an expiry, else
/// seconds from now, except that memcached reads anything above 30 days as a Unix time.
fn exptime(expiry: Option<Duration>) -> u32 {
    const THIRTY_DAYS: u64 = 30 * 86_400;
    match expiry {
        None => 0,
        Some(d) => {
            let secs = d.as_secs_f64().ceil().max(1.0) as u64;
            let t = if secs > THIRTY_DAYS {
                super::expires_at_unix(d)
            } else {
                secs
            };
            u32::try_from(t).unwrap_or(u32::MAX)
        }
    }
}

fn classify(e: memcache::MemcacheError) -> BackendError {
    use memcache::MemcacheError as E;
    match e {
        E::IOError(_) | E::PoolError(_) => BackendError::transient(e.to_string()),
        // The ASCII protocol reports it as a server error ("SERVER_ERROR object too large
        // for cache"), the binary one as a command error.
        E::CommandError(_) | E::ServerError(_) if e.to_string().contains("too large") => {
            BackendError::permanent(format!(
                "{}: the value exceeds the server's item size; pass ?item_size= matching its -I",
                e.to_string().trim_end()
            ))
        }
        _ => BackendError::permanent(e.to_string()),
    }
}

/// An item written to the connection as its tag, then its body: no joined copy of a large
/// inline value.
struct Streamed<'a>(&'a Item);

impl<W: std::io::Write> memcache::ToMemcacheValue<W> for Streamed<'_> {
    fn get_flags(&self) -> u32 {
        0
    }

    fn get_length(&self) -> usize {
        self.0.len()
    }

    fn write_to(&self, stream: &mut W) -> std::io::Result<()> {
        if let Some(tag) = self.0.tag {
            stream.write_all(&[tag])?;
        }
        stream.write_all(&self.0.body)
    }
}

#[async_trait]
impl ItemStore for MemcachedStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn poll_policy(&self) -> PollPolicy {
        PollPolicy {
            initial: Duration::from_micros(20),
            max: Duration::from_millis(2),
        }
    }

    fn reads_are_cheap(&self) -> bool {
        true
    }

    fn item_limit(&self) -> usize {
        self.item_size - ITEM_OVERHEAD
    }

    async fn put_item(&self, key: &str, item: Item) -> Result<(), ChannelError> {
        with_retries(&self.retry, &self.url, "put", key, || async {
            meter::record(Op::Put, 1, item.len() as u64);
            self.client()
                .set(key, Streamed(&item), exptime(self.expiry))
                .map_err(|e| self.failed(e))
        })
        .await
    }

    async fn put_items(&self, items: Vec<(String, Item)>) -> Result<(), ChannelError> {
        let (named, bytes) = match items.as_slice() {
            [] => return Ok(()),
            [(key, item)] => return self.put_item(key, item.clone()).await,
            [(key, _), rest @ ..] => (
                format!("{key} (and {} more keys)", rest.len()),
                items.iter().map(|(_, i)| i.len() as u64).sum(),
            ),
        };
        let streamed: Vec<(&str, Streamed)> = items
            .iter()
            .map(|(key, item)| (key.as_str(), Streamed(item)))
            .collect();
        with_retries(&self.retry, &self.url, "put", &named, || async {
            meter::record(Op::Put, items.len() as u64, bytes);
            self.client()
                .set_multi(&streamed, exptime(self.expiry))
                .map_err(|e| self.failed(e))
        })
        .await
    }

    async fn get_items(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ChannelError> {
        let first = keys.first().map_or("", String::as_str);
        with_retries(&self.retry, &self.url, "get", first, || async {
            if let [key] = keys {
                let v: Option<Vec<u8>> = self.client().get(key).map_err(|e| self.failed(e))?;
                meter::record(Op::Get, 1, v.as_ref().map_or(0, |v| v.len() as u64));
                return Ok(vec![v.map(Bytes::from)]);
            }
            // One buffer: these are small or inline items, each used on its own.
            let refs: Vec<(&str, usize)> = keys.iter().map(|k| (k.as_str(), 0)).collect();
            let (bufs, found) = self.read_into(&refs, &[0])?;
            Ok(found
                .into_iter()
                .map(|r| r.map(|r| bufs[0].slice(r)))
                .collect())
        })
        .await
    }

    /// All groups in one multi-get, each group's items read into a buffer of its own, so
    /// that a group read in order (one server holds it) is that buffer and needs no copy.
    /// A buffer per group rather than one for all: a leader's seven 16 MB values in one
    /// buffer would be mapped afresh every round, above glibc's mmap threshold.
    async fn get_joined(
        &self,
        groups: &[(Vec<String>, usize)],
    ) -> Result<Vec<Option<Bytes>>, ChannelError> {
        let refs: Vec<(&str, usize)> = groups
            .iter()
            .enumerate()
            .flat_map(|(g, (keys, _))| keys.iter().map(move |k| (k.as_str(), g)))
            .collect();
        let reserve: Vec<usize> = groups.iter().map(|(_, len)| *len).collect();
        let first = refs.first().map_or("", |(key, _)| *key);
        let (bufs, found) = with_retries(&self.retry, &self.url, "get", first, || async {
            self.read_into(&refs, &reserve)
        })
        .await?;
        let mut found = found.into_iter();
        Ok(groups
            .iter()
            .zip(bufs)
            .map(|((keys, len), buf)| {
                let group = next_group(&mut found, keys.len())?;
                let in_order = group.windows(2).all(|w| w[0].end == w[1].start);
                if in_order && group.first().is_some_and(|r| r.start == 0) {
                    let end = group.last().map_or(0, |r| r.end);
                    Some(buf.slice(..end))
                } else {
                    join(group.into_iter().map(|r| buf.slice(r)).collect(), *len)
                }
            })
            .collect())
    }

    async fn delete_items(&self, keys: &[String]) -> Result<(), ChannelError> {
        for key in keys {
            with_retries(&self.retry, &self.url, "delete", key, || async {
                meter::record(Op::Delete, 1, 0);
                self.client()
                    .delete(key)
                    .map(drop)
                    .map_err(|e| self.failed(e))
            })
            .await?;
        }
        Ok(())
    }

    async fn list_items(&self, _prefix: &str) -> Result<Option<Vec<String>>, ChannelError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::channel::Channel;

    /// Segments with data that the peer of `stream` has sent it so far (`TCP_INFO`).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn segments_in(stream: &std::net::TcpStream) -> u32 {
        use std::os::fd::AsRawFd;
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` is a `tcp_info` of `len` bytes that the kernel fills in.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info.tcpi_data_segs_in
    }

    /// A channel to the fake server at `addr`.
    async fn channel_to(addr: std::net::SocketAddr) -> Chunked<MemcachedStore> {
        let hosts = [addr.to_string()];
        open(
            "memcached://test",
            &hosts,
            None,
            RetryPolicy::default(),
            None,
        )
        .await
        .unwrap()
    }

    /// A fake memcached on a free loopback port: `serve` runs on its one connection, in a
    /// thread of its own.
    fn fake_server<T: Send + 'static>(
        serve: impl FnOnce(std::net::TcpStream) -> T + Send + 'static,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<T>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            serve(conn)
        });
        (addr, server)
    }

    /// Reads what the client sends into `got` until `done(got)`.
    fn read_until(conn: &mut std::net::TcpStream, got: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
        let mut buf = [0u8; 4096];
        while !done(got) {
            let n = conn
                .read(&mut buf)
                .expect("the client's next bytes within 5 s");
            assert!(n > 0, "the client hung up");
            got.extend_from_slice(&buf[..n]);
        }
    }

    /// The values of the whole storage commands at the start of `got`: each a command line
    /// ending in the value's length, as many bytes, then "\r\n".
    fn stored_values(got: &[u8]) -> Vec<Vec<u8>> {
        let mut at = 0;
        let mut found = Vec::new();
        while let Some(end) = got[at..].windows(2).position(|w| w == b"\r\n") {
            let line = std::str::from_utf8(&got[at..at + end]).unwrap();
            let len: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
            let start = at + end + 2;
            if got.len() < start + len + 2 {
                break;
            }
            found.push(got[start..start + len].to_vec());
            at = start + len + 2;
        }
        found
    }

    /// A small put reaches the server as one segment. memcache 0.21 wrote each piece of a
    /// command line to the unbuffered socket on its own, a segment each with `TCP_NODELAY`:
    /// a 1 KB put took 0.15-0.27 ms among 8 workers instead of 0.04-0.09 ms (vendor/memcache).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[tokio::test]
    async fn a_small_put_reaches_the_server_as_one_segment() {
        // The client may have sent before the accept: count all it sent, only the put.
        let (addr, server) = fake_server(|mut conn| {
            let mut got = Vec::new();
            read_until(&mut conn, &mut got, |got| !stored_values(got).is_empty());
            conn.write_all(b"STORED\r\n").unwrap();
            let line_end = got.windows(2).position(|w| w == b"\r\n").unwrap();
            let line = String::from_utf8_lossy(&got[..line_end]).to_string();
            (segments_in(&conn), line)
        });
        let ch = channel_to(addr).await;
        ch.put("a/b", Bytes::from(vec![7u8; 1000])).await.unwrap();
        let (segments, line) = server.join().unwrap();
        assert!(line.starts_with("set a/b "), "{line}");
        assert_eq!(
            segments, 1,
            "the put of '{line}' came in {segments} segments"
        );
    }

    /// A refused item among several fails the put, and every reply is still read: the
    /// next request gets its own reply, not the rest of the put's.
    #[tokio::test]
    async fn a_refused_item_among_several_leaves_no_reply_behind() {
        let (addr, server) = fake_server(|mut conn| {
            let mut got = Vec::new();
            read_until(&mut conn, &mut got, |got| stored_values(got).len() >= 2);
            conn.write_all(b"SERVER_ERROR object too large for cache\r\nSTORED\r\n")
                .unwrap();
            let second = stored_values(&got).remove(1);
            let mut line = Vec::new();
            read_until(&mut conn, &mut line, |line| line.ends_with(b"\r\n"));
            assert_eq!(line, b"get k/1\r\n");
            let mut reply = format!("VALUE k/1 0 {}\r\n", second.len()).into_bytes();
            reply.extend_from_slice(&second);
            reply.extend_from_slice(b"\r\nEND\r\n");
            conn.write_all(&reply).unwrap();
        });
        let ch = channel_to(addr).await;
        let items = (0..2)
            .map(|i| (format!("k/{i}"), Bytes::from(vec![i as u8; 100])))
            .collect();
        let err = format!("{:?}", ch.put_many(items).await.unwrap_err());
        assert!(err.contains("item_size"), "{err}");
        let got = ch.get("k/1").await.unwrap();
        assert_eq!(got, Some(Bytes::from(vec![1u8; 100])));
        server.join().unwrap();
    }

    /// Groups read in one multi-get: a group with a miss is `None` and the next keeps its
    /// own values, whose bytes may arrive in pieces that split a header or a value's end.
    #[tokio::test]
    async fn groups_are_read_in_one_request_and_a_miss_spoils_only_its_own() {
        let (addr, server) = fake_server(|mut conn| {
            conn.set_nodelay(true).unwrap();
            let mut line = Vec::new();
            read_until(&mut conn, &mut line, |line| line.ends_with(b"\r\n"));
            let mut reply = Vec::new();
            for (key, value) in [("b", "bb"), ("c", "cc"), ("d", "ddd"), ("e", "e")] {
                reply.extend_from_slice(
                    format!("VALUE {key} 0 {}\r\n{value}\r\n", value.len()).as_bytes(),
                );
            }
            reply.extend_from_slice(b"END\r\n");
            for piece in reply.chunks(5) {
                conn.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            line
        });
        let ch = channel_to(addr).await;
        let group = |keys: &[&str]| (keys.iter().map(|k| k.to_string()).collect(), 4);
        let joined = ch
            .store()
            .get_joined(&[group(&["a", "b"]), group(&["c", "d"]), group(&["e"])])
            .await
            .unwrap();
        assert_eq!(
            joined,
            vec![
                None,
                Some(Bytes::from_static(b"ccddd")),
                Some(Bytes::from_static(b"e"))
            ]
        );
        assert_eq!(server.join().unwrap(), b"get a b c d e\r\n");
    }

    /// Several small values are one round trip: the server gets every command before it
    /// sends its first reply (a client waiting for each reply would wait here in vain).
    #[tokio::test]
    async fn several_puts_are_sent_before_the_first_reply() {
        let (addr, server) = fake_server(|mut conn| {
            let mut got = Vec::new();
            read_until(&mut conn, &mut got, |got| stored_values(got).len() >= 3);
            conn.write_all(b"STORED\r\nSTORED\r\nSTORED\r\n").unwrap();
            got
        });
        let ch = channel_to(addr).await;
        let items = (0..3)
            .map(|i| (format!("k/{i}"), Bytes::from(vec![i as u8; 100])))
            .collect();
        ch.put_many(items).await.unwrap();
        let got = server.join().unwrap();
        let text = String::from_utf8_lossy(&got);
        for i in 0..3 {
            assert!(text.contains(&format!("set k/{i} ")), "{text}");
        }
    }
}

//! `lambdaml ps serve`: the gRPC service over a [`Store`], with token auth, expiry of idle
//! models and snapshots to disk so a restarted server resumes its models.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::proto::parameter_server_server::{ParameterServer, ParameterServerServer};
use super::proto::{self, PushMode};
use super::store::{Mode, ModelState, Store, StoreError};
use super::{TOKEN_HEADER, extend_from_bytes, to_chunks};

/// The longest a single pull waits; clients wanting longer ask again (and meanwhile look
/// at their own deadline and the job's abort flag).
const MAX_PULL_WAIT: Duration = Duration::from_secs(60);

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (`HOST:PORT`; port 0 picks a free one).
    pub addr: String,
    /// How often expiry and snapshots run.
    pub interval: Duration,
    /// Models idle longer than this are dropped.
    pub expired: Duration,
    /// Where snapshots go; none: models live in memory only.
    pub dir: Option<PathBuf>,
    /// The token every call must carry.
    pub token: Option<String>,
    /// What the server accepts and holds.
    pub limits: Limits,
}

/// What one server accepts and holds: every length a client announces is checked against
/// these before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most values one model may hold (`--max-model-mb`).
    pub max_model_values: usize,
    /// Most values all models together may hold (`--max-memory-mb`).
    pub max_total_values: usize,
}

impl Limits {
    /// The limits for `max_model_mb` per model and `max_memory_mb` in all (MiB of f32).
    pub fn from_mb(max_model_mb: u64, max_memory_mb: u64) -> Self {
        let values =
            |mb: u64| usize::try_from(mb.saturating_mul(1 << 20) / 4).unwrap_or(usize::MAX);
        Limits {
            max_model_values: values(max_model_mb),
            max_total_values: values(max_memory_mb),
        }
    }
}

/// Concurrent calls one connection may have in flight.
const CALLS_PER_CONNECTION: usize = 64;

/// Concurrent HTTP/2 streams one connection may open.
const STREAMS_PER_CONNECTION: u32 = 128;

/// The longest any call may take (a pull waits at most [`MAX_PULL_WAIT`]; a push of the
/// largest model over a slow link fits too).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// How often an idle connection is pinged, and how long the answer may take before the
/// connection is closed: a vanished client does not hold a connection forever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The service.
#[derive(Debug)]
pub struct Service {
    store: Arc<Store>,
    started: Instant,
    limits: Limits,
    /// Where snapshots are written, if anywhere: a dropped job's go with it.
    dir: Option<PathBuf>,
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::Invalid(m) => Status::invalid_argument(m),
        StoreError::OutOfOrder(m) => Status::failed_precondition(m),
        StoreError::Full(m) => Status::resource_exhausted(m),
    }
}

/// Job ids and model names become file names in `--dir`: keep them to a safe alphabet.
fn check_name(what: &str, s: &str) -> Result<(), Status> {
    let ok = !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{what} '{s}' must be 1-200 characters of A-Z a-z 0-9 - _ . and not start with '.'"
        )))
    }
}

/// A streamed message: a header on the first, a slice of f32 values on each.
trait Chunk {
    type Header;
    fn into_parts(self) -> (Option<Self::Header>, bytes::Bytes);
}

impl Chunk for proto::RegisterChunk {
    type Header = proto::RegisterHeader;
    fn into_parts(self) -> (Option<Self::Header>, bytes::Bytes) {
        (self.header, self.data)
    }
}

impl Chunk for proto::PushChunk {
    type Header = proto::PushHeader;
    fn into_parts(self) -> (Option<Self::Header>, bytes::Bytes) {
        (self.header, self.data)
    }
}

/// Reads a client stream whose first message carries the header. `expect` checks the
/// header and says how many values the call may send (at most a model's limit), before
/// anything is allocated; data before the header, a second header, a slice that is not whole
/// `f32`s, or more values than expected, are refused at the message that brings them.
async fn receive<C: Chunk, S: Stream<Item = Result<C, Status>> + Unpin>(
    mut stream: S,
    expect: impl FnOnce(&C::Header) -> Result<usize, Status>,
) -> Result<(C::Header, Vec<f32>), Status> {
    let first = stream
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("an empty call: the header is missing"))??;
    let (header, data) = first.into_parts();
    let header = header
        .ok_or_else(|| Status::invalid_argument("the first message must carry the header"))?;
    let len = expect(&header)?;
    let mut values = Vec::with_capacity(len);
    take_values(&mut values, &data, len)?;
    while let Some(chunk) = stream.next().await {
        let (again, data) = chunk?.into_parts();
        if again.is_some() {
            return Err(Status::invalid_argument("a call carries one header"));
        }
        take_values(&mut values, &data, len)?;
    }
    Ok((header, values))
}

/// Appends the little-endian f32 `data` to `values`, refusing more than `len` in all.
fn take_values(values: &mut Vec<f32>, data: &[u8], len: usize) -> Result<(), Status> {
    if values.len() + data.len() / 4 > len {
        return Err(Status::invalid_argument(format!(
            "more values than the {len} announced"
        )));
    }
    extend_from_bytes(values, data).map_err(Status::invalid_argument)
}

type ValuesStream = Pin<Box<dyn Stream<Item = Result<proto::ValuesChunk, Status>> + Send>>;

fn values_stream(round: Option<u64>, len: usize, chunks: Arc<Vec<bytes::Bytes>>) -> ValuesStream {
    let msgs = (0..chunks.len()).map(move |i| {
        Ok(proto::ValuesChunk {
            len: if i == 0 { len as u64 } else { 0 },
            round: if i == 0 { round } else { None },
            // A cheap clone: `Bytes` shares the encoded snapshot.
            data: chunks[i].clone(),
        })
    });
    Box::pin(tokio_stream::iter(msgs))
}

impl Service {
    /// Register: a model's header, then (optionally) its initial values.
    async fn register_stream<S>(&self, stream: S) -> Result<Response<proto::RegisterReply>, Status>
    where
        S: Stream<Item = Result<proto::RegisterChunk, Status>> + Unpin,
    {
        let limits = self.limits;
        let store = self.store.clone();
        let (h, mut values) = receive(stream, |h: &proto::RegisterHeader| {
            check_name("job id", &h.job)?;
            check_name("model name", &h.name)?;
            if h.workers == 0 {
                return Err(Status::invalid_argument(
                    "a model needs at least one worker",
                ));
            }
            let len = usize::try_from(h.len).unwrap_or(usize::MAX);
            if len > limits.max_model_values {
                return Err(Status::resource_exhausted(format!(
                    "model '{}' of {} values is larger than this server's limit of {} \
                     (--max-model-mb)",
                    h.name, h.len, limits.max_model_values
                )));
            }
            store.room_for(&h.job, &h.name, len).map_err(status)?;
            Ok(len)
        })
        .await?;
        if values.is_empty() {
            values = vec![0.0; h.len as usize];
        } else if values.len() as u64 != h.len {
            return Err(Status::invalid_argument(format!(
                "register of '{}' announced {} values and sent {}",
                h.name,
                h.len,
                values.len()
            )));
        }
        let state = ModelState::new(&h.job, &h.name, h.workers, values);
        let (created, model) = self.store.register(state).map_err(status)?;
        if created {
            tracing::info!(job = %h.job, name = %h.name, len = h.len, workers = h.workers, "model registered");
        }
        let completed_round = model.state.lock().expect("lock").completed_round();
        Ok(Response::new(proto::RegisterReply {
            created,
            completed_round,
        }))
    }

    /// Push: a header naming a held model and a round, then the values.
    async fn push_stream<S>(&self, stream: S) -> Result<Response<proto::PushReply>, Status>
    where
        S: Stream<Item = Result<proto::PushChunk, Status>> + Unpin,
    {
        let store = self.store.clone();
        let mut target = None;
        let (h, values) = receive(stream, |h: &proto::PushHeader| {
            // Refused at the header, before any of its data is read: an unknown model, or a
            // length the model does not have.
            let model = store.get(&h.job, &h.name).map_err(status)?;
            let len = model.state.lock().expect("lock").values.len();
            if h.len != len as u64 && !(h.mode == PushMode::Replace as i32 && h.len == 0) {
                return Err(Status::invalid_argument(format!(
                    "push of {} values to '{}', which holds {len}",
                    h.len, h.name
                )));
            }
            target = Some(model);
            Ok(len)
        })
        .await?;
        let model = target.ok_or_else(|| Status::internal("push without a model"))?;
        let mode = match PushMode::try_from(h.mode) {
            Ok(PushMode::Grad) => Mode::Grad { scale: h.scale },
            Ok(PushMode::Average) => Mode::Average,
            Ok(PushMode::Replace) => Mode::Replace,
            Err(_) => return Err(Status::invalid_argument(format!("push mode {}", h.mode))),
        };
        let (applied, pushed) = model
            .push(h.round, h.worker, mode, values, h.after_round)
            .map_err(status)?;
        tracing::debug!(job = %h.job, name = %h.name, round = h.round, worker = h.worker, applied, pushed, "push");
        Ok(Response::new(proto::PushReply { applied, pushed }))
    }
}

#[tonic::async_trait]
impl ParameterServer for Service {
    async fn health(
        &self,
        _: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthReply>, Status> {
        Ok(Response::new(proto::HealthReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            models: self.store.len() as u64,
            uptime_s: self.started.elapsed().as_secs_f64(),
        }))
    }

    async fn register(
        &self,
        req: Request<Streaming<proto::RegisterChunk>>,
    ) -> Result<Response<proto::RegisterReply>, Status> {
        self.register_stream(req.into_inner()).await
    }

    async fn push(
        &self,
        req: Request<Streaming<proto::PushChunk>>,
    ) -> Result<Response<proto::PushReply>, Status> {
        self.push_stream(req.into_inner()).await
    }

    type PullStream = ValuesStream;

    async fn pull(
        &self,
        req: Request<proto::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let r = req.into_inner();
        let model = self.store.get(&r.job, &r.name).map_err(status)?;
        let Some(round) = r.round else {
            let (round, values) = model.current();
            let chunks = Arc::new(to_chunks(&values));
            return Ok(Response::new(values_stream(round, values.len(), chunks)));
        };
        let wait = Duration::from_millis(r.timeout_ms).min(MAX_PULL_WAIT);
        match model.pull(round, wait).await.map_err(status)? {
            Some(values) => {
                let chunks = model.encoded(round, &values);
                Ok(Response::new(values_stream(
                    Some(round),
                    values.len(),
                    chunks,
                )))
            }
            None => {
                let s = model.state.lock().expect("lock");
                Err(Status::deadline_exceeded(format!(
                    "round {round} of '{}' is incomplete after {wait:?}: {} of {} workers pushed",
                    r.name,
                    s.pushed(),
                    s.workers
                )))
            }
        }
    }

    async fn status(
        &self,
        _: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        let models = self
            .store
            .all()
            .iter()
            .map(|m| {
                let idle_s = m.idle().as_secs_f64();
                let s = m.state.lock().expect("lock");
                proto::ModelInfo {
                    job: s.job.clone(),
                    name: s.name.clone(),
                    len: s.values.len() as u64,
                    workers: s.workers,
                    completed_round: s.completed_round(),
                    open_round: s.open_round,
                    pushed: s.pushed(),
                    idle_s,
                    pushes: s.pushes,
                    pulls: s.pulls,
                    missing: s.missing(),
                }
            })
            .collect();
        Ok(Response::new(proto::StatusReply {
            models,
            uptime_s: self.started.elapsed().as_secs_f64(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn drop_job(
        &self,
        req: Request<proto::DropJobRequest>,
    ) -> Result<Response<proto::DropJobReply>, Status> {
        let job = req.into_inner().job;
        let gone = self.store.drop_job(&job);
        if !gone.is_empty() {
            tracing::info!(%job, models = gone.len(), "job dropped");
        }
        // A finished job's snapshots would otherwise be loaded again by a restarted server.
        if let Some(dir) = &self.dir {
            remove_snapshots(dir, &gone);
        }
        Ok(Response::new(proto::DropJobReply {
            dropped: gone.len() as u32,
        }))
    }
}

/// Models held, values held, pushes and pulls served (for the periodic log line).
fn holdings(store: &Store) -> (usize, usize, u64) {
    store.all().iter().fold((0, 0, 0), |(m, v, c), model| {
        let s = model.state.lock().expect("lock");
        (m + 1, v + s.values.len(), c + s.pushes + s.pulls)
    })
}

/// Compares in time independent of where the strings differ.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Where the snapshot of `(job, name)` lives.
fn snapshot_path(dir: &Path, job: &str, name: &str) -> PathBuf {
    dir.join(job).join(format!("{name}.model"))
}

/// Removes the snapshot files of `gone` models, and their job folders once empty.
fn remove_snapshots(dir: &Path, gone: &[(String, String)]) {
    for (job, name) in gone {
        let _ = std::fs::remove_file(snapshot_path(dir, job, name));
        let _ = std::fs::remove_dir(dir.join(job));
    }
}

/// Writes the snapshot of every model changed since the last one; removes the files of
/// models no longer held.
fn write_snapshots(store: &Store, dir: &Path, gone: &[(String, String)]) -> anyhow::Result<usize> {
    remove_snapshots(dir, gone);
    let mut written = 0;
    for m in store.all() {
        if !m.dirty.swap(false, Ordering::Relaxed) {
            continue;
        }
        let state = m.state.lock().expect("lock").clone();
        let path = snapshot_path(dir, &state.job, &state.name);
        let write = || -> anyhow::Result<()> {
            std::fs::create_dir_all(path.parent().expect("in a job dir"))?;
            let bytes = bincode::serde::encode_to_vec(&state, bincode::config::standard())?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        };
        if let Err(e) = write() {
            m.dirty.store(true, Ordering::Relaxed);
            return Err(e.context(format!("writing snapshot {}", path.display())));
        }
        // Dropped while it was being written: its snapshot must not outlive it.
        if store.get(&state.job, &state.name).is_err() {
            remove_snapshots(dir, &[(state.job.clone(), state.name.clone())]);
            continue;
        }
        written += 1;
    }
    Ok(written)
}

/// Loads every snapshot under `dir` into `store`.
fn load_snapshots(store: &Store, dir: &Path) -> anyhow::Result<usize> {
    let mut loaded = 0;
    let Ok(jobs) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    for job in jobs.flatten().filter(|e| e.path().is_dir()) {
        for file in std::fs::read_dir(job.path())?.flatten() {
            let path = file.path();
            if path.extension().is_none_or(|e| e != "model") {
                continue;
            }
            let decoded = std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| {
                    bincode::serde::decode_from_slice::<ModelState, _>(
                        &b,
                        bincode::config::standard(),
                    )
                    .map(|(s, _)| s)
                    .map_err(anyhow::Error::from)
                });
            match decoded {
                Ok(state) => {
                    store.restore(state);
                    loaded += 1;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "skipping unreadable snapshot: {e:#}")
                }
            }
        }
    }
    Ok(loaded)
}

/// Runs the server until Ctrl-C or SIGTERM. `on_listening` gets the bound address (the
/// real port when port 0 was asked for).
pub async fn serve(
    opts: ServeOptions,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let store = Arc::new(Store::with_limit(opts.limits.max_total_values));
    if let Some(dir) = &opts.dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let n = load_snapshots(&store, dir)?;
        tracing::info!(dir = %dir.display(), models = n, "snapshots loaded");
    }
    let listener = tokio::net::TcpListener::bind(&opts.addr)
        .await
        .with_context(|| format!("listening on {}", opts.addr))?;
    let local = listener.local_addr()?;
    on_listening(local);
    tracing::info!(addr = %local, auth = opts.token.is_some(), "parameter server listening");
    if opts.token.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            addr = %local,
            "no --token: anyone who reaches this address can read and change the models"
        );
    }

    let maintenance = {
        let (store, opts) = (store.clone(), opts.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(opts.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = (0, 0, 0);
            loop {
                tick.tick().await;
                let held = holdings(&store);
                if held != last {
                    let (models, values, calls) = held;
                    tracing::info!(
                        models,
                        megabytes = values as f64 * 4.0 / 1e6,
                        pushes_and_pulls = calls,
                        "holding"
                    );
                    last = held;
                }
                let gone = store.expire(opts.expired);
                for (job, name) in &gone {
                    tracing::info!(%job, %name, "model expired");
                }
                if let Some(dir) = &opts.dir {
                    let (store, dir) = (store.clone(), dir.clone());
                    match tokio::task::spawn_blocking(move || write_snapshots(&store, &dir, &gone))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => tracing::debug!(models = n, "snapshots written"),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!("{e:#}"),
                        Err(e) => tracing::error!("snapshot task failed: {e}"),
                    }
                }
            }
        })
    };

    let service = Service {
        store: store.clone(),
        started: Instant::now(),
        limits: opts.limits,
        dir: opts.dir.clone(),
    };
    let token = opts.token.clone();
    let auth = move |req: Request<()>| -> Result<Request<()>, Status> {
        let Some(want) = &token else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if same_token(t.as_bytes(), want.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("wrong parameter-server token")),
            None => Err(Status::unauthenticated(
                "this parameter server needs a token (--ps-token or LAMBDAML_PS_TOKEN)",
            )),
        }
    };
    let svc = tonic::service::interceptor::InterceptedService::new(
        ParameterServerServer::new(service)
            .max_decoding_message_size(4 * super::CHUNK_BYTES)
            .max_encoding_message_size(4 * super::CHUNK_BYTES),
        auth,
    );
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(CALLS_PER_CONNECTION)
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .timeout(CALL_TIMEOUT)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(svc)
        .serve_with_incoming_shutdown(
            // Small pushes and pulls must not wait for Nagle's algorithm (40 ms per round).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown_signal(),
        )
        .await
        .context("serving")?;
    maintenance.abort();
    if let Some(dir) = &opts.dir {
        let n = write_snapshots(&store, dir, &[])?;
        tracing::info!(models = n, "final snapshots written");
    }
    tracing::info!("parameter server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A service holding at most 1,000 values per model and 3,000 in all.
    fn small_service() -> Service {
        let limits = Limits {
            max_model_values: 1000,
            max_total_values: 3000,
        };
        Service {
            store: Arc::new(Store::with_limit(limits.max_total_values)),
            started: Instant::now(),
            limits,
            dir: None,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn register_chunks(
        header: Option<proto::RegisterHeader>,
        slices: &[usize],
    ) -> Vec<Result<proto::RegisterChunk, Status>> {
        slices
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                Ok(proto::RegisterChunk {
                    header: if i == 0 { header.clone() } else { None },
                    data: bytes::Bytes::from(vec![0u8; n]),
                })
            })
            .collect()
    }

    #[test]
    fn announced_sizes_are_checked_before_anything_is_allocated() {
        let svc = small_service();
        let header = |len: u64| proto::RegisterHeader {
            job: "j".into(),
            name: "m".into(),
            workers: 1,
            len,
        };
        // An enormous announced length (once an abort of the whole server) is refused.
        let chunks = register_chunks(Some(header(u64::MAX)), &[0]);
        let err = block_on(svc.register_stream(tokio_stream::iter(chunks))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
        // More data than announced is refused at the chunk that brings it.
        let chunks = register_chunks(Some(header(10)), &[40, 4]);
        let err = block_on(svc.register_stream(tokio_stream::iter(chunks))).unwrap_err();
        assert!(
            err.message().contains("more values than the 10 announced"),
            "{err}"
        );
        // Three models of 1,000 fit; a fourth does not.
        for name in ["a", "b", "c", "d"] {
            let h = proto::RegisterHeader {
                name: name.into(),
                ..header(1000)
            };
            let r =
                block_on(svc.register_stream(tokio_stream::iter(register_chunks(Some(h), &[0]))));
            assert_eq!(r.is_ok(), name != "d", "{name}: {r:?}");
        }
        assert_eq!(svc.store.total_values(), 3000);
        // A push to a model that does not exist is refused at its header.
        let push = proto::PushChunk {
            header: Some(proto::PushHeader {
                job: "j".into(),
                name: "nope".into(),
                len: 5,
                ..Default::default()
            }),
            data: bytes::Bytes::from(vec![0u8; 20]),
        };
        let err = block_on(svc.push_stream(tokio_stream::iter(vec![Ok(push)]))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Arbitrary headers and slices never panic the server, never make it hold more than
        /// its limit, and never leave a buffer beyond the model cap.
        #[test]
        fn hostile_streams_are_refused_without_panic_or_excess(
            announced in prop_oneof![0u64..2000, any::<u64>()],
            workers in 0u32..3,
            slices in proptest::collection::vec(0usize..6000, 0..5),
            header_first in any::<bool>(),
            push_len in prop_oneof![0u64..2000, any::<u64>()],
            mode in -1i32..4,
            round in 0u64..3,
            worker in 0u32..3,
        ) {
            let svc = small_service();
            let header = proto::RegisterHeader {
                job: "j".into(),
                name: "m".into(),
                workers,
                len: announced,
            };
            let mut chunks = register_chunks(Some(header), &slices);
            if !header_first && !chunks.is_empty() {
                chunks.rotate_left(1);
            }
            let _ = block_on(svc.register_stream(tokio_stream::iter(chunks)));
            prop_assert!(svc.store.total_values() <= 3000);
            let pushes: Vec<Result<proto::PushChunk, Status>> = slices
                .iter()
                .enumerate()
                .map(|(i, &n)| Ok(proto::PushChunk {
                    header: (i == 0).then(|| proto::PushHeader {
                        job: "j".into(),
                        name: "m".into(),
                        round,
                        worker,
                        mode,
                        scale: 1.0,
                        len: push_len,
                        after_round: None,
                    }),
                    data: bytes::Bytes::from(vec![0u8; n]),
                }))
                .collect();
            let _ = block_on(svc.push_stream(tokio_stream::iter(pushes)));
            prop_assert!(svc.store.total_values() <= 3000);
            // The stream reader alone: whatever it is fed, its buffer stays within the cap.
            let chunks = register_chunks(
                Some(proto::RegisterHeader { len: announced, ..Default::default() }),
                &slices,
            );
            let got = block_on(receive(tokio_stream::iter(chunks), |h: &proto::RegisterHeader| {
                usize::try_from(h.len)
                    .ok()
                    .filter(|&l| l <= 1000)
                    .ok_or_else(|| Status::resource_exhausted("too large"))
            }));
            if let Ok((_, values)) = got {
                prop_assert!(values.capacity() <= 1000 && values.len() <= 1000);
            }
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"secret", b"secret"));
        assert!(!same_token(b"secret", b"secreT"));
        assert!(!same_token(b"secret", b"secret2"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("job id", "20261124-lr-grad_avg-ps-ab12").is_ok());
        assert!(check_name("job id", "../etc").is_err());
        assert!(check_name("job id", "").is_err());
        assert!(check_name("job id", "a/b").is_err());
    }

    #[test]
    fn snapshots_round_trip_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::default();
        let (_, m) = store
            .register(ModelState::new("job", "m", 2, vec![1.0, 2.0]))
            .unwrap();
        m.push(0, 1, Mode::Average, vec![3.0, 4.0], None).unwrap();
        assert_eq!(write_snapshots(&store, dir.path(), &[]).unwrap(), 1);
        assert_eq!(
            write_snapshots(&store, dir.path(), &[]).unwrap(),
            0,
            "clean"
        );
        let back = Store::default();
        assert_eq!(load_snapshots(&back, dir.path()).unwrap(), 1);
        let restored = back.get("job", "m").unwrap();
        assert_eq!(*restored.state.lock().unwrap(), *m.state.lock().unwrap());
        let gone = store.drop_job("job");
        write_snapshots(&store, dir.path(), &gone).unwrap();
        assert_eq!(load_snapshots(&Store::default(), dir.path()).unwrap(), 0);
    }
}

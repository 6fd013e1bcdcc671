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
}

/// The service.
#[derive(Debug)]
pub struct Service {
    store: Arc<Store>,
    started: Instant,
    /// Where snapshots are written, if anywhere: a dropped job's go with it.
    dir: Option<PathBuf>,
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::Invalid(m) => Status::invalid_argument(m),
        StoreError::OutOfOrder(m) => Status::failed_precondition(m),
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

/// Reads a client stream: the first header and all the values (`capacity` says how many to
/// expect from the header).
async fn receive<C: Chunk>(
    mut stream: Streaming<C>,
    capacity: impl Fn(&C::Header) -> usize,
) -> Result<(Option<C::Header>, Vec<f32>), Status> {
    let mut header = None;
    let mut values = Vec::new();
    while let Some(chunk) = stream.next().await {
        let (h, data) = chunk?.into_parts();
        if header.is_none() {
            if let Some(h) = &h {
                // Capped: the header is the client's word, the data is what counts.
                values.reserve(capacity(h).min(1 << 26));
            }
            header = h;
        }
        extend_from_bytes(&mut values, &data).map_err(Status::invalid_argument)?;
    }
    Ok((header, values))
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
        let (header, mut values) = receive(req.into_inner(), |_| 0).await?;
        let h = header.ok_or_else(|| Status::invalid_argument("register without a header"))?;
        check_name("job id", &h.job)?;
        check_name("model name", &h.name)?;
        if h.workers == 0 {
            return Err(Status::invalid_argument(
                "a model needs at least one worker",
            ));
        }
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

    async fn push(
        &self,
        req: Request<Streaming<proto::PushChunk>>,
    ) -> Result<Response<proto::PushReply>, Status> {
        let (header, values) = receive(req.into_inner(), |h| h.len as usize).await?;
        let h = header.ok_or_else(|| Status::invalid_argument("push without a header"))?;
        let mode = match PushMode::try_from(h.mode) {
            Ok(PushMode::Grad) => Mode::Grad { scale: h.scale },
            Ok(PushMode::Average) => Mode::Average,
            Ok(PushMode::Replace) => Mode::Replace,
            Err(_) => return Err(Status::invalid_argument(format!("push mode {}", h.mode))),
        };
        let model = self.store.get(&h.job, &h.name).map_err(status)?;
        let (applied, pushed) = model
            .push(h.round, h.worker, mode, values, h.after_round)
            .map_err(status)?;
        tracing::debug!(job = %h.job, name = %h.name, round = h.round, worker = h.worker, applied, pushed, "push");
        Ok(Response::new(proto::PushReply { applied, pushed }))
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
    let store = Arc::new(Store::default());
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

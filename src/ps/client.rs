//! A client of the parameter server: what workers, the driver and `lambdaml ps status` use.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::proto::parameter_server_client::ParameterServerClient;
use super::proto::{self, PushMode};
use super::store::Mode;
use super::{CHUNK_BYTES, TOKEN_HEADER, endpoint_url, extend_from_bytes, to_chunks};

/// A failed call, with the server and the call named.
#[derive(Debug, thiserror::Error)]
pub enum PsError {
    /// The server could not be reached.
    #[error("parameter server {addr} is unreachable: {message}")]
    Unreachable {
        /// The server.
        addr: String,
        /// Why.
        message: String,
    },
    /// The server answered with an error.
    #[error("parameter server {addr}: {op} failed: {} ({:?})", status.message(), status.code())]
    Rpc {
        /// The server.
        addr: String,
        /// The call.
        op: &'static str,
        /// The server's answer.
        status: Box<Status>,
    },
}

impl PsError {
    /// True for errors a retry may cure (the server restarting, a dropped connection).
    pub fn is_transient(&self) -> bool {
        match self {
            PsError::Unreachable { .. } => true,
            PsError::Rpc { status, .. } => {
                matches!(status.code(), Code::Unavailable | Code::Unknown)
                    && !status.message().contains("token")
            }
        }
    }
}

/// Adds the bearer token to every call.
#[derive(Debug, Clone)]
pub struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(TOKEN_HEADER, v.clone());
        }
        Ok(req)
    }
}

/// A connection to one parameter server.
#[derive(Debug, Clone)]
pub struct PsClient {
    addr: String,
    inner: ParameterServerClient<InterceptedService<Channel, Auth>>,
}

/// What a pull returned: the round it belongs to and the values.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    /// The completed round the values belong to (none: never completed one).
    pub round: Option<u64>,
    /// The values.
    pub values: Vec<f32>,
}

impl PsClient {
    /// Connects to `addr` (`HOST:PORT`), sending `token` with every call.
    pub async fn connect(addr: &str, token: Option<&str>) -> Result<Self, PsError> {
        let unreachable = |message: String| PsError::Unreachable {
            addr: addr.to_string(),
            message,
        };
        let auth = match token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| unreachable("the token must be printable ASCII".into()))?,
            ),
            None => None,
        };
        let channel = Endpoint::from_shared(endpoint_url(addr))
            .map_err(|e| unreachable(format!("bad address: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| unreachable(format!("{e}: is `lambdaml ps serve` running there?")))?;
        let inner = ParameterServerClient::with_interceptor(channel, Auth(auth))
            .max_decoding_message_size(4 * CHUNK_BYTES)
            .max_encoding_message_size(4 * CHUNK_BYTES);
        Ok(PsClient {
            addr: addr.to_string(),
            inner,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn err(&self, op: &'static str) -> impl Fn(Status) -> PsError + '_ {
        move |status| PsError::Rpc {
            addr: self.addr.clone(),
            op,
            status: Box::new(status),
        }
    }

    /// Version, model count and uptime.
    pub async fn health(&mut self) -> Result<proto::HealthReply, PsError> {
        let mut c = self.inner.clone();
        c.health(proto::HealthRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(self.err("health"))
    }

    /// Creates `(job, name)` with `initial` values (`None`: `len` zeros) unless it exists.
    pub async fn register(
        &mut self,
        job: &str,
        name: &str,
        workers: u32,
        len: usize,
        initial: Option<&[f32]>,
    ) -> Result<proto::RegisterReply, PsError> {
        let header = proto::RegisterHeader {
            job: job.to_string(),
            name: name.to_string(),
            workers,
            len: len as u64,
        };
        let chunks = to_chunks(initial.unwrap_or(&[]));
        let msgs = chunks
            .into_iter()
            .enumerate()
            .map(move |(i, data)| proto::RegisterChunk {
                header: (i == 0).then(|| header.clone()),
                data,
            });
        let mut c = self.inner.clone();
        c.register(tokio_stream::iter(msgs))
            .await
            .map(|r| r.into_inner())
            .map_err(self.err("register"))
    }

    /// Pushes this worker's contribution to `round`; `after_round` is the round it pushed to
    /// this model before, if known (the server then detects rounds it lost).
    #[allow(clippy::too_many_arguments)]
    pub async fn push(
        &mut self,
        job: &str,
        name: &str,
        round: u64,
        worker: u32,
        mode: Mode,
        values: &[f32],
        after_round: Option<u64>,
    ) -> Result<proto::PushReply, PsError> {
        let (mode, scale) = match mode {
            Mode::Grad { scale } => (PushMode::Grad, scale),
            Mode::Average => (PushMode::Average, 1.0),
            Mode::Replace => (PushMode::Replace, 1.0),
        };
        let header = proto::PushHeader {
            job: job.to_string(),
            name: name.to_string(),
            round,
            worker,
            mode: mode as i32,
            scale,
            len: values.len() as u64,
            after_round,
        };
        let msgs = to_chunks(values)
            .into_iter()
            .enumerate()
            .map(move |(i, data)| proto::PushChunk {
                header: (i == 0).then(|| header.clone()),
                data,
            });
        let mut c = self.inner.clone();
        c.push(tokio_stream::iter(msgs))
            .await
            .map(|r| r.into_inner())
            .map_err(self.err("push"))
    }

    /// The model at the end of `round` (`None`: its current values), waiting up to
    /// `timeout`. `Ok(None)`: the round did not complete in time.
    pub async fn pull(
        &mut self,
        job: &str,
        name: &str,
        round: Option<u64>,
        timeout: Duration,
    ) -> Result<Option<Pulled>, PsError> {
        let req = proto::PullRequest {
            job: job.to_string(),
            name: name.to_string(),
            round,
            timeout_ms: timeout.as_millis() as u64,
        };
        let mut c = self.inner.clone();
        let mut stream = match c.pull(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::DeadlineExceeded => return Ok(None),
            Err(s) => return Err(self.err("pull")(s)),
        };
        let mut out = Pulled {
            round: None,
            values: Vec::new(),
        };
        let mut first = true;
        while let Some(chunk) = stream.message().await.map_err(self.err("pull"))? {
            if first {
                out.round = chunk.round;
                out.values.reserve(chunk.len as usize);
                first = false;
            }
            extend_from_bytes(&mut out.values, &chunk.data)
                .map_err(|m| self.err("pull")(Status::data_loss(m)))?;
        }
        Ok(Some(out))
    }

    /// Every model the server holds.
    pub async fn status(&mut self) -> Result<proto::StatusReply, PsError> {
        let mut c = self.inner.clone();
        c.status(proto::StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(self.err("status"))
    }

    /// Deletes every model of `job`; returns how many there were.
    pub async fn drop_job(&mut self, job: &str) -> Result<u32, PsError> {
        let mut c = self.inner.clone();
        c.drop_job(proto::DropJobRequest {
            job: job.to_string(),
        })
        .await
        .map(|r| r.into_inner().dropped)
        .map_err(self.err("drop_job"))
    }
}

/// The status reply as a table (`lambdaml ps status`).
pub fn render_status(s: &proto::StatusReply) -> String {
    let mut out = format!(
        "parameter server {}, up {:.0} s, {} models\n",
        s.version,
        s.uptime_s,
        s.models.len()
    );
    if s.models.is_empty() {
        return out;
    }
    out.push_str(&format!(
        "{:<40} {:<16} {:>10} {:>10} {:>8} {:>9} {:>8} {:>8} {:>8}\n",
        "job", "model", "values", "MB", "workers", "completed", "pushed", "idle s", "pulls"
    ));
    for m in &s.models {
        let completed = m
            .completed_round
            .map_or_else(|| "-".to_string(), |r| r.to_string());
        out.push_str(&format!(
            "{:<40} {:<16} {:>10} {:>10.3} {:>8} {:>9} {:>8} {:>8.1} {:>8}\n",
            m.job,
            m.name,
            m.len,
            m.len as f64 * 4.0 / 1e6,
            m.workers,
            completed,
            format!("{}/{}", m.pushed, m.workers),
            m.idle_s,
            m.pulls
        ));
    }
    out
}

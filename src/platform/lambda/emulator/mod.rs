//! A local AWS Lambda for one function, faithful where a training job can tell: tests start
//! it and point the real AWS SDK at it (`AWS_ENDPOINT_URL_LAMBDA`), and users can run it by
//! hand (`lambdaml lambda emulate`).
//!
//! What it does as Lambda does (and the emulators that install here do not, see
//! `lambda-facts.md`):
//! - the Invoke API: `Event` answers 202 at once and queues the event; `RequestResponse`
//!   waits for the function's answer (and is throttled with 429 when every instance is
//!   busy at the function's concurrency); an unknown function is a 404
//!   `ResourceNotFoundException`; `GetFunctionConfiguration` and `GetFunctionConcurrency`
//!   answer with the function's settings;
//! - instances: up to `concurrency` processes of the function's binary, each with its own
//!   Runtime API endpoint (`next`, `response`, `error`, `init/error`) and the Lambda
//!   environment variables; started on demand (cold starts), reused between invocations
//!   (warm starts);
//! - limits: the deadline header is the real deadline; an instance still busy at its
//!   deadline is killed (`Task timed out`) and replaced on demand; one that uses more memory
//!   than the function's is killed too.
//!
//! Failed `Event` invocations are not retried (as a function deployed by `lambdaml lambda
//! deploy`, which sets `MaximumRetryAttempts` to 0).

mod control;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::sync::{mpsc, oneshot};

/// Largest `Event` payload Lambda accepts.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Largest `RequestResponse` payload Lambda accepts.
pub const MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;
/// How often an instance's memory is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// The function the emulator serves, and where.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// The function's name (invocations of any other name are a 404).
    pub function: String,
    /// Instances that may run at once (the function's reserved concurrency).
    pub concurrency: usize,
    /// Where each instance's stdout and stderr go (`instance-N.log`), and deployed code;
    /// output is inherited and code goes to the temporary directory if `None`.
    pub log_dir: Option<PathBuf>,
    /// Address of the Invoke API (port 0 picks a free one).
    pub addr: SocketAddr,
    /// The function as deployed; `None`: there is none until `CreateFunction` (`lambdaml
    /// lambda deploy`) creates it.
    pub deployed: Option<FunctionConfig>,
}

/// A deployed function's code and settings.
#[derive(Debug, Clone)]
pub struct FunctionConfig {
    /// The binary each instance runs (Lambda's `bootstrap`).
    pub exe: PathBuf,
    /// How long one invocation may run.
    pub timeout: Duration,
    /// Memory of each instance, in MB: one that uses more is killed.
    pub memory_mb: u32,
    /// Environment variables of its instances.
    pub env: Vec<(String, String)>,
    /// The role it runs as (recorded, not enforced).
    pub role: String,
    /// The architecture it was deployed for.
    pub arch: String,
}

/// Largest unzipped `bootstrap` Lambda runs.
const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;
/// Largest request of the control plane: a base64 zip of Lambda's 50 MB upload limit.
const MAX_UPLOAD_BYTES: usize = 70 * 1024 * 1024;

/// What the emulator has done so far (`GET /_emulator/stats`), for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Stats {
    /// Instances started (each a cold start).
    pub cold_starts: u64,
    /// Invocations handed to an instance.
    pub invocations: u64,
    /// Invocations that ended with an answer from the function.
    pub completed: u64,
    /// Invocations whose instance was killed at the timeout.
    pub timeouts: u64,
    /// Instances killed for using more than the function's memory.
    pub out_of_memory: u64,
    /// Invocations lost with an instance that exited by itself.
    pub crashed: u64,
    /// Synchronous invocations refused with 429.
    pub throttled: u64,
    /// Instances alive now.
    pub instances: usize,
}

/// Answers the emulator can give a synchronous caller.
enum Answer {
    Ok(Bytes),
    /// The function failed: Lambda answers 200 with `X-Amz-Function-Error` and this body.
    FunctionError(Bytes),
}

/// An invocation waiting for an instance.
struct Pending {
    request_id: String,
    payload: Bytes,
    /// The synchronous caller, if any.
    reply: Option<oneshot::Sender<Answer>>,
}

/// An invocation an instance is running.
struct Running {
    instance: u64,
    reply: Option<oneshot::Sender<Answer>>,
    started: Instant,
}

/// Why the emulator ends an instance.
#[derive(Debug, Clone, Copy)]
enum Kill {
    Timeout,
    /// The function's code or configuration changed.
    Retired,
}

struct InstanceHandle {
    /// True from its start, and from each answer it gives, until its next `next`: an
    /// instance about to ask for work, which a queued event can wait for.
    arriving: bool,
    /// The request it is running.
    current: Option<String>,
    kill: Option<oneshot::Sender<Kill>>,
    /// The function version it runs: an older one is retired at its next `next`.
    version: u64,
    /// True once it has asked for work: one that ends before failed to start.
    asked: bool,
}

/// Everything that changes, under one lock (never held across an await).
#[derive(Default)]
struct Book {
    /// Events queued and not yet taken by an instance.
    pending: usize,
    /// Instances blocked in `next`.
    waiting: usize,
    /// Instances started, or done with an invocation, that have not called `next` yet.
    arriving: usize,
    instances: HashMap<u64, InstanceHandle>,
    running: HashMap<String, Running>,
    stats: Stats,
    /// The function, once deployed, and its version (one per code or configuration
    /// change).
    function: Option<FunctionConfig>,
    version: u64,
    /// What `PutFunctionEventInvokeConfig` set (recorded; failed events are never retried).
    invoke_config: Option<serde_json::Value>,
}

struct Emulator {
    opts: EmulatorOptions,
    /// The Invoke API's URL, given to instances so that a function invoking itself comes
    /// back here.
    url: String,
    arn: String,
    queue: mpsc::UnboundedSender<Pending>,
    inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Pending>>,
    book: Mutex<Book>,
    ids: AtomicU64,
}

/// Serves the Invoke API on `opts.addr` until the process ends; `ready` is called with the
/// bound address once it accepts requests.
pub async fn serve(opts: EmulatorOptions, ready: impl FnOnce(SocketAddr)) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.addr).await?;
    let addr = listener.local_addr()?;
    if let Some(dir) = &opts.log_dir {
        std::fs::create_dir_all(dir)?;
    }
    let (queue, inbox) = mpsc::unbounded_channel();
    let book = Book {
        function: opts.deployed.clone(),
        ..Book::default()
    };
    let emulator = Arc::new(Emulator {
        url: format!("http://{addr}"),
        arn: format!(
            "arn:aws:lambda:{}:000000000000:function:{}",
            std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
            opts.function
        ),
        opts,
        queue,
        inbox: tokio::sync::Mutex::new(inbox),
        book: Mutex::new(book),
        ids: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/2015-03-31/functions/{name}/invocations", post(invoke))
        .route(
            "/2015-03-31/functions/{name}/configuration",
            get(configuration).put(control::update_configuration),
        )
        .route("/2019-09-30/functions/{name}/concurrency", get(concurrency))
        .route("/_emulator/stats", get(stats))
        .route("/2015-03-31/functions", post(control::create))
        .route("/2015-03-31/functions/{name}", get(control::get_function))
        .route(
            "/2015-03-31/functions/{name}/code",
            put(control::update_code),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config",
            put(control::put_invoke_config),
        )
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
        .with_state(emulator);
    ready(addr);
    // On SIGTERM or Ctrl-C, return: the runtime then drops every instance's task, and with
    // it the instance (killed on drop), so none outlives the emulator.
    tokio::select! {
        served = axum::serve(listener, app) => served,
        () = stopped() => Ok(()),
    }
}

async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stopping: ending every instance");
}

/// The function name in a name, a partial ARN or an ARN, without its qualifier.
fn function_name(name: &str) -> &str {
    let unqualified = super::unqualified(name);
    unqualified.rsplit(':').next().unwrap_or(unqualified)
}

/// An AWS error response, as the SDK parses it (restJson1).
fn aws_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "Type": "User", "Message": message }).to_string();
    let mut headers = HeaderMap::new();
    headers.insert("x-amzn-errortype", HeaderValue::from_str(code).unwrap());
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (status, headers, body).into_response()
}

impl Emulator {
    /// Lambda's 404 when `name` is not this function.
    fn unknown(&self, name: &str) -> Option<Response> {
        if function_name(name) == self.opts.function && self.function().is_some() {
            return None;
        }
        Some(aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!(
                "Function not found: {}",
                self.arn.replace(&self.opts.function, function_name(name))
            ),
        ))
    }

    /// The deployed function and its version.
    fn function(&self) -> Option<(FunctionConfig, u64)> {
        let book = self.book.lock().unwrap();
        book.function.clone().map(|f| (f, book.version))
    }

    /// Installs a new function (or a new version of it): instances of older versions are
    /// retired when they next ask for work.
    fn install(&self, f: FunctionConfig) {
        let mut book = self.book.lock().unwrap();
        book.function = Some(f);
        book.version += 1;
    }

    fn request_id(&self) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-0000-4000-8000-{n:012x}", std::process::id())
    }

    /// Queues an event and starts an instance for it if none is free.
    fn enqueue(self: &Arc<Self>, pending: Pending) {
        self.book.lock().unwrap().pending += 1;
        // The receiver lives as long as the emulator.
        let _ = self.queue.send(pending);
        self.scale();
    }

    /// Starts instances while queued events outnumber the instances that will take them,
    /// up to the concurrency.
    fn scale(self: &Arc<Self>) {
        let mut book = self.book.lock().unwrap();
        while book.pending > book.waiting + book.arriving
            && book.instances.len() < self.opts.concurrency
        {
            let id = book.stats.cold_starts;
            book.stats.cold_starts += 1;
            book.arriving += 1;
            let (kill, killed) = oneshot::channel();
            let version = book.version;
            book.instances.insert(
                id,
                InstanceHandle {
                    arriving: true,
                    current: None,
                    kill: Some(kill),
                    version,
                    asked: false,
                },
            );
            tokio::spawn(run_instance(self.clone(), id, killed));
        }
        book.stats.instances = book.instances.len();
    }

    /// Called when instance `id` has ended: fails what it was running, and starts another
    /// if events wait.
    fn instance_ended(self: &Arc<Self>, id: u64, why: &str, killed: Option<Kill>) {
        let mut failed_start = false;
        {
            let mut book = self.book.lock().unwrap();
            if let Some(handle) = book.instances.remove(&id) {
                failed_start = !handle.asked && killed.is_none();
                if handle.arriving {
                    book.arriving -= 1;
                }
                if let Some(rid) = handle.current
                    && let Some(run) = book.running.remove(&rid)
                {
                    match killed {
                        Some(Kill::Timeout) => book.stats.timeouts += 1,
                        Some(Kill::Retired) => {}
                        None if why.contains("memory") => book.stats.out_of_memory += 1,
                        None => book.stats.crashed += 1,
                    }
                    tracing::warn!(request_id = %rid, instance = id, "{why}");
                    let body = serde_json::json!({
                        "errorType": "Runtime.ExitError", "errorMessage": why,
                    });
                    if let Some(reply) = run.reply {
                        let _ = reply.send(Answer::FunctionError(body.to_string().into()));
                    }
                }
            }
            book.stats.instances = book.instances.len();
        }
        if failed_start {
            self.fail_one_queued(why);
        }
        self.scale();
    }

    /// An instance that cannot start fails one queued event, as Lambda fails an invocation
    /// whose runtime does not start (instead of starting instances for it forever).
    fn fail_one_queued(&self, why: &str) {
        let Ok(mut inbox) = self.inbox.try_lock() else {
            // An instance is waiting for work: it will take the event.
            return;
        };
        let Ok(event) = inbox.try_recv() else {
            return;
        };
        drop(inbox);
        {
            let mut book = self.book.lock().unwrap();
            book.pending -= 1;
            book.stats.crashed += 1;
        }
        tracing::error!(request_id = %event.request_id, "the function did not start: {why}");
        if let Some(reply) = event.reply {
            let body = serde_json::json!({
                "errorType": "Runtime.InitError",
                "errorMessage": format!("the function did not start: {why}"),
            });
            let _ = reply.send(Answer::FunctionError(body.to_string().into()));
        }
    }

    /// Ends instance `id` for `why`, if it still runs `request_id`.
    fn kill_if_running(&self, id: u64, request_id: &str, why: Kill) {
        let mut book = self.book.lock().unwrap();
        if let Some(handle) = book.instances.get_mut(&id)
            && handle.current.as_deref() == Some(request_id)
            && let Some(kill) = handle.kill.take()
        {
            let _ = kill.send(why);
        }
    }
}

/// Starts one instance with its own Runtime API, watches it, and cleans up after it.
async fn run_instance(emu: Arc<Emulator>, id: u64, killed: oneshot::Receiver<Kill>) {
    let why = match start_and_watch(&emu, id, killed).await {
        Ok((why, kill)) => {
            emu.instance_ended(id, &why, kill);
            return;
        }
        Err(e) => format!("the instance could not start: {e}"),
    };
    tracing::error!(instance = id, "{why}");
    emu.instance_ended(id, &why, None);
}

async fn start_and_watch(
    emu: &Arc<Emulator>,
    id: u64,
    mut killed: oneshot::Receiver<Kill>,
) -> std::io::Result<(String, Option<Kill>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = listener.local_addr()?;
    let runtime_api = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(respond),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state((emu.clone(), id));
    let server = tokio::spawn(async move { axum::serve(listener, runtime_api).await });
    // Aborted however this function returns: the instance's endpoint goes with it.
    let _server = AbortOnDrop(server);

    let o = &emu.opts;
    let Some((f, _)) = emu.function() else {
        return Ok(("the function was deleted".into(), None));
    };
    let mut cmd = tokio::process::Command::new(&f.exe);
    cmd.env("AWS_LAMBDA_RUNTIME_API", api.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", &o.function)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", f.memory_mb.to_string())
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", o.function),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", format!("instance-{id}"))
        .env("AWS_ENDPOINT_URL_LAMBDA", &emu.url)
        .env("_HANDLER", "bootstrap")
        .env_remove(super::super::DEADLINE_ENV)
        .envs(f.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if std::env::var_os("AWS_REGION").is_none() {
        cmd.env("AWS_REGION", "us-east-1");
    }
    // Lambda gives every instance its role's credentials; here, the emulator's own, or
    // placeholders that local servers accept.
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        cmd.env("AWS_ACCESS_KEY_ID", "local")
            .env("AWS_SECRET_ACCESS_KEY", "local");
    }
    if let Some(dir) = &o.log_dir {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("instance-{id}.log")))?;
        cmd.stdout(log.try_clone()?).stderr(log);
    }
    let mut child = cmd.spawn()?;
    tracing::info!(instance = id, "cold start");
    let pid = child.id().unwrap_or_default();
    let limit_kb = u64::from(f.memory_mb) * 1024;
    let mut watch = tokio::time::interval(WATCH_EVERY);
    let mut kill = None;
    let why = loop {
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                break match kill {
                    Some(Kill::Timeout) => format!(
                        "Task timed out after {:.2} seconds", f.timeout.as_secs_f64()),
                    Some(Kill::Retired) => "retired: the function changed".to_string(),
                    None => format!("Runtime exited: {status}"),
                };
            }
            why = &mut killed, if kill.is_none() => {
                let Ok(why) = why else { continue };
                kill = Some(why);
                child.start_kill()?;
            }
            _ = watch.tick() => {
                let over = crate::platform::local::memory_of(pid)
                    .is_some_and(|m| m.resident_kb > limit_kb);
                if over && kill.is_none() {
                    child.start_kill()?;
                    let _ = child.wait().await;
                    break format!(
                        "Runtime exited: the instance used more memory than its {} MB \
                         (Runtime.OutOfMemory)", f.memory_mb);
                }
            }
        }
    };
    Ok((why, kill))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Milliseconds since the Unix epoch of `t`.
fn epoch_ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

async fn invoke(
    State(emu): State<Arc<Emulator>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    payload: Bytes,
) -> Response {
    if let Some(r) = emu.unknown(&name) {
        return r;
    }
    let kind = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    let request_id = emu.request_id();
    match kind {
        "Event" => {
            if payload.len() > MAX_EVENT_BYTES {
                return aws_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLargeException",
                    &format!(
                        "Request must be smaller than {MAX_EVENT_BYTES} bytes for the \
                         InvokeAsync operation"
                    ),
                );
            }
            emu.enqueue(Pending {
                request_id: request_id.clone(),
                payload,
                reply: None,
            });
            (
                StatusCode::ACCEPTED,
                [("x-amzn-requestid", request_id.as_str())],
            )
                .into_response()
        }
        "RequestResponse" => {
            {
                let mut book = emu.book.lock().unwrap();
                let free = book.waiting + book.arriving > book.pending
                    || book.instances.len() < emu.opts.concurrency;
                if !free {
                    book.stats.throttled += 1;
                    drop(book);
                    return aws_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "TooManyRequestsException",
                        "Rate Exceeded. (ReservedFunctionConcurrentInvocationLimitExceeded)",
                    );
                }
            }
            let (reply, answer) = oneshot::channel();
            emu.enqueue(Pending {
                request_id: request_id.clone(),
                payload,
                reply: Some(reply),
            });
            let mut headers = HeaderMap::new();
            headers.insert(
                "x-amzn-requestid",
                HeaderValue::from_str(&request_id).unwrap(),
            );
            headers.insert(
                "x-amz-executed-version",
                HeaderValue::from_static("$LATEST"),
            );
            match answer.await {
                Ok(Answer::Ok(body)) => (StatusCode::OK, headers, body).into_response(),
                Ok(Answer::FunctionError(body)) => {
                    headers.insert(
                        "x-amz-function-error",
                        HeaderValue::from_static("Unhandled"),
                    );
                    (StatusCode::OK, headers, body).into_response()
                }
                Err(_) => aws_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ServiceException",
                    "the invocation was lost",
                ),
            }
        }
        "DryRun" => StatusCode::NO_CONTENT.into_response(),
        other => aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("unknown invocation type {other}"),
        ),
    }
}

async fn configuration(State(emu): State<Arc<Emulator>>, Path(name): Path<String>) -> Response {
    if let Some(r) = emu.unknown(&name) {
        return r;
    }
    control::describe(&emu)
}

async fn concurrency(State(emu): State<Arc<Emulator>>, Path(name): Path<String>) -> Response {
    if let Some(r) = emu.unknown(&name) {
        return r;
    }
    let body = serde_json::json!({ "ReservedConcurrentExecutions": emu.opts.concurrency });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

async fn stats(State(emu): State<Arc<Emulator>>) -> Response {
    let (stats, invoke_config) = {
        let book = emu.book.lock().unwrap();
        (book.stats, book.invoke_config.clone())
    };
    let mut body = serde_json::to_value(stats).unwrap();
    body["invoke_config"] = invoke_config.unwrap_or_default();
    ([("content-type", "application/json")], body.to_string()).into_response()
}

/// Counts an instance out of `waiting` if its `next` is dropped while it waits (the
/// instance died or hung up).
struct Waiting<'a>(&'a Emulator, bool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.book.lock().unwrap().waiting -= 1;
        }
    }
}

async fn next(State((emu, id)): State<(Arc<Emulator>, u64)>) -> Response {
    {
        let mut book = emu.book.lock().unwrap();
        let current = book.version;
        let Some(handle) = book.instances.get_mut(&id) else {
            return StatusCode::GONE.into_response();
        };
        if handle.version != current {
            // Runs an older version of the function: ended, and replaced on demand.
            if let Some(kill) = handle.kill.take() {
                let _ = kill.send(Kill::Retired);
            }
            return StatusCode::GONE.into_response();
        }
        handle.asked = true;
        // A `next` ends whatever the instance ran before (it answered it, or lost it).
        let was_arriving = std::mem::replace(&mut handle.arriving, false);
        handle.current = None;
        if was_arriving {
            book.arriving -= 1;
        }
        book.waiting += 1;
    }
    let mut waiting = Waiting(&emu, true);
    let Some(event) = emu.inbox.lock().await.recv().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    waiting.1 = false;
    let timeout = {
        let mut book = emu.book.lock().unwrap();
        let current = book.version;
        if let Some(handle) = book.instances.get_mut(&id).filter(|h| h.version != current) {
            // The function changed while this instance waited: the event goes back to the
            // queue for an instance of the new version, and this one is retired.
            if let Some(kill) = handle.kill.take() {
                let _ = kill.send(Kill::Retired);
            }
            book.waiting -= 1;
            drop(book);
            let _ = emu.queue.send(event);
            return StatusCode::GONE.into_response();
        }
        let timeout = book
            .function
            .as_ref()
            .map_or(Duration::from_secs(3), |f| f.timeout);
        book.waiting -= 1;
        book.pending -= 1;
        book.stats.invocations += 1;
        if let Some(handle) = book.instances.get_mut(&id) {
            handle.current = Some(event.request_id.clone());
        }
        book.running.insert(
            event.request_id.clone(),
            Running {
                instance: id,
                reply: event.reply,
                started: Instant::now(),
            },
        );
        timeout
    };
    let deadline = SystemTime::now() + timeout;
    let timer = emu.clone();
    let rid = event.request_id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        timer.kill_if_running(id, &rid, Kill::Timeout);
    });
    tracing::info!(request_id = %event.request_id, instance = id, "START");
    let mut headers = HeaderMap::new();
    let h = |v: &str| HeaderValue::from_str(v).unwrap();
    headers.insert("lambda-runtime-aws-request-id", h(&event.request_id));
    headers.insert(
        "lambda-runtime-deadline-ms",
        h(&epoch_ms(deadline).to_string()),
    );
    headers.insert("lambda-runtime-invoked-function-arn", h(&emu.arn));
    headers.insert(
        "lambda-runtime-trace-id",
        h(&format!(
            "Root=1-00000000-{}",
            &event.request_id.replace('-', "")[..24]
        )),
    );
    headers.insert("content-type", h("application/json"));
    (StatusCode::OK, headers, event.payload).into_response()
}

/// Ends request `rid` of instance `id` with `answer`; 400 when it is not running there.
fn settle(emu: &Emulator, id: u64, rid: &str, answer: Answer) -> Response {
    let mut book = emu.book.lock().unwrap();
    let ours = book.running.get(rid).is_some_and(|r| r.instance == id);
    if !ours {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            &format!("no invocation {rid} runs on this instance"),
        );
    }
    let run = book.running.remove(rid).expect("checked above");
    book.stats.completed += 1;
    // Its runtime asks for the next event right after answering: one queued meanwhile
    // waits for it (a warm start), as on Lambda, instead of starting another instance.
    let mut arriving = false;
    if let Some(handle) = book.instances.get_mut(&id) {
        handle.current = None;
        arriving = !std::mem::replace(&mut handle.arriving, true);
    }
    if arriving {
        book.arriving += 1;
    }
    drop(book);
    let ms = run.started.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        request_id = rid,
        instance = id,
        "REPORT Duration: {ms:.2} ms Billed Duration: {} ms Memory Size: {} MB",
        ms.ceil(),
        emu.function().map_or(0, |(f, _)| f.memory_mb)
    );
    if let Some(reply) = run.reply {
        let _ = reply.send(answer);
    }
    StatusCode::ACCEPTED.into_response()
}

async fn respond(
    State((emu, id)): State<(Arc<Emulator>, u64)>,
    Path(rid): Path<String>,
    body: Bytes,
) -> Response {
    settle(&emu, id, &rid, Answer::Ok(body))
}

async fn fail(
    State((emu, id)): State<(Arc<Emulator>, u64)>,
    Path(rid): Path<String>,
    body: Bytes,
) -> Response {
    tracing::warn!(request_id = %rid, instance = id, "function error: {}",
        String::from_utf8_lossy(&body));
    settle(&emu, id, &rid, Answer::FunctionError(body))
}

async fn init_error(State((_, id)): State<(Arc<Emulator>, u64)>, body: Bytes) -> Response {
    tracing::error!(
        instance = id,
        "init error: {}",
        String::from_utf8_lossy(&body)
    );
    StatusCode::ACCEPTED.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_arns_name_the_function() {
        assert_eq!(function_name("w"), "w");
        assert_eq!(function_name("w:prod"), "w");
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:1:function:w:$LATEST"),
            "w"
        );
        assert_eq!(function_name("1:function:w"), "w");
    }
}

//! Servers for channel tests. Shared ones (started by `scripts/services.sh`, addresses in
//! the environment) and dedicated ones a test starts on a free port and owns (killed when
//! dropped), for exact "nothing left" checks and for pausing or killing a server mid-job.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The URL of a shared service, from the environment `scripts/test.sh` sets up.
pub fn shared(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run the suite with `bash scripts/test.sh`, which starts the servers"
        )
    })
}

/// A free loopback port (the listener is closed before the server binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `f` to completion on a runtime of its own (tests are synchronous).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Keys of the job still on a listing channel, asked of the service.
pub fn keys_left(url: &str, job_id: &str) -> Vec<String> {
    block_on(async {
        let ch = lambdaml::channel::open(&url.parse().unwrap())
            .await
            .unwrap();
        ch.list(&format!("{job_id}/"))
            .await
            .unwrap()
            .expect("this backend lists")
    })
}

/// A server process this test owns.
pub struct Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The channel URL that reaches it.
    pub url: String,
}

impl Server {
    fn start(mut cmd: Command, port: u16, url: String) -> Server {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?} (installed by scripts/test.sh): {e}"));
        let server = Server { child, port, url };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "server on port {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// A memcached of its own; `item_kb` sets `-I`.
    pub fn memcached(item_kb: Option<usize>) -> Server {
        let port = free_port();
        let mut cmd = Command::new("memcached");
        cmd.args([
            "-u",
            "root",
            "-l",
            "127.0.0.1",
            "-U",
            "0",
            "-m",
            "256",
            "-p",
            &port.to_string(),
        ]);
        let mut url = format!("memcached://127.0.0.1:{port}");
        if let Some(kb) = item_kb {
            cmd.args([
                "-I",
                &format!("{kb}k"),
                "-o",
                &format!("slab_chunk_max={}", kb * 512),
            ]);
            url.push_str(&format!("?item_size={}", kb * 1024));
        }
        Server::start(cmd, port, url)
    }

    /// A redis-server of its own.
    pub fn redis() -> Server {
        Server::redis_with_password(None)
    }

    /// A redis-server of its own that wants `password` (`requirepass`), if given; its URL
    /// carries the password.
    pub fn redis_with_password(password: Option<&str>) -> Server {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        let auth = match password {
            Some(pw) => {
                cmd.args(["--requirepass", pw]);
                format!(":{pw}@")
            }
            None => String::new(),
        };
        Server::start(cmd, port, format!("redis://{auth}127.0.0.1:{port}"))
    }

    /// Sends a signal (`STOP`, `CONT`, `KILL`) to the server.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Items the server holds, asked of the server itself (memcached `stats`, Redis `DBSIZE`).
    pub fn items(&self) -> u64 {
        if self.url.starts_with("memcached") {
            let client =
                memcache::Client::connect(format!("memcache://127.0.0.1:{}", self.port)).unwrap();
            let stats = client.stats().unwrap();
            stats[0].1["curr_items"].parse().unwrap()
        } else {
            let client = redis::Client::open(self.url.as_str()).unwrap();
            let mut conn = client.get_connection().unwrap();
            redis::cmd("DBSIZE").query(&mut conn).unwrap()
        }
    }
}

impl Server {
    /// Has the server drop the items whose expiry has passed now, rather than when it next
    /// comes across them (memcached's LRU crawler; Redis expires keys actively already).
    pub fn drop_expired(&self) {
        if self.url.starts_with("memcached") {
            use std::io::{Read, Write};
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
            conn.write_all(b"lru_crawler crawl all\r\n").unwrap();
            let mut reply = [0u8; 64];
            let n = conn.read(&mut reply).unwrap();
            let reply = String::from_utf8_lossy(&reply[..n]);
            assert!(reply.starts_with("OK") || reply.contains("BUSY"), "{reply}");
        }
    }

    /// Data requests the server has served so far, by its own counters: memcached `stats`
    /// (`cmd_get` counts every key of a multi-get, plus `cmd_set`, `cmd_touch` and deletes),
    /// Redis `INFO commandstats` (every command but connection handshakes and `INFO`).
    pub fn requests(&self) -> u64 {
        if self.url.starts_with("memcached") {
            let client =
                memcache::Client::connect(format!("memcache://127.0.0.1:{}", self.port)).unwrap();
            let stats = &client.stats().unwrap()[0].1;
            [
                "cmd_get",
                "cmd_set",
                "cmd_touch",
                "delete_hits",
                "delete_misses",
            ]
            .iter()
            .map(|k| stats[*k].parse::<u64>().unwrap())
            .sum()
        } else {
            let client = redis::Client::open(self.url.as_str()).unwrap();
            let mut conn = client.get_connection().unwrap();
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut conn)
                .unwrap();
            const NOT_DATA: [&str; 7] = [
                "info", "client", "hello", "select", "ping", "command", "dbsize",
            ];
            info.lines()
                .filter_map(|l| l.strip_prefix("cmdstat_"))
                .filter_map(|l| {
                    let (cmd, rest) = l.split_once(':')?;
                    let cmd = cmd.split('|').next().unwrap_or(cmd);
                    if NOT_DATA.contains(&cmd) {
                        return None;
                    }
                    let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                    calls.parse::<u64>().ok()
                })
                .sum()
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local Lambda (`lambdaml lambda emulate`) of this test's own, serving one function whose
/// code is the `lambdaml` binary; stopped (with its instances) when dropped.
pub struct LocalLambda {
    child: Child,
    /// The Invoke API's URL (for `AWS_ENDPOINT_URL_LAMBDA`).
    pub url: String,
    /// The function's name.
    pub function: String,
    /// Where its instances log (`instance-N.log`).
    pub log_dir: std::path::PathBuf,
}

impl LocalLambda {
    /// Starts one for `function` with `extra` flags (`--concurrency`, `--timeout`,
    /// `--memory`), its instances logging under `dir`; `env` goes to the emulator and so to
    /// every instance.
    pub fn start(
        dir: &std::path::Path,
        function: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        use std::io::BufRead;
        let log_dir = dir.join(format!("lambda-{function}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lambdaml"));
        cmd.args([
            "lambda",
            "emulate",
            "--addr",
            "127.0.0.1:0",
            "--function",
            function,
        ])
        .arg("--log-dir")
        .arg(&log_dir)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join(format!("lambda-{function}.log"))).unwrap());
        let mut child = cmd.spawn().expect("lambdaml lambda emulate starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the local Lambda said {line:?}"))
            .to_string();
        LocalLambda {
            child,
            url: format!("http://{addr}"),
            function: function.to_string(),
            log_dir,
        }
    }

    /// Points a `lambdaml` command (a driver) at this Lambda.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("AWS_ENDPOINT_URL_LAMBDA", &self.url)
            .env(
                "AWS_REGION",
                std::env::var("AWS_REGION").unwrap_or("us-east-1".into()),
            )
            .env(
                "AWS_ACCESS_KEY_ID",
                std::env::var("AWS_ACCESS_KEY_ID").unwrap_or("local".into()),
            )
            .env(
                "AWS_SECRET_ACCESS_KEY",
                std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or("local".into()),
            )
    }

    /// `--platform lambda:FUNCTION`.
    pub fn platform(&self) -> String {
        format!("lambda:{}", self.function)
    }

    /// What it has done so far (`GET /_emulator/stats`).
    pub fn stats(&self) -> serde_json::Value {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        write!(
            conn,
            "GET /_emulator/stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply}"))
    }

    /// Everything its instances logged.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for f in std::fs::read_dir(&self.log_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            all.push_str(&std::fs::read_to_string(f.path()).unwrap_or_default());
        }
        all
    }
}

impl Drop for LocalLambda {
    fn drop(&mut self) {
        // SIGTERM: it ends its instances before it exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

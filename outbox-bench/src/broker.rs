//! The broker each measured part of a scenario runs against.
//!
//! Tansu's in-memory storage slows down as it fills, across topics, so a
//! measurement run after another one on the same broker measures the
//! broker's history too. So when `scripts/bench.sh`
//! hands over the Tansu binary (`OUTBOX_BENCH_TANSU`), every part asks for
//! a broker here and gets a fresh one: a scenario, each latency path, each
//! drain. With a broker of the user's (`KAFKA_BOOTSTRAP_SERVERS`, e.g. a
//! Kafka cluster, which does not slow down as it fills) every part uses
//! that broker.

use crate::setup::BoxError;
use rdkafka::ClientConfig;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// How long a fresh broker may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the brokers of a run come from.
#[derive(Clone)]
pub enum Brokers {
    /// `KAFKA_BOOTSTRAP_SERVERS`: every part uses it.
    Given(String),
    /// The Tansu binary: every part starts a broker of its own.
    Tansu(PathBuf),
}

impl Brokers {
    /// From `KAFKA_BOOTSTRAP_SERVERS`, else `OUTBOX_BENCH_TANSU`.
    pub fn from_env() -> Result<Self, BoxError> {
        if let Ok(bootstrap) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
            return Ok(Self::Given(bootstrap));
        }
        match std::env::var_os("OUTBOX_BENCH_TANSU") {
            Some(tansu) => Ok(Self::Tansu(PathBuf::from(tansu))),
            None => Err(
                "neither KAFKA_BOOTSTRAP_SERVERS nor OUTBOX_BENCH_TANSU is set: \
                         run scripts/bench.sh, or set KAFKA_BOOTSTRAP_SERVERS to a broker"
                    .into(),
            ),
        }
    }

    /// The broker of one part, `part` naming its log.
    pub async fn broker(&self, part: &str) -> Result<Broker, BoxError> {
        match self {
            Self::Given(bootstrap) => Ok(Broker {
                bootstrap: bootstrap.clone(),
                tansu: None,
            }),
            Self::Tansu(binary) => start_tansu(binary, part).await,
        }
    }
}

/// A broker one part runs against; a Tansu started for it is stopped when
/// this is dropped.
pub struct Broker {
    pub bootstrap: String,
    tansu: Option<Child>,
}

impl Broker {
    /// A client configuration for this broker, with the extra settings of
    /// `OUTBOX_BENCH_KAFKA_SET` (`key=value,key=value`) for every client of
    /// the run: producers, the relay's and the consumers alike.
    pub fn kafka(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.bootstrap);
        if let Ok(extra) = std::env::var("OUTBOX_BENCH_KAFKA_SET") {
            for (key, value) in extra.split(',').filter_map(|kv| kv.split_once('=')) {
                cc.set(key.trim(), value.trim());
            }
        }
        cc
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.tansu.as_mut() {
            // Killed and reaped here (SIGKILL: the wait is immediate), so no
            // broker outlives its part, even as the benchmark exits.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn start_tansu(binary: &Path, part: &str) -> Result<Broker, BoxError> {
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::env::var_os("OUTBOX_WORK")
        .map(|dir| PathBuf::from(dir).join(format!("tansu-{part}-{port}.log")));
    let (stdout, stderr) = match &log {
        Some(path) => {
            let file = std::fs::File::create(path)?;
            (Stdio::from(file.try_clone()?), Stdio::from(file))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    let child = Command::new(binary)
        .args(["broker", "--storage-engine", "memory://tansu/"])
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", binary.display()))?;
    let hint = log
        .map(|path| format!("; see {}", path.display()))
        .unwrap_or_default();
    // Owned by the `Broker` from here, so an early return stops it too.
    let mut broker = Broker {
        bootstrap: format!("127.0.0.1:{port}"),
        tansu: Some(child),
    };
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        let exited = match broker.tansu.as_mut() {
            Some(child) => child.try_wait()?,
            None => None,
        };
        if let Some(status) = exited {
            return Err(format!("the Tansu broker for {part} exited ({status}){hint}").into());
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(format!(
                "the Tansu broker for {part} did not accept connections within {START_TIMEOUT:?}{hint}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(broker)
}

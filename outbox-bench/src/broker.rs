//! A Tansu broker of one measurement, started by the benchmark itself.
//!
//! Tansu's in-memory storage slows down as it fills, across topics, so a
//! measurement run after another one on the same broker measures the
//! broker's history too (docs/benchmarks.md §4). `scripts/bench.sh` gives
//! every scenario a fresh broker; a scenario whose parts must not inherit
//! each other's messages (the latency paths, each drain) asks for one per
//! part here.
//! With a broker of the user's (`KAFKA_BOOTSTRAP_SERVERS`, e.g. a Kafka
//! cluster, which does not slow down as it fills), the script does not set
//! `OUTBOX_BENCH_TANSU` and every part uses that broker.

use crate::setup::{BoxError, Env};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh broker may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Tansu broker; stopped when dropped.
pub struct FreshBroker {
    child: Child,
    log: Option<PathBuf>,
}

impl FreshBroker {
    /// Where to run one part of a scenario: a fresh broker when
    /// `OUTBOX_BENCH_TANSU` names the Tansu binary (scripts/bench.sh sets it
    /// when it starts the brokers itself), else `env` as it is.
    pub fn for_part(env: &Env, part: &str) -> Result<(Env, Option<Self>), BoxError> {
        let Some(tansu) = std::env::var_os("OUTBOX_BENCH_TANSU") else {
            return Ok((env.clone(), None));
        };
        let (broker, port) = Self::start(PathBuf::from(tansu), part)?;
        let mut fresh = env.clone();
        fresh.bootstrap = format!("127.0.0.1:{port}");
        Ok((fresh, Some(broker)))
    }

    fn start(tansu: PathBuf, part: &str) -> Result<(Self, u16), BoxError> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
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
        let child = Command::new(&tansu)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", tansu.display()))?;
        let mut broker = Self { child, log };
        broker.wait_ready(port)?;
        Ok((broker, port))
    }

    fn wait_ready(&mut self, port: u16) -> Result<(), BoxError> {
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "the fresh Tansu broker exited ({status}){}",
                    self.log_hint()
                )
                .into());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "the fresh Tansu broker did not accept connections within {START_TIMEOUT:?}{}",
                    self.log_hint()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn log_hint(&self) -> String {
        self.log
            .as_ref()
            .map(|path| format!("; see {}", path.display()))
            .unwrap_or_default()
    }
}

impl Drop for FreshBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The `outbox` command line: migrations, queue status, the standalone
//! relay, dead events, purges, and the event registry. `docs/guide/cli.md` is the
//! full reference.
//!
//! The `outbox` binary is this module's [`run`]. A service can embed the same
//! CLI in its own binary, so that `registry list` and `registry export` read
//! *that* binary's compile-time registry (the plain `outbox` binary has no
//! events of its own):
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! fn main() -> ExitCode {
//!     let args: Vec<_> = std::env::args_os().collect();
//!     if args.get(1).is_some_and(|arg| arg == "outbox") {
//!         // `file-service outbox registry export --format asyncapi`
//!         return outbox::cli::run_from(args.into_iter().skip(1));
//!     }
//!     // ... the service itself ...
//!     ExitCode::SUCCESS
//! }
//! ```
//!
//! Exit codes are stable, see [`Exit`].

mod db;
mod failed;
mod migrate;
mod output;
mod purge;
mod registry;
mod relay;
mod retry;
mod status;
mod topics;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::fmt;
use std::process::ExitCode;

use crate::SchemaName;

/// The exit status of a CLI invocation; scripts can rely on these codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// 0: the command did what was asked.
    Success,
    /// 1: an operational error: the database or broker is unreachable, a
    /// statement failed, a file could not be written.
    Failure,
    /// 2: a usage error: unknown command or flag, invalid value, missing
    /// `DATABASE_URL`.
    Usage,
    /// 3: the event or aggregate named on the command line does not exist
    /// (or has no dead events to act on).
    NotFound,
    /// 4: a conflict: the event is not in a state the command can act on
    /// (retrying an event that is not dead), the registry has conflicting
    /// registrations, or `registry check` found a breaking change to an
    /// event contract.
    Conflict,
}

impl Exit {
    /// The numeric process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Failure => 1,
            Self::Usage => 2,
            Self::NotFound => 3,
            Self::Conflict => 4,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Usage => "usage",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// A failed command: the exit status and a message naming the problem and
/// the fix.
#[derive(Debug)]
pub(crate) struct CliError {
    exit: Exit,
    message: String,
}

impl CliError {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    pub(crate) fn failure(message: impl Into<String>) -> Self {
        Self::new(Exit::Failure, message)
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }
}

/// `error` and each of its causes on one line (see `outbox_runtime::Chain`).
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    outbox_runtime::Chain(error).to_string()
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<crate::ops::admin::AdminError> for CliError {
    fn from(error: crate::ops::admin::AdminError) -> Self {
        use crate::ops::admin::AdminError as E;
        let exit = match &error {
            E::NotFound { .. } => Exit::NotFound,
            E::NotDead { .. } => Exit::Conflict,
            E::InvalidArgument { .. } => Exit::Usage,
            _ => Exit::Failure,
        };
        Self::new(exit, with_causes(&error))
    }
}

pub(crate) type CliResult<T = ()> = Result<T, CliError>;

const ABOUT: &str =
    "Operate a transactional outbox: migrations, queue status, the standalone relay, \
                     dead events, purges and the event registry.";

const AFTER_HELP: &str = "Exit codes: 0 ok, 1 operational error, 2 usage error, 3 not found, \
                          4 conflict. See docs/guide/cli.md.";

#[derive(Debug, Parser)]
#[command(name = "outbox", version, about = ABOUT, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Global {
    /// PostgreSQL connection URL of the database holding the outbox tables.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub(crate) database_url: Option<String>,

    /// Schema of the outbox tables (default: the connection's search_path).
    #[arg(
        long,
        env = "OUTBOX_SCHEMA",
        global = true,
        value_name = "NAME",
        value_parser = parse_schema
    )]
    pub(crate) schema: Option<SchemaName>,

    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

fn parse_schema(value: &str) -> Result<SchemaName, String> {
    SchemaName::new(value).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the outbox tables.
    Migrate,
    /// Queue depth, oldest pending event, counts per state and per topic.
    Status,
    /// Run a standalone relay until SIGINT or SIGTERM.
    Relay(relay::RelayArgs),
    /// Inspect dead events.
    #[command(subcommand)]
    Failed(failed::FailedCommand),
    /// Send a dead event again (`retry ID`), or all of them (`retry --all`).
    Retry(retry::RetryArgs),
    /// Release an aggregate held behind dead events: they become `released`
    /// and the aggregate's later events continue.
    Release(retry::ReleaseArgs),
    /// Delete published rows older than a duration, in bounded batches.
    Purge(purge::PurgeArgs),
    /// The event types compiled into this binary.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Kafka topics of the registry.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
}

/// Runs the CLI on the process's arguments and returns its exit code.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     outbox::cli::run()
/// }
/// ```
pub fn run() -> ExitCode {
    run_from(std::env::args_os())
}

/// Runs the CLI on `args`; the first item is the program name, as in
/// `std::env::args_os()`. Usable from `main` of a service binary to embed
/// the CLI; when called inside a tokio runtime it runs on a thread of its own.
///
/// ```
/// let code = outbox::cli::run_from(["outbox", "registry", "list", "--json"]);
/// assert_eq!(code, std::process::ExitCode::SUCCESS);
/// ```
pub fn run_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Success.into()
            };
        }
    };
    let json = cli.global.json;
    let result = if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|scope| {
            scope
                .spawn(|| block_on(cli))
                .join()
                .unwrap_or_else(|_| Err(CliError::failure("the outbox command panicked")))
        })
    } else {
        block_on(cli)
    };
    match result {
        Ok(()) => Exit::Success.into(),
        Err(error) => {
            report(&error, json);
            error.exit.into()
        }
    }
}

fn block_on(cli: Cli) -> CliResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failure(format!("could not start the async runtime: {e}")))?;
    runtime.block_on(execute(cli))
}

fn report(error: &CliError, json: bool) {
    let text = if json {
        serde_json::json!({
            "error": {
                "kind": error.exit.kind(),
                "exit_code": error.exit.code(),
                "message": error.message,
            }
        })
        .to_string()
    } else {
        format!("error: {}", error.message)
    };
    output::eprint_line(&text);
}

async fn execute(cli: Cli) -> CliResult {
    let global = cli.global;
    match cli.command {
        Command::Migrate => migrate::run(&global).await,
        Command::Status => status::run(&global).await,
        Command::Relay(args) => relay::run(&global, args).await,
        Command::Failed(command) => failed::run(&global, command).await,
        Command::Retry(args) => retry::retry(&global, args).await,
        Command::Release(args) => retry::release(&global, args).await,
        Command::Purge(args) => purge::run(&global, args).await,
        Command::Registry(command) => registry::run(&global, command),
        Command::Topics(command) => topics::run(&global, command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_are_stable() {
        let codes: Vec<u8> = [
            Exit::Success,
            Exit::Failure,
            Exit::Usage,
            Exit::NotFound,
            Exit::Conflict,
        ]
        .into_iter()
        .map(Exit::code)
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn usage_errors_exit_with_2() {
        assert_eq!(run_from(["outbox", "no-such-command"]), ExitCode::from(2));
        assert_eq!(
            run_from(["outbox", "--schema", "Bad-Name", "status"]),
            ExitCode::from(2)
        );
        assert_eq!(run_from(["outbox", "--help"]), ExitCode::SUCCESS);
    }
}

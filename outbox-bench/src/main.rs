//! Benchmarks of the outbox against a real Postgres and broker. Each
//! scenario measures its baseline in the same run and prints ratios.
//!
//! ```text
//! scripts/bench.sh            # all scenarios, full sizes
//! scripts/bench.sh --quick    # smaller sizes, a smoke run
//! scripts/bench.sh publish_overhead
//! ```

mod broker;
mod consumers;
mod mechanisms;
mod scenarios;
mod setup;
mod stats;

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
struct Args {
    /// `all` or one of: relay_vs_raw_produce, publish_overhead, bulk_publish,
    /// end_to_end_latency, backlog_independence (with relay_memory), relay_scaling,
    /// relay_mechanisms, consumer_throughput, consumer_recovery.
    #[arg(default_value = "all")]
    scenario: String,
    /// Smaller sizes (a smoke run); the output says which sizes were used.
    #[arg(long)]
    quick: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx::query=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if consumers::run_child_if_asked().await {
        return ExitCode::SUCCESS;
    }
    let args = Args::parse();
    let env = match setup::Env::from_env() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let sizes = if args.quick {
        scenarios::Sizes::quick()
    } else {
        scenarios::Sizes::full()
    };
    println!(
        "sizes: backlog={} big_backlog={} small_backlog={} writes_per_writer={} latency_secs={} relay_batch=1000 payload=~1KiB",
        sizes.backlog, sizes.big_backlog, sizes.small_backlog, sizes.writes_per_writer, sizes.latency_secs
    );
    let mut report = stats::Report::default();
    let all = args.scenario == "all";
    let want = |name: &str| all || args.scenario == name;
    let mut failed = false;
    macro_rules! run {
        ($name:literal, $f:path) => {
            if want($name) {
                let started = std::time::Instant::now();
                match $f(&env, &sizes, &mut report).await {
                    Ok(()) => println!(
                        "# {} done in {:.1}s",
                        $name,
                        started.elapsed().as_secs_f64()
                    ),
                    Err(e) => {
                        eprintln!("scenario {} failed: {e}", $name);
                        failed = true;
                    }
                }
            }
        };
    }
    run!("relay_vs_raw_produce", scenarios::relay_vs_raw_produce);
    run!("publish_overhead", scenarios::publish_overhead);
    run!("bulk_publish", scenarios::bulk_publish);
    run!("end_to_end_latency", scenarios::end_to_end_latency);
    run!(
        "backlog_independence",
        scenarios::backlog_independence_and_memory
    );
    run!("relay_scaling", scenarios::relay_scaling);
    run!("relay_mechanisms", mechanisms::relay_mechanisms);
    run!("consumer_throughput", consumers::consumer_throughput);
    run!("consumer_recovery", consumers::consumer_recovery);
    report.print_table();
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

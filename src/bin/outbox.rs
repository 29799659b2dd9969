//! The `outbox` command line; see `docs/guide/cli.md` or `outbox --help`.

fn main() -> std::process::ExitCode {
    outbox::cli::run()
}

//! Connecting to the database named by `--database-url` / `DATABASE_URL`,
//! without ever showing its password.

use super::{CliError, CliResult, Global};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::time::Duration;

/// How long a command waits for a connection before reporting the
/// database unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The URL from the flags, or a usage error naming both ways to give it.
pub(crate) fn database_url(global: &Global) -> CliResult<&str> {
    match global.database_url.as_deref() {
        Some(url) if !url.trim().is_empty() => Ok(url),
        _ => Err(CliError::usage(
            "no database given: set DATABASE_URL or pass --database-url postgres://USER@HOST/DB",
        )),
    }
}

/// A small pool for one command.
pub(crate) async fn connect(global: &Global, max_connections: u32) -> CliResult<PgPool> {
    let url = database_url(global)?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
        .map_err(|error| {
            CliError::failure(format!(
                "could not connect to the database at {}: {}; check DATABASE_URL / --database-url \
                 and that PostgreSQL is reachable",
                mask_url(url),
                mask_secret(&error.to_string(), url),
            ))
        })
}

/// Where the outbox tables are, for messages.
pub(crate) fn schema_label(global: &Global) -> String {
    match &global.schema {
        Some(schema) => format!("schema `{schema}`"),
        None => "the default schema".to_owned(),
    }
}

/// `url` with its password replaced by `****`: in the user-info part
/// (`postgres://user:secret@host`), and in `password=` parameters.
pub(crate) fn mask_url(url: &str) -> String {
    let mut masked = url.to_owned();
    if let Some(password) = password_of(url) {
        if !password.is_empty() {
            masked = masked.replace(&format!(":{password}@"), ":****@");
        }
    }
    mask_password_params(&masked)
}

/// `text` with any occurrence of the URL's password replaced by `****`.
pub(crate) fn mask_secret(text: &str, url: &str) -> String {
    let mut masked = text.replace(url, &mask_url(url));
    if let Some(password) = password_of(url) {
        if password.len() >= 3 {
            masked = masked.replace(password, "****");
        }
    }
    mask_password_params(&masked)
}

fn password_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let (user_info, _host) = authority.rsplit_once('@')?;
    user_info.split_once(':').map(|(_, password)| password)
}

fn mask_password_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("password=") {
        let value_start = at + "password=".len();
        out.push_str(&rest[..value_start]);
        let value = &rest[value_start..];
        let end = value
            .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
            .unwrap_or(value.len());
        if end > 0 {
            out.push_str("****");
        }
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_url("postgres://app:s3cr%40t@db.internal:5432/files?sslmode=require"),
            "postgres://app:****@db.internal:5432/files?sslmode=require"
        );
        assert_eq!(
            mask_url("postgres://app@db/files?password=hunter2&sslmode=disable"),
            "postgres://app@db/files?password=****&sslmode=disable"
        );
        assert_eq!(mask_url("postgres://db/files"), "postgres://db/files");
        assert_eq!(
            mask_url("host=db user=app password=hunter2 dbname=files"),
            "host=db user=app password=**** dbname=files"
        );
        let url = "postgresql://u:pa:ss@h/d";
        assert_eq!(mask_url(url), "postgresql://u:****@h/d");
        assert_eq!(
            mask_secret(
                "error connecting to postgresql://u:pa:ss@h/d with pa:ss",
                url
            ),
            "error connecting to postgresql://u:****@h/d with ****"
        );
    }
}

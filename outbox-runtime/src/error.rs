//! Typed errors of the runtime. Every message names the problem and the fix.

use crate::registry::RegistryError;

/// Why adding events to the outbox, or committing them, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The event's `Serialize` impl failed; nothing was written.
    #[error(
        "could not serialize event `{event_type}` (Rust type `{rust_type}`) to JSON; \
         fix the type's `Serialize` implementation (maps need string keys, floats must be finite)"
    )]
    Serialize {
        /// The event type name.
        event_type: &'static str,
        /// The Rust type.
        rust_type: &'static str,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// The aggregate id is empty, so the event could not be ordered or keyed.
    #[error(
        "event `{event_type}` has an empty aggregate id; the field marked \
         `#[outbox_event(aggregate_id)]` must identify the aggregate"
    )]
    EmptyAggregateId {
        /// The event type name.
        event_type: &'static str,
    },
    /// A database statement failed.
    #[error("outbox database error while {action}")]
    Database {
        /// What the outbox was doing.
        action: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
}

impl PublishError {
    pub(crate) fn db(action: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database { action, source }
    }
}

/// An invalid setting: names the setting, the value and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable could not be parsed.
    #[error("environment variable {var}={value:?} is invalid: expected {expected}")]
    InvalidEnv {
        /// Variable name.
        var: &'static str,
        /// The value found.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// A schema name (or other SQL identifier) is not a plain identifier.
    #[error(
        "{what} {value:?} is not a valid SQL identifier: use 1 to 63 characters from \
         [a-z0-9_], starting with a letter or underscore"
    )]
    InvalidIdentifier {
        /// Which setting.
        what: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A setting is out of range or inconsistent with another.
    #[error("invalid outbox setting `{setting}`: {reason}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// Why, and what to do.
        reason: String,
    },
}

/// Why a relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The compile-time registry has conflicting registrations.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The outbox tables do not exist in the configured schema.
    #[error(
        "the outbox table `{table}` does not exist in this database; run the migrations first \
         (`outbox::migrate(&pool)` in code, `outbox migrate` from the CLI, or `sqlx migrate run` \
         with the crate's migrations/ directory)"
    )]
    MissingTable {
        /// Qualified table name that was looked up.
        table: String,
    },
    /// The role cannot read or write the outbox tables.
    #[error(
        "the database role `{role}` lacks privileges on `{table}` ({missing}); grant them, e.g. \
         `GRANT SELECT, INSERT, UPDATE, DELETE ON {table}, event_outbox_lease, event_outbox_relay TO {role}`"
    )]
    MissingPrivileges {
        /// The connected role.
        role: String,
        /// The table.
        table: String,
        /// Which privileges are missing.
        missing: String,
    },
    /// A database statement failed.
    #[error("outbox relay database error while {action}")]
    Database {
        /// What the relay was doing.
        action: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// The Kafka client could not be created.
    #[error("could not create the Kafka producer; check the rdkafka ClientConfig")]
    Kafka {
        /// rdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The relay task panicked or was aborted.
    #[error("the relay task ended abnormally: {0}")]
    Task(String),
}

impl RelayError {
    pub(crate) fn db(action: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database { action, source }
    }
}

/// Why running the migrations failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "outbox migrations failed; check that the database is reachable and that the role may create \
     tables in the target schema"
)]
pub struct MigrateError {
    #[source]
    source: sqlx::migrate::MigrateError,
}

impl MigrateError {
    pub(crate) fn new(source: sqlx::migrate::MigrateError) -> Self {
        Self { source }
    }
}

/// An error and each of its causes, joined by `: `, for a log field, a
/// header or a command line: the errors here print their cause only as
/// `source()`, so a plain `%error` would leave it out. Used by the facade's
/// CLI too; not an API.
#[doc(hidden)]
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(next) = cause {
            write!(f, ": {next}")?;
            cause = next.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    /// An error that prints its cause in its own message makes chain
    /// reporters (anyhow, eyre, tracing) print the cause twice.
    fn cause_printed_once(error: &(dyn Error + 'static)) {
        let source = error
            .source()
            .expect("the error keeps its cause as source()");
        let text = error.to_string();
        assert!(
            !text.contains(&source.to_string()),
            "`{text}` repeats its source `{source}`"
        );
    }

    #[test]
    fn a_chain_prints_each_cause_once() {
        let error = PublishError::Database {
            action: "inserting",
            source: sqlx::Error::PoolTimedOut,
        };
        assert_eq!(
            Chain(&error).to_string(),
            format!(
                "outbox database error while inserting: {}",
                sqlx::Error::PoolTimedOut
            )
        );
    }

    #[test]
    fn database_and_client_errors_print_their_cause_only_as_source() {
        cause_printed_once(&PublishError::Database {
            action: "inserting",
            source: sqlx::Error::PoolTimedOut,
        });
        cause_printed_once(&PublishError::Serialize {
            event_type: "E",
            rust_type: "crate::E",
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        });
        cause_printed_once(&RelayError::Database {
            action: "claiming",
            source: sqlx::Error::PoolTimedOut,
        });
        cause_printed_once(&RelayError::Kafka {
            source: rdkafka::error::KafkaError::ClientCreation("bad".into()),
        });
        cause_printed_once(&MigrateError::new(
            sqlx::migrate::MigrateError::VersionMissing(1),
        ));
        cause_printed_once(&crate::ops::admin::AdminError::Database {
            action: "listing",
            source: sqlx::Error::PoolTimedOut,
        });
        cause_printed_once(&crate::TopicError {
            topic: "t".into(),
            source: rdkafka::error::KafkaError::ClientCreation("bad".into()),
        });
    }
}

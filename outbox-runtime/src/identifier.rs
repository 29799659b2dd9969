//! Validated SQL identifiers for configurable names (the schema).

use crate::error::ConfigError;
use std::fmt;

/// A Postgres schema name the outbox tables live in. Only plain lower-case
/// identifiers are accepted, so a name from configuration can never inject
/// SQL.
///
/// ```
/// use outbox::SchemaName;
///
/// assert!(SchemaName::new("billing").is_ok());
/// assert!(SchemaName::new("public; DROP TABLE users").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

impl SchemaName {
    /// Validates `name`: 1–63 characters of `[a-z0-9_]`, not starting with a digit.
    pub fn new(name: &str) -> Result<Self, ConfigError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(ConfigError::InvalidIdentifier {
                what: "outbox schema name",
                value: name.to_owned(),
            })
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Table and channel names for an optional schema.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub outbox: String,
    pub lease: String,
    pub relay: String,
    pub channel: String,
}

impl Names {
    pub(crate) fn new(schema: Option<&SchemaName>) -> Self {
        match schema {
            None => Self {
                outbox: "event_outbox".into(),
                lease: "event_outbox_lease".into(),
                relay: "event_outbox_relay".into(),
                channel: "outbox_wakeup".into(),
            },
            Some(s) => Self {
                outbox: format!("\"{s}\".event_outbox"),
                lease: format!("\"{s}\".event_outbox_lease"),
                relay: format!("\"{s}\".event_outbox_relay"),
                channel: format!("outbox_wakeup_{s}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers() {
        for ok in ["public", "_x", "svc_1", &"a".repeat(63)] {
            assert!(SchemaName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_injection_and_odd_names() {
        for bad in [
            "",
            "1abc",
            "Public",
            "a-b",
            "x\"; drop table t; --",
            "a b",
            &"a".repeat(64),
        ] {
            let err = SchemaName::new(bad).unwrap_err();
            assert!(
                err.to_string().contains("not a valid SQL identifier"),
                "{err}"
            );
        }
    }

    #[test]
    fn names_are_qualified() {
        let n = Names::new(Some(&SchemaName::new("svc").unwrap()));
        assert_eq!(n.outbox, "\"svc\".event_outbox");
        assert_eq!(n.channel, "outbox_wakeup_svc");
        assert_eq!(Names::new(None).outbox, "event_outbox");
    }
}

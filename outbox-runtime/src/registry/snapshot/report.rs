//! The outcome of a check: one [`Finding`] per difference, and what was not
//! compared.

use std::fmt;

use super::schema::SchemaChange;

/// One difference between the snapshot and the compiled registry, for one
/// event type and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The envelope's `event_type`.
    pub event_type: String,
    /// The version.
    pub version: u32,
    /// What differs.
    pub change: Change,
}

/// What differs for one event type and version.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The topic changed: consumers subscribed to the old one stop
    /// receiving the event.
    TopicChanged {
        /// The snapshot's topic.
        from: String,
        /// The compiled topic.
        to: String,
    },
    /// The aggregate type changed.
    AggregateTypeChanged {
        /// The snapshot's aggregate type.
        from: String,
        /// The compiled aggregate type.
        to: String,
    },
    /// Another field holds the aggregate id: ids, and the order events are
    /// delivered in, mean something else.
    AggregateIdFieldChanged {
        /// The snapshot's field.
        from: Option<String>,
        /// The compiled field.
        to: Option<String>,
    },
    /// Another field is the Kafka key: events move to other partitions and
    /// lose their order relative to earlier ones.
    KeyFieldChanged {
        /// The snapshot's field.
        from: Option<String>,
        /// The compiled field.
        to: Option<String>,
    },
    /// A difference in the payload schema.
    Schema(SchemaChange),
    /// Compiled, but missing from the snapshot although a later version of
    /// the event type is there: the entry was dropped while its type still
    /// exists.
    MissingFromSnapshot {
        /// The Rust type still declaring it.
        rust_type: String,
        /// The later version the snapshot holds.
        later_version: u32,
    },
    /// Compiled and not in the snapshot: a new event type or version.
    Added {
        /// The Rust type declaring it.
        rust_type: String,
    },
    /// In the snapshot and no longer compiled.
    Retired {
        /// The Rust type the snapshot names.
        rust_type: String,
    },
    /// The payload schema could not be compared.
    SchemaNotCompared {
        /// Why.
        reason: SchemaSkip,
    },
}

/// Why a payload schema was not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaSkip {
    /// The snapshot has a schema; the compiled event publishes none.
    NotPublished,
    /// The compiled event publishes a schema the snapshot does not have.
    NotInSnapshot,
}

impl Change {
    /// Whether consumers can break.
    pub fn is_breaking(&self) -> bool {
        match self {
            Self::TopicChanged { .. }
            | Self::AggregateTypeChanged { .. }
            | Self::AggregateIdFieldChanged { .. }
            | Self::KeyFieldChanged { .. }
            | Self::MissingFromSnapshot { .. } => true,
            Self::Schema(change) => change.is_breaking(),
            Self::Added { .. } | Self::Retired { .. } | Self::SchemaNotCompared { .. } => false,
        }
    }

    /// The payload field concerned, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Schema(change) if !change.field.is_empty() => Some(&change.field),
            _ => None,
        }
    }
}

fn field_name(field: Option<&String>) -> String {
    match field {
        Some(field) => format!("`{field}`"),
        None => "an unnamed field".to_owned(),
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TopicChanged { from, to } => write!(
                f,
                "topic changed from `{from}` to `{to}`: consumers of `{from}` stop receiving it"
            ),
            Self::AggregateTypeChanged { from, to } => {
                write!(f, "aggregate changed from `{from}` to `{to}`")
            }
            Self::AggregateIdFieldChanged { from, to } => write!(
                f,
                "aggregate id now read from {} instead of {}: ids and delivery order change meaning",
                field_name(to.as_ref()),
                field_name(from.as_ref())
            ),
            Self::KeyFieldChanged { from, to } => write!(
                f,
                "Kafka key now read from {} instead of {}: events move to other partitions and lose their order",
                field_name(to.as_ref()),
                field_name(from.as_ref())
            ),
            Self::Schema(change) => write!(f, "{change}"),
            Self::MissingFromSnapshot {
                rust_type,
                later_version,
            } => write!(
                f,
                "still declared by `{rust_type}` but missing from the snapshot, which has v{later_version}: keep the entry of every version whose type still exists"
            ),
            Self::Added { rust_type } => {
                write!(f, "new, declared by `{rust_type}`; not in the snapshot yet")
            }
            Self::Retired { rust_type } => write!(
                f,
                "no longer declared (the snapshot names `{rust_type}`); its entry can go"
            ),
            Self::SchemaNotCompared {
                reason: SchemaSkip::NotPublished,
            } => write!(
                f,
                "payload schema not compared: the snapshot has one but the event publishes none (`#[outbox_event(json_schema)]`)"
            ),
            Self::SchemaNotCompared {
                reason: SchemaSkip::NotInSnapshot,
            } => write!(
                f,
                "payload schema not compared: the snapshot has none; regenerate it to guard the payload"
            ),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` v{}: {}",
            self.event_type, self.version, self.change
        )
    }
}

/// Every finding of one check, in a stable order.
///
/// Its `Display` is the text `outbox registry check` prints: breaking
/// changes first, then compatible ones, then notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Every difference found.
    pub findings: Vec<Finding>,
    /// Event types and versions compiled into the binary.
    pub compiled: usize,
    /// Whether payload schemas were compared: `false` when built without
    /// the `json-schema` feature, in which case everything else still is.
    pub schemas_compared: bool,
}

/// The note printed when payload schemas were not compared.
pub const SCHEMAS_NOT_COMPARED: &str = "payload schemas not compared: this binary was built without the `json-schema` feature of `outbox`; event types, versions, topics, aggregates, aggregate id and key fields were compared";

impl CheckReport {
    /// The findings that can break consumers.
    pub fn breaking(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.change.is_breaking())
    }

    /// `true` when nothing breaks consumers of the snapshot.
    pub fn is_compatible(&self) -> bool {
        self.breaking().next().is_none()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in self.breaking() {
            writeln!(f, "breaking: {finding}")?;
        }
        for finding in self.findings.iter().filter(|x| !x.change.is_breaking()) {
            writeln!(f, "compatible: {finding}")?;
        }
        if !self.schemas_compared {
            writeln!(f, "note: {SCHEMAS_NOT_COMPARED}")?;
        }
        let checked = plural(self.compiled, "event contract");
        match self.breaking().count() {
            0 => write!(f, "{checked} checked: compatible with the snapshot"),
            n => write!(
                f,
                "{checked} checked, {}: declare the change as a new `version` of the event (keeping the old version while consumers need it), or revert it",
                plural(n, "breaking change")
            ),
        }
    }
}

/// `1 breaking change`, `2 breaking changes`.
pub(crate) fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

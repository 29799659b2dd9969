//! How assertion messages list events: one line each, numbered.

use super::expect::Expectation;
use super::RecordedEvent;
use std::fmt::Write;

/// `1 event was`, `3 events were`.
pub(crate) fn were(n: usize) -> String {
    match n {
        1 => "1 event was".to_owned(),
        n => format!("{n} events were"),
    }
}

/// One line per published event: type, aggregate, data, event id.
pub(crate) fn published(events: &[&RecordedEvent]) -> String {
    let mut out = String::new();
    for (i, event) in events.iter().enumerate() {
        let e = &event.envelope;
        let _ = write!(
            out,
            "\n  {}. {} of {} `{}`: {} (event {})",
            i + 1,
            e.event_type,
            e.aggregate_type,
            e.aggregate_id,
            e.data,
            e.event_id
        );
    }
    out
}

/// One line per expected event: type, aggregate, data.
pub(crate) fn expected(expectations: &[Expectation]) -> String {
    let mut out = String::new();
    for (i, x) in expectations.iter().enumerate() {
        let data = match &x.data {
            Ok(data) => data.to_string(),
            Err(e) => format!("<cannot be serialized: {e}>"),
        };
        let _ = write!(
            out,
            "\n  {}. {} of {} `{}`: {data}",
            i + 1,
            x.event_type,
            x.aggregate_type,
            x.aggregate_id
        );
    }
    out
}

//! The comparisons behind the assertion helpers: each returns the failure
//! message, so the message is tested without panicking.

use super::expect::{Expectation, ExpectedEvent};
use super::listing::{self, were};
use super::RecordedEvent;
use serde_json::Value;

/// Nothing in `events` (of `aggregate_id`, when given).
pub(crate) fn nothing(
    events: &[RecordedEvent],
    origin: &str,
    aggregate_id: Option<&str>,
) -> Result<(), String> {
    exactly(events, &[], origin, aggregate_id)
}

/// `events` (of `aggregate_id`, when given) are `expected`, in order.
pub(crate) fn exactly(
    events: &[RecordedEvent],
    expected: &[&dyn ExpectedEvent],
    origin: &str,
    aggregate_id: Option<&str>,
) -> Result<(), String> {
    let expected: Vec<Expectation> = expected.iter().map(|e| e.expectation()).collect();
    if let Some((i, x, error)) = expected
        .iter()
        .enumerate()
        .find_map(|(i, x)| x.data.as_ref().err().map(|error| (i, x, error)))
    {
        return Err(format!(
            "expected event {} (`{}`) cannot be serialized: {error}",
            i + 1,
            x.event_type
        ));
    }
    let (selected, others): (Vec<&RecordedEvent>, Vec<&RecordedEvent>) = events
        .iter()
        .partition(|e| aggregate_id.map_or(true, |id| e.envelope.aggregate_id == id));
    let matches =
        selected.len() == expected.len() && selected.iter().zip(&expected).all(|(p, x)| same(p, x));
    if matches {
        return Ok(());
    }
    let scope = match aggregate_id {
        Some(id) => format!(" for aggregate `{id}`"),
        None => String::new(),
    };
    let found = match selected.len() {
        0 => "none was".to_owned(),
        n => format!("{}:{}", were(n), listing::published(&selected)),
    };
    let mut message = if expected.is_empty() {
        format!("expected nothing{scope} {origin}, but {found}")
    } else {
        let these = match expected.len() {
            1 => "this event".to_owned(),
            n => format!("these {n} events"),
        };
        format!(
            "expected exactly {these}{scope} {origin}, in this order:{}\nbut {found}\nfirst difference: {}",
            listing::expected(&expected),
            first_difference(&selected, &expected)
        )
    };
    if aggregate_id.is_some() && !others.is_empty() {
        message.push_str(&format!(
            "\nfor other aggregates, {}:{}",
            were(others.len()),
            listing::published(&others)
        ));
    }
    Err(message)
}

fn same(published: &RecordedEvent, expected: &Expectation) -> bool {
    let e = &published.envelope;
    e.event_type == expected.event_type
        && e.aggregate_type == expected.aggregate_type
        && e.aggregate_id == expected.aggregate_id
        && expected.data.as_ref().is_ok_and(|data| *data == e.data)
}

fn first_difference(published: &[&RecordedEvent], expected: &[Expectation]) -> String {
    for i in 0..published.len().max(expected.len()) {
        let n = i + 1;
        let (p, x) = match (published.get(i), expected.get(i)) {
            (Some(p), Some(x)) if same(p, x) => continue,
            (Some(p), Some(x)) => (&p.envelope, x),
            (None, Some(x)) => {
                return format!(
                    "event {n} (`{}`) was expected but not published",
                    x.event_type
                )
            }
            (Some(p), None) => {
                return format!(
                    "event {n} (`{}`) was published but not expected",
                    p.envelope.event_type
                )
            }
            (None, None) => break,
        };
        if p.event_type != x.event_type {
            return format!(
                "event {n} is `{}`, expected `{}`",
                p.event_type, x.event_type
            );
        }
        if (p.aggregate_type.as_str(), p.aggregate_id.as_str())
            != (x.aggregate_type, x.aggregate_id.as_str())
        {
            return format!(
                "event {n} is of {} `{}`, expected {} `{}`",
                p.aggregate_type, p.aggregate_id, x.aggregate_type, x.aggregate_id
            );
        }
        if let Ok(data) = &x.data {
            return format!(
                "event {n} (`{}`) {}",
                p.event_type,
                data_difference(&p.data, data)
            );
        }
    }
    "none found".to_owned()
}

/// Which fields of the data differ, and how.
fn data_difference(published: &Value, expected: &Value) -> String {
    let (Value::Object(p), Value::Object(x)) = (published, expected) else {
        return format!("has data {published}, expected {expected}");
    };
    let mut keys: Vec<&String> = p.keys().chain(x.keys()).collect();
    keys.sort();
    keys.dedup();
    let shown = |v: Option<&Value>| v.map_or_else(|| "absent".to_owned(), Value::to_string);
    let fields: Vec<String> = keys
        .into_iter()
        .filter(|k| p.get(*k) != x.get(*k))
        .map(|k| format!("`{k}` is {}, expected {}", shown(p.get(k)), shown(x.get(k))))
        .collect();
    format!("differs in data: {}", fields.join("; "))
}

//! Whether a stored row's `event_data` is an envelope the relay may send.
//!
//! A row written by hand may hold any JSON; the relay requires an object
//! with `event_id`, `event_type` and `data` at its top level. The column is
//! `json`, so PostgreSQL has already checked that the text is valid JSON:
//! what is left is to find three top-level keys. The fast path reads the
//! top-level keys in order and stops once the three are seen, skipping
//! values without building them, so the large `data` value is usually never
//! read. Anything it does not decide (an escaped key, text that is not what
//! it expects) goes to a full parse with serde.

use serde::Deserialize;

/// The fields to find at the top of a stored envelope; the values are
/// skipped, not built.
#[derive(Deserialize)]
struct EnvelopeShape {
    #[serde(rename = "event_id")]
    _event_id: serde::de::IgnoredAny,
    #[serde(rename = "event_type")]
    _event_type: serde::de::IgnoredAny,
    #[serde(rename = "data")]
    _data: serde::de::IgnoredAny,
}

/// Whether `json` (text PostgreSQL accepted as `json`) is an object with
/// `event_id`, `event_type` and `data` at its top level.
pub(crate) fn is_envelope(json: &str) -> bool {
    top_level_keys(json.as_bytes())
        .unwrap_or_else(|| serde_json::from_str::<EnvelopeShape>(json).is_ok())
}

/// The fast path: `Some(answer)`, or `None` when a full parse must decide.
fn top_level_keys(json: &[u8]) -> Option<bool> {
    let mut i = skip_whitespace(json, 0);
    if json.get(i) != Some(&b'{') {
        // Valid JSON that is not an object; anything else goes to serde.
        return matches!(
            json.get(i),
            Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')
        )
        .then_some(false);
    }
    i += 1;
    let (mut event_id, mut event_type, mut data) = (false, false, false);
    loop {
        i = skip_whitespace(json, i);
        match json.get(i)? {
            b'"' => {}
            b'}' => return Some(false),
            _ => return None,
        }
        let start = i + 1;
        let end = start
            + json[start..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\')?;
        if json[end] == b'\\' {
            return None;
        }
        match &json[start..end] {
            b"event_id" => event_id = true,
            b"event_type" => event_type = true,
            b"data" => data = true,
            _ => {}
        }
        if event_id && event_type && data {
            return Some(true);
        }
        i = skip_whitespace(json, end + 1);
        if json.get(i)? != &b':' {
            return None;
        }
        i = skip_value(json, skip_whitespace(json, i + 1))?;
        i = skip_whitespace(json, i);
        match json.get(i)? {
            b',' => i += 1,
            b'}' => return Some(false),
            _ => return None,
        }
    }
}

fn skip_whitespace(json: &[u8], mut i: usize) -> usize {
    while matches!(json.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index after the value starting at `i`.
fn skip_value(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => skip_string(json, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match json.get(j)? {
                    b'"' => {
                        j = skip_string(json, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let len = json[i..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))?;
            Some(i + len)
        }
    }
}

/// The index after the string whose opening quote is at `i`.
fn skip_string(json: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        j += memchr::memchr2(b'"', b'\\', json.get(j..)?)?;
        if json[j] == b'\\' {
            j += 2;
        } else {
            return Some(j + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_needs_an_object_with_the_three_keys() {
        assert!(is_envelope(
            r#"{"event_id": "x", "event_type": "E", "data": null, "more": [1]}"#
        ));
        assert!(!is_envelope(r#""just a string""#));
        assert!(!is_envelope(r#"{"hello": 1}"#));
        assert!(!is_envelope(r#"{"event_id": "x", "event_type": "E"}"#));
        assert!(!is_envelope(
            r#"[{"event_id": "x", "event_type": "E", "data": {}}]"#
        ));
        assert!(!is_envelope("{not json"));
        assert!(!is_envelope(""));
        assert!(!is_envelope("  42 "));
    }

    #[test]
    fn keys_inside_values_do_not_count() {
        let nested = r#"{"data": {"event_id": 1, "event_type": 2}, "x": "\"event_id\": 1"}"#;
        assert!(!is_envelope(nested));
        let in_array =
            r#"{"event_id": "a", "list": [{"data": 1}, "event_type"], "event_type": "E"}"#;
        assert!(!is_envelope(in_array));
    }

    #[test]
    fn the_fast_path_agrees_with_a_full_parse() {
        let cases = [
            r#"{"event_type":"E","version":1,"event_id":"0190","data":{"s":"a\"b\\","n":[1,{"k":null}]},"metadata":{}}"#,
            r#"{ "data" : [] , "event_id" : -1.5e3 , "event_type" : true }"#,
            "{\n\t\"metadata\": {\"a\": [[], {}]},\n\t\"event_id\": \"\\u0041\",\n\t\"event_type\": \"E\",\n\t\"data\": false\n}",
            r#"{"event_id": "x", "event_type": "E", "dat": 1}"#,
            r#"{"event_\u0069d": "x", "event_type": "E", "data": 1}"#,
            r#"{}"#,
            r#"{"a": "}", "b": "{[", "event_id": 0, "event_type": 0, "data": 0}"#,
        ];
        for json in cases {
            let full = serde_json::from_str::<EnvelopeShape>(json).is_ok();
            assert_eq!(is_envelope(json), full, "{json}");
            if let Some(fast) = top_level_keys(json.as_bytes()) {
                assert_eq!(fast, full, "fast path on {json}");
            }
        }
        // The escaped key is left to serde, which reads it as `event_id`.
        assert_eq!(top_level_keys(br#"{"event_\u0069d": 1}"#), None);
    }

    #[test]
    fn the_data_value_is_not_read_once_the_keys_are_seen() {
        // Truncated after `data`'s key: only a reader that stops there
        // answers true.
        assert_eq!(
            top_level_keys(br#"{"event_id": "x", "event_type": "E", "data": {"body": "xxxx"#),
            Some(true)
        );
    }
}

//! The naming rules for topics, aggregate types and event types. Each
//! returns the message to show on the offending literal.

/// Kafka rejects longer topic names.
pub(crate) const MAX_TOPIC_LEN: usize = 249;
/// Aggregate types are stored in a bounded column and used in metric labels.
pub(crate) const MAX_AGGREGATE_LEN: usize = 100;
/// Event types share the topic alphabet and limit so they can name topics.
pub(crate) const MAX_EVENT_TYPE_LEN: usize = 249;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn first_invalid_char(value: &str) -> Option<char> {
    value.chars().find(|&c| !is_name_char(c))
}

/// A Kafka topic name: `[A-Za-z0-9._-]{1,249}`, and not `.` or `..`.
pub(crate) fn topic(value: &str) -> Result<(), String> {
    const ALLOWED: &str =
        "use only ASCII letters, digits, `.`, `_` and `-`, e.g. `files.file-uploaded.v1`";
    if value.is_empty() {
        return Err(format!("topic must not be empty: {ALLOWED}"));
    }
    if let Some(c) = first_invalid_char(value) {
        return Err(format!("invalid character {c:?} in topic: {ALLOWED}"));
    }
    let len = value.len();
    if len > MAX_TOPIC_LEN {
        return Err(format!(
            "topic is {len} characters long: Kafka allows at most {MAX_TOPIC_LEN}, shorten it"
        ));
    }
    if value == "." || value == ".." {
        return Err(format!(
            "topic `{value}` is not allowed by Kafka: use a name such as `files.file-uploaded.v1`"
        ));
    }
    Ok(())
}

/// An aggregate type: `snake_case`, `^[a-z][a-z0-9_]*$`, at most 100 characters.
pub(crate) fn aggregate(value: &str) -> Result<(), String> {
    const EXPECTED: &str = "expected snake_case like `file_upload`: a lowercase ASCII letter, then lowercase letters, digits or `_`";
    let mut chars = value.chars();
    let starts_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if value.is_empty() {
        return Err(format!("aggregate must not be empty: {EXPECTED}"));
    }
    if !starts_ok || !rest_ok {
        return Err(format!("invalid aggregate `{value}`: {EXPECTED}"));
    }
    let len = value.len();
    if len > MAX_AGGREGATE_LEN {
        return Err(format!(
            "aggregate is {len} characters long: at most {MAX_AGGREGATE_LEN} are allowed, shorten it"
        ));
    }
    Ok(())
}

/// An envelope event type: `[A-Za-z0-9._-]{1,249}`.
pub(crate) fn event_type(value: &str) -> Result<(), String> {
    const ALLOWED: &str =
        "use only ASCII letters, digits, `.`, `_` and `-`, e.g. `BatchFileAddedV1`";
    if value.is_empty() {
        return Err(format!("event type must not be empty: {ALLOWED}"));
    }
    if let Some(c) = first_invalid_char(value) {
        return Err(format!("invalid character {c:?} in event type: {ALLOWED}"));
    }
    let len = value.len();
    if len > MAX_EVENT_TYPE_LEN {
        return Err(format!(
            "event type is {len} characters long: at most {MAX_EVENT_TYPE_LEN} are allowed, shorten it"
        ));
    }
    Ok(())
}

/// The `N` of a topic ending in `.vN`, as written.
pub(crate) fn topic_version_suffix(topic: &str) -> Option<&str> {
    let (_, suffix) = topic.rsplit_once(".v")?;
    let all_digits = !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit());
    all_digits.then_some(suffix)
}

/// A topic ending in `.vN` names the schema version of its events: `N` must
/// be the event's `version`. `version_given` says whether `version = ...`
/// was written, for the message.
pub(crate) fn topic_version(topic: &str, version: u32, version_given: bool) -> Result<(), String> {
    let Some(suffix) = topic_version_suffix(topic) else {
        return Ok(());
    };
    if suffix.parse::<u32>() == Ok(version) {
        return Ok(());
    }
    let stem = &topic[..topic.len() - suffix.len()];
    let default = if version_given { "" } else { " (the default)" };
    Err(format!(
        "topic `{topic}` ends in `.v{suffix}` but the event's `version` is {version}{default}: \
         set `version = {suffix}`, or name the topic `{stem}{version}`; \
         if the topic's suffix is not the event's version, add `allow_topic_version_mismatch`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        for ok in [
            "files.file-uploaded.v1",
            "a",
            "A_b-c.9",
            "...",
            &"t".repeat(249),
        ] {
            assert_eq!(topic(ok), Ok(()), "{ok}");
        }
        let err = |v: &str| topic(v).unwrap_err();
        assert!(err("").contains("must not be empty"));
        assert!(err("files/uploaded").contains("invalid character '/'"));
        assert!(err("files uploaded").contains("invalid character ' '"));
        assert!(err("fichiers-téléversés").contains("invalid character 'é'"));
        assert!(err(&"t".repeat(250)).contains("250 characters long"));
        assert!(err(".").contains("topic `.` is not allowed"));
        assert!(err("..").contains("topic `..` is not allowed"));
    }

    #[test]
    fn aggregates() {
        for ok in ["file_upload", "a", "batch2", "a_", &"a".repeat(100)] {
            assert_eq!(aggregate(ok), Ok(()), "{ok}");
        }
        for bad in [
            "FileUpload",
            "file-upload",
            "_file",
            "2fa",
            "file.upload",
            "fileUpload",
            "é",
        ] {
            let msg = aggregate(bad).unwrap_err();
            assert!(
                msg.contains("expected snake_case like `file_upload`"),
                "{bad}: {msg}"
            );
        }
        assert!(aggregate("").unwrap_err().contains("must not be empty"));
        assert!(aggregate(&"a".repeat(101))
            .unwrap_err()
            .contains("101 characters long"));
    }

    #[test]
    fn event_types() {
        for ok in [
            "BatchFileAddedV1",
            "files.added",
            "x-y_z.1",
            &"E".repeat(249),
        ] {
            assert_eq!(event_type(ok), Ok(()), "{ok}");
        }
        assert!(event_type("").unwrap_err().contains("must not be empty"));
        assert!(event_type("a::B")
            .unwrap_err()
            .contains("invalid character ':'"));
        assert!(event_type(&"E".repeat(250))
            .unwrap_err()
            .contains("250 characters long"));
    }

    #[test]
    fn topic_versions() {
        for (topic, version) in [
            ("files.file-uploaded.v1", 1),
            ("files.file-uploaded.v2", 2),
            ("files.file-uploaded.v01", 1),
            ("files.file-uploaded", 3),
            ("files.v2.uploaded", 1),
            ("files.file-uploaded.v", 1),
            ("files.file-uploaded.v2x", 1),
            ("files.file-uploaded-v2", 1),
        ] {
            assert_eq!(topic_version(topic, version, true), Ok(()), "{topic}");
        }
        let err = topic_version("files.file-uploaded.v2", 1, false).unwrap_err();
        assert_eq!(
            err,
            "topic `files.file-uploaded.v2` ends in `.v2` but the event's `version` is 1 (the default): \
             set `version = 2`, or name the topic `files.file-uploaded.v1`; \
             if the topic's suffix is not the event's version, add `allow_topic_version_mismatch`"
        );
        let err = topic_version("t.v1", 3, true).unwrap_err();
        assert!(err.contains("`version` is 3: set `version = 1`"), "{err}");
        assert!(err.contains("name the topic `t.v3`"), "{err}");
        assert!(topic_version("t.v99999999999", 1, true).is_err());
        assert_eq!(topic_version_suffix("a.v12"), Some("12"));
        assert_eq!(topic_version_suffix("a.v12.b"), None);
    }
}

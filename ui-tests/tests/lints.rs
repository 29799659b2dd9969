//! The derive's output compiles under a strict lint set: generated code must
//! never make a user's `#![deny(...)]` fail. `cargo clippy --all-targets`
//! checks the clippy groups.

#![deny(
    unused,
    unsafe_code,
    unused_qualifications,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    unused_results,
    unused_import_braces,
    unused_lifetimes,
    single_use_lifetimes,
    trivial_casts,
    trivial_numeric_casts,
    elided_lifetimes_in_paths,
    explicit_outlives_requirements,
    meta_variable_misuse,
    non_ascii_idents,
    unnameable_types,
    let_underscore_drop,
    rust_2018_idioms,
    future_incompatible,
    nonstandard_style,
    clippy::all,
    clippy::pedantic
)]

use std::any::TypeId;
use std::fmt::{self, Display};
use std::string::{String, ToString};

use outbox::{EventRegistration, OutboxEvent};
use serde::Serialize;

/// Aggregate id with its own `Display`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FileUploadId(pub u64);

impl Display for FileUploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fu-{}", self.0)
    }
}

/// A file was uploaded.
#[derive(Debug, Serialize, OutboxEvent)]
#[outbox_event(topic = "files.file-uploaded.v1", aggregate = "file_upload")]
pub struct FileUploadedV1 {
    /// The upload.
    #[outbox_event(aggregate_id)]
    pub file_upload_id: FileUploadId,
    /// The batch, used as the partition key.
    #[outbox_event(key)]
    pub batch_id: String,
    /// Raw identifier field.
    pub r#type: String,
}

/// Names the generated code also uses, in scope by their short names.
mod shadowing {
    #![allow(dead_code, non_camel_case_types, clippy::upper_case_acronyms)]

    /// A local `String` that generated code must not pick up.
    #[derive(Debug)]
    pub(crate) struct String;
    /// A local `Option` that generated code must not pick up.
    #[derive(Debug)]
    pub(crate) struct Option;
    /// A local `TypeId` that generated code must not pick up.
    #[derive(Debug)]
    pub(crate) struct TypeId;
    /// A local trait named like the derived one.
    pub(crate) trait OutboxEvent {}
    /// A local module named like the facade.
    pub(crate) mod outbox {}
    /// A local `core` module.
    pub(crate) mod core {}

    /// Derived next to the shadowing names above.
    #[derive(Debug, serde::Serialize, ::outbox::OutboxEvent)]
    #[outbox_event(topic = "files.file-deleted.v1", aggregate = "file_upload")]
    pub(crate) struct FileDeletedV1 {
        /// The upload.
        #[outbox_event(aggregate_id)]
        pub(crate) file_upload_id: u64,
    }
}

fn registration_of<E: OutboxEvent>() -> EventRegistration {
    E::REGISTRATION
}

#[test]
fn derived_code_is_lint_clean_and_correct() {
    let event = FileUploadedV1 {
        file_upload_id: FileUploadId(7),
        batch_id: "b-1".to_string(),
        r#type: String::from("essay"),
    };
    assert_eq!(event.aggregate_id(), "fu-7");
    assert_eq!(event.partition_key(), "b-1");
    assert_eq!(event.r#type, "essay");
    let registration = registration_of::<FileUploadedV1>();
    assert_eq!((registration.type_id)(), TypeId::of::<FileUploadedV1>());
    assert_eq!(registration.description, "A file was uploaded.");

    let deleted = shadowing::FileDeletedV1 { file_upload_id: 3 };
    assert_eq!(deleted.aggregate_id(), "3");
    assert_eq!(
        registration_of::<shadowing::FileDeletedV1>().event_type,
        "FileDeletedV1"
    );
}

//! JSON schemas of event payloads (feature `json-schema`), used by
//! `#[outbox_event(json_schema)]` and the AsyncAPI export (`outbox::registry::asyncapi`).

/// The JSON Schema (draft-07, the dialect AsyncAPI 3.0 schemas extend) of
/// `T`, with its definitions under `definitions`.
///
/// ```
/// #[derive(schemars::JsonSchema)]
/// struct FileUploadedV1 {
///     file_upload_id: u64,
/// }
///
/// let schema = outbox::registry::payload_schema::<FileUploadedV1>();
/// assert_eq!(schema["properties"]["file_upload_id"]["type"], "integer");
/// ```
pub fn payload_schema<T: schemars::JsonSchema>() -> serde_json::Value {
    schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

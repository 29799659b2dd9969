//! The payload rules, one pair of schemas per rule, shaped like the draft-07
//! schemas schemars writes for serde structs.

use serde_json::{json, Value};

use super::schema::{compare_schemas, SchemaChangeKind as K};

/// `{ file_upload_id: u64, batch_id: String, note: Option<String> }`.
fn base() -> Value {
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "BatchFileAddedV1",
        "type": "object",
        "required": ["file_upload_id", "batch_id"],
        "properties": {
            "file_upload_id": { "type": "integer", "format": "uint64", "minimum": 0 },
            "batch_id": { "type": "string" },
            "note": { "type": ["string", "null"] }
        }
    })
}

fn edit(f: impl FnOnce(&mut Value)) -> Value {
    let mut schema = base();
    f(&mut schema);
    schema
}

/// The changes as `(field, kind)`.
fn changes(old: &Value, new: &Value) -> Vec<(String, K)> {
    compare_schemas(old, new)
        .into_iter()
        .map(|c| (c.field, c.kind))
        .collect()
}

fn one(field: &str, kind: K) -> Vec<(String, K)> {
    vec![(field.to_owned(), kind)]
}

fn breaking(old: &Value, new: &Value) -> Vec<String> {
    compare_schemas(old, new)
        .iter()
        .filter(|c| c.is_breaking())
        .map(ToString::to_string)
        .collect()
}

// Breaking changes.

#[test]
fn removing_a_required_field_breaks() {
    let new = edit(|s| {
        s["properties"].as_object_mut().unwrap().remove("batch_id");
        s["required"] = json!(["file_upload_id"]);
    });
    assert_eq!(changes(&base(), &new), one("batch_id", K::FieldRemoved));
    assert_eq!(breaking(&base(), &new), ["field `batch_id` removed"]);
}

#[test]
fn removing_an_optional_field_breaks() {
    let new = edit(|s| {
        s["properties"].as_object_mut().unwrap().remove("note");
    });
    assert_eq!(changes(&base(), &new), one("note", K::FieldRemoved));
}

#[test]
fn renaming_a_field_breaks_and_names_both() {
    let new = edit(|s| {
        let props = s["properties"].as_object_mut().unwrap();
        let note = props.remove("note").unwrap();
        props.insert("comment".into(), note);
    });
    assert_eq!(
        breaking(&base(), &new),
        ["field `note` renamed to `comment`"]
    );
}

#[test]
fn changing_a_type_breaks() {
    let new = edit(|s| s["properties"]["file_upload_id"] = json!({ "type": "string" }));
    assert_eq!(
        changes(&base(), &new),
        one(
            "file_upload_id",
            K::TypeChanged {
                from: "integer".into(),
                to: "string".into()
            }
        )
    );
}

#[test]
fn an_optional_field_becoming_required_breaks() {
    let new = edit(|s| {
        s["required"] = json!(["file_upload_id", "batch_id", "note"]);
        s["properties"]["note"] = json!({ "type": "string" });
    });
    assert_eq!(
        changes(&base(), &new),
        [
            ("note".to_owned(), K::BecameRequired),
            ("note".to_owned(), K::NoLongerNullable),
        ]
    );
}

#[test]
fn a_required_field_becoming_optional_breaks() {
    let new = edit(|s| s["required"] = json!(["file_upload_id"]));
    assert_eq!(changes(&base(), &new), one("batch_id", K::BecameOptional));
}

#[test]
fn adding_a_required_field_breaks() {
    let new = edit(|s| {
        s["properties"]["size_bytes"] =
            json!({ "type": "integer", "format": "uint64", "minimum": 0 });
        s["required"] = json!(["file_upload_id", "batch_id", "size_bytes"]);
    });
    assert_eq!(
        breaking(&base(), &new),
        ["field `size_bytes` added as required: events already on the topic lack it"]
    );
}

#[test]
fn accepting_null_breaks_and_so_does_refusing_it() {
    let nullable = edit(|s| s["properties"]["batch_id"] = json!({ "type": ["string", "null"] }));
    assert_eq!(changes(&base(), &nullable), one("batch_id", K::NowNullable));
    assert_eq!(
        changes(&nullable, &base()),
        one("batch_id", K::NoLongerNullable)
    );
}

#[test]
fn removing_or_adding_an_enum_value_breaks() {
    let with_status = |values: Value| {
        edit(|s| s["properties"]["status"] = json!({ "type": "string", "enum": values }))
    };
    let old = with_status(json!(["accepted", "rejected"]));
    assert_eq!(
        changes(&old, &with_status(json!(["accepted"]))),
        one(
            "status",
            K::EnumValuesRemoved {
                values: vec!["\"rejected\"".into()]
            }
        )
    );
    assert_eq!(
        changes(
            &old,
            &with_status(json!(["accepted", "rejected", "pending"]))
        ),
        one(
            "status",
            K::EnumValuesAdded {
                values: vec!["\"pending\"".into()]
            }
        )
    );
}

#[test]
fn changing_a_format_breaks() {
    let new = edit(|s| s["properties"]["file_upload_id"]["format"] = json!("uint32"));
    assert_eq!(
        breaking(&base(), &new),
        ["field `file_upload_id` changed format from `uint64` to `uint32`"]
    );
    let uuid =
        edit(|s| s["properties"]["batch_id"] = json!({ "type": "string", "format": "uuid" }));
    assert_eq!(
        breaking(&uuid, &base()),
        ["field `batch_id` changed format from `uuid` to none"]
    );
}

#[test]
fn changing_a_validation_keyword_breaks() {
    let new = edit(|s| s["properties"]["file_upload_id"]["minimum"] = json!(1));
    assert_eq!(
        changes(&base(), &new),
        one(
            "file_upload_id",
            K::KeywordChanged {
                keyword: "minimum".into()
            }
        )
    );
}

#[test]
fn adding_a_field_to_a_closed_object_breaks() {
    let closed = edit(|s| s["additionalProperties"] = json!(false));
    let new = edit(|s| {
        s["additionalProperties"] = json!(false);
        s["properties"]["tag"] = json!({ "type": ["string", "null"] });
    });
    assert_eq!(
        changes(&closed, &new),
        one("tag", K::FieldAddedToClosedObject)
    );
}

#[test]
fn changes_inside_referenced_definitions_name_the_nested_field() {
    let with_file = |size: Value| {
        edit(|s| {
            s["properties"]["file"] = json!({ "$ref": "#/definitions/FileRef" });
            s["definitions"] = json!({ "FileRef": {
                "type": "object",
                "required": ["name", "size_bytes"],
                "properties": { "name": { "type": "string" }, "size_bytes": size }
            }});
        })
    };
    let old = with_file(json!({ "type": "integer", "format": "uint64", "minimum": 0 }));
    let new = with_file(json!({ "type": "string" }));
    assert_eq!(
        breaking(&old, &new),
        ["field `file.size_bytes` changed type from integer to string"]
    );
}

#[test]
fn array_items_and_map_values_are_compared() {
    let old = edit(|s| {
        s["properties"]["tags"] = json!({ "type": "array", "items": { "type": "string" } });
        s["properties"]["labels"] =
            json!({ "type": "object", "additionalProperties": { "type": "string" } });
    });
    let new = edit(|s| {
        s["properties"]["tags"] = json!({ "type": "array", "items": { "type": "integer" } });
        s["properties"]["labels"] =
            json!({ "type": "object", "additionalProperties": { "type": "boolean" } });
    });
    assert_eq!(
        breaking(&old, &new),
        [
            "field `labels.*` changed type from string to boolean",
            "field `tags[]` changed type from string to integer",
        ]
    );
}

#[test]
fn a_new_enum_variant_with_data_breaks() {
    let origin = |alternatives: Value| {
        edit(|s| s["properties"]["origin"] = json!({ "oneOf": alternatives }))
    };
    let upload = json!({ "type": "string", "const": "Upload" });
    let import = json!({ "type": "object", "required": ["Import"],
        "properties": { "Import": { "type": "string" } } });
    let old = origin(json!([upload]));
    let new = origin(json!([upload, import]));
    assert_eq!(
        breaking(&old, &new),
        ["field `origin` changed from 1 to 2 `oneOf` alternatives"]
    );
}

#[test]
fn an_optional_struct_becoming_required_breaks() {
    let file = json!({ "type": "object", "properties": { "name": { "type": "string" } } });
    let old = edit(|s| {
        s["properties"]["file"] =
            json!({ "anyOf": [{ "$ref": "#/definitions/FileRef" }, { "type": "null" }] });
        s["definitions"] = json!({ "FileRef": file.clone() });
    });
    let new = edit(|s| {
        s["properties"]["file"] = json!({ "$ref": "#/definitions/FileRef" });
        s["definitions"] = json!({ "FileRef": file });
        s["required"] = json!(["file_upload_id", "batch_id", "file"]);
    });
    assert_eq!(
        changes(&old, &new),
        [
            ("file".to_owned(), K::BecameRequired),
            ("file".to_owned(), K::NoLongerNullable),
        ]
    );
}

// Allowed changes.

#[test]
fn adding_an_optional_field_is_compatible() {
    let new = edit(|s| s["properties"]["comment"] = json!({ "type": ["string", "null"] }));
    assert_eq!(
        changes(&base(), &new),
        one("comment", K::OptionalFieldAdded)
    );
    assert!(breaking(&base(), &new).is_empty());
    assert_eq!(
        compare_schemas(&base(), &new)[0].to_string(),
        "optional field `comment` added"
    );
}

#[test]
fn documentation_changes_are_compatible() {
    let new = edit(|s| {
        s["title"] = json!("BatchFileAdded");
        s["description"] = json!("A file was added to a batch.");
        s["properties"]["batch_id"]["description"] = json!("The batch.");
        s["properties"]["note"]["examples"] = json!(["late upload"]);
    });
    assert!(changes(&base(), &new).is_empty());
}

#[test]
fn property_and_required_order_do_not_matter() {
    let new = json!({
        "type": "object",
        "properties": {
            "note": { "type": ["null", "string"] },
            "batch_id": { "type": "string" },
            "file_upload_id": { "minimum": 0, "format": "uint64", "type": "integer" }
        },
        "required": ["batch_id", "file_upload_id"]
    });
    assert!(changes(&base(), &new).is_empty());
}

#[test]
fn renaming_a_definition_is_compatible() {
    let with_definition = |name: &str| {
        edit(|s| {
            s["properties"]["file"] = json!({ "$ref": format!("#/definitions/{name}") });
            s["definitions"] = json!({ name: {
                "type": "object", "required": ["name"],
                "properties": { "name": { "type": "string" } }
            }});
        })
    };
    assert!(changes(&with_definition("FileRef"), &with_definition("StoredFile")).is_empty());
}

#[test]
fn an_optional_field_added_in_a_nested_object_is_compatible() {
    let with_file = |extra: bool| {
        edit(|s| {
            s["properties"]["file"] = json!({ "$ref": "#/definitions/FileRef" });
            let mut props = json!({ "name": { "type": "string" } });
            if extra {
                props["mime_type"] = json!({ "type": ["string", "null"] });
            }
            s["definitions"] = json!({ "FileRef": { "type": "object", "required": ["name"], "properties": props } });
        })
    };
    assert_eq!(
        changes(&with_file(false), &with_file(true)),
        one("file.mime_type", K::OptionalFieldAdded)
    );
}

#[test]
fn recursive_definitions_are_compared_once() {
    let tree = json!({
        "type": "object",
        "properties": { "root": { "$ref": "#/definitions/Node" } },
        "definitions": { "Node": {
            "type": "object", "required": ["children"],
            "properties": { "children": { "type": "array", "items": { "$ref": "#/definitions/Node" } } }
        }}
    });
    assert!(changes(&tree, &tree).is_empty());
}

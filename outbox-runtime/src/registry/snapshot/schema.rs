//! Compatibility of two payload JSON schemas of one event type and version.
//!
//! The model is Confluent's FULL compatibility for JSON Schema: BACKWARD
//! (a consumer on the new schema reads events written under the snapshot's,
//! which stay on the topic) and FORWARD (a consumer still on the snapshot's
//! schema reads events written under the new one). Payloads are written by
//! serde from the declared struct, so they hold only declared properties;
//! consumers ignore unknown properties unless the schema closes the object
//! with `additionalProperties: false`. One rule is stricter than Confluent's:
//! removing an optional property is breaking, since its consumers would
//! silently read nothing from then on. `docs/guide/event-contracts.md` lists
//! the rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

/// One difference between the snapshot's schema and the compiled one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaChange {
    /// Where in the payload, e.g. `file.size_bytes`, `tags[]`, `labels.*`;
    /// empty for the payload itself.
    pub field: String,
    /// What changed.
    pub kind: SchemaChangeKind,
}

/// The kinds of [`SchemaChange`]; only [`OptionalFieldAdded`] is compatible.
///
/// [`OptionalFieldAdded`]: SchemaChangeKind::OptionalFieldAdded
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaChangeKind {
    /// The property is gone: consumers reading it break or silently get nothing.
    FieldRemoved,
    /// The property is gone and another with the same schema appeared.
    FieldRenamed {
        /// The new name.
        to: String,
    },
    /// A new required property: events already on the topic lack it.
    RequiredFieldAdded,
    /// A new property in an object the snapshot closes with
    /// `additionalProperties: false`: its consumers reject it.
    FieldAddedToClosedObject,
    /// A new optional property: compatible.
    OptionalFieldAdded,
    /// An optional property became required.
    BecameRequired,
    /// A required property became optional.
    BecameOptional,
    /// The JSON type changed.
    TypeChanged {
        /// The snapshot's types, e.g. `integer`.
        from: String,
        /// The compiled types.
        to: String,
    },
    /// The value may now be `null`.
    NowNullable,
    /// The value may no longer be `null`.
    NoLongerNullable,
    /// `enum` lost values that events on the topic may hold.
    EnumValuesRemoved {
        /// The removed values, as JSON.
        values: Vec<String>,
    },
    /// `enum` gained values that consumers of the snapshot reject.
    EnumValuesAdded {
        /// The added values, as JSON.
        values: Vec<String>,
    },
    /// The `format` changed, e.g. `uint32` to `uint64` or `uuid` to none.
    FormatChanged {
        /// The snapshot's format.
        from: Option<String>,
        /// The compiled format.
        to: Option<String>,
    },
    /// A different number of `anyOf` / `oneOf` / `allOf` alternatives, e.g.
    /// an enum variant added or removed.
    AlternativesChanged {
        /// `anyOf`, `oneOf` or `allOf`.
        keyword: String,
        /// The snapshot's count.
        from: usize,
        /// The compiled count.
        to: usize,
    },
    /// Any other validation keyword changed (`maximum`, `pattern`, ...):
    /// the set of valid payloads is different.
    KeywordChanged {
        /// The keyword.
        keyword: String,
    },
}

impl SchemaChange {
    /// Whether consumers can break: everything but an optional field added.
    pub fn is_breaking(&self) -> bool {
        !matches!(self.kind, SchemaChangeKind::OptionalFieldAdded)
    }
}

impl fmt::Display for SchemaChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SchemaChangeKind as K;
        let subject = if self.field.is_empty() {
            "the payload".to_owned()
        } else {
            format!("field `{}`", self.field)
        };
        match &self.kind {
            K::FieldRemoved => write!(f, "{subject} removed"),
            K::FieldRenamed { to } => write!(f, "{subject} renamed to `{to}`"),
            K::RequiredFieldAdded => write!(
                f,
                "{subject} added as required: events already on the topic lack it"
            ),
            K::FieldAddedToClosedObject => write!(
                f,
                "{subject} added to an object the snapshot closes with `additionalProperties: false`: its consumers reject it"
            ),
            K::OptionalFieldAdded => write!(f, "optional {subject} added"),
            K::BecameRequired => write!(
                f,
                "{subject} became required: events already on the topic may lack it"
            ),
            K::BecameOptional => write!(
                f,
                "{subject} is no longer required: consumers of the snapshot schema expect it"
            ),
            K::TypeChanged { from, to } => {
                write!(f, "{subject} changed type from {from} to {to}")
            }
            K::NowNullable => write!(
                f,
                "{subject} now accepts null: consumers of the snapshot schema do not"
            ),
            K::NoLongerNullable => write!(
                f,
                "{subject} no longer accepts null: events already on the topic may hold it"
            ),
            K::EnumValuesRemoved { values } => write!(
                f,
                "{subject} no longer allows {}: events already on the topic may hold them",
                values.join(", ")
            ),
            K::EnumValuesAdded { values } => write!(
                f,
                "{subject} allows new values {}: consumers of the snapshot schema reject them",
                values.join(", ")
            ),
            K::FormatChanged { from, to } => write!(
                f,
                "{subject} changed format from {} to {}",
                format_name(from.as_deref()),
                format_name(to.as_deref())
            ),
            K::AlternativesChanged { keyword, from, to } => write!(
                f,
                "{subject} changed from {from} to {to} `{keyword}` alternatives"
            ),
            K::KeywordChanged { keyword } => write!(f, "{subject} changed `{keyword}`"),
        }
    }
}

fn format_name(format: Option<&str>) -> String {
    match format {
        Some(format) => format!("`{format}`"),
        None => "none".to_owned(),
    }
}

/// Every difference between `old` (the snapshot's schema) and `new` (the
/// compiled one), compatible ones included, in a stable order.
///
/// ```
/// use outbox::registry::snapshot::compare_schemas;
/// use serde_json::json;
///
/// let old = json!({ "type": "object", "required": ["id"],
///                   "properties": { "id": { "type": "integer" } } });
/// let new = json!({ "type": "object", "required": ["id"],
///                   "properties": { "id": { "type": "string" } } });
/// let changes = compare_schemas(&old, &new);
/// assert_eq!(changes[0].to_string(), "field `id` changed type from integer to string");
/// assert!(changes[0].is_breaking());
/// ```
pub fn compare_schemas(old: &Value, new: &Value) -> Vec<SchemaChange> {
    compare_schemas_in(old, new, old, new)
}

/// Keywords that document and never change which payloads are valid.
const ANNOTATIONS: &[&str] = &[
    "$comment",
    "$id",
    "$schema",
    "$defs",
    "definitions",
    "default",
    "deprecated",
    "description",
    "examples",
    "readOnly",
    "title",
    "writeOnly",
];

/// Keywords compared by their own rule; every other one by equality.
const COMPARED: &[&str] = &[
    "$ref",
    "additionalProperties",
    "allOf",
    "anyOf",
    "enum",
    "format",
    "items",
    "oneOf",
    "properties",
    "required",
    "type",
];

/// `$ref` chains longer than this are treated as unresolvable.
const MAX_REF_HOPS: usize = 32;

struct Diff<'a> {
    old_root: &'a Value,
    new_root: &'a Value,
    changes: Vec<SchemaChange>,
    /// `$ref` pairs being compared further up, so recursive types end.
    visiting: BTreeSet<(String, String)>,
}

impl<'a> Diff<'a> {
    fn push(&mut self, field: &str, kind: SchemaChangeKind) {
        self.changes.push(SchemaChange {
            field: field.to_owned(),
            kind,
        });
    }

    fn compare(&mut self, old: &'a Value, new: &'a Value, field: &str) {
        let (old_ref, old) = resolve(self.old_root, old);
        let (new_ref, new) = resolve(self.new_root, new);
        if let (Some(old_ref), Some(new_ref)) = (old_ref, new_ref) {
            let pair = (old_ref.to_owned(), new_ref.to_owned());
            if !self.visiting.insert(pair.clone()) {
                return;
            }
            self.compare_resolved(old, new, field);
            self.visiting.remove(&pair);
        } else {
            self.compare_resolved(old, new, field);
        }
    }

    fn compare_resolved(&mut self, old: &'a Value, new: &'a Value, field: &str) {
        if !(old.is_object() && new.is_object()) {
            // `true` / `false` schemas, or a malformed one: equal or not.
            if old != new {
                self.push(
                    field,
                    SchemaChangeKind::KeywordChanged {
                        keyword: "schema".to_owned(),
                    },
                );
            }
            return;
        }
        let old = Node::of(old);
        let new = Node::of(new);
        match (old.nullable, new.nullable) {
            (false, true) => self.push(field, SchemaChangeKind::NowNullable),
            (true, false) => self.push(field, SchemaChangeKind::NoLongerNullable),
            _ => {}
        }
        match (old.inner, new.inner) {
            // Both are `anyOf: [X, {"type": "null"}]`: compare the Xs.
            (Some(old_inner), Some(new_inner)) => self.compare(old_inner, new_inner, field),
            // `Option<T>` written two ways (`anyOf` with null, or a type
            // list with "null") compares its non-null part.
            (Some(old_inner), None) => self.compare_nonnull(old_inner, new.schema, field),
            (None, Some(new_inner)) => self.compare_nonnull(old.schema, new_inner, field),
            (None, None) => self.compare_nodes(&old, &new, field),
        }
    }

    /// Compares a schema with the non-null part of a nullable one, the
    /// nullability itself already reported.
    fn compare_nonnull(&mut self, old: &'a Value, new: &'a Value, field: &str) {
        let (_, old) = resolve(self.old_root, old);
        let (_, new) = resolve(self.new_root, new);
        match (old.is_object(), new.is_object()) {
            (true, true) => {
                let mut old = Node::of(old);
                let mut new = Node::of(new);
                old.nullable = false;
                new.nullable = false;
                self.compare_nodes(&old, &new, field);
            }
            _ => self.compare(old, new, field),
        }
    }

    fn compare_nodes(&mut self, old: &Node<'a>, new: &Node<'a>, field: &str) {
        if old.types != new.types {
            self.push(
                field,
                SchemaChangeKind::TypeChanged {
                    from: type_names(&old.types),
                    to: type_names(&new.types),
                },
            );
            return;
        }
        self.compare_enum(old.schema, new.schema, field);
        let old_format = old.schema.get("format").and_then(Value::as_str);
        let new_format = new.schema.get("format").and_then(Value::as_str);
        if old_format != new_format {
            self.push(
                field,
                SchemaChangeKind::FormatChanged {
                    from: old_format.map(str::to_owned),
                    to: new_format.map(str::to_owned),
                },
            );
        }
        self.compare_properties(old.schema, new.schema, field);
        self.compare_subschema(old.schema, new.schema, "additionalProperties", field, ".*");
        self.compare_subschema(old.schema, new.schema, "items", field, "[]");
        for keyword in ["anyOf", "oneOf", "allOf"] {
            self.compare_alternatives(old.schema, new.schema, keyword, field);
        }
        self.compare_other_keywords(old.schema, new.schema, field);
    }

    fn compare_enum(&mut self, old: &'a Value, new: &'a Value, field: &str) {
        let values = |schema: &Value| -> Option<BTreeSet<String>> {
            let list = schema.get("enum")?.as_array()?;
            Some(list.iter().map(Value::to_string).collect())
        };
        match (values(old), values(new)) {
            (Some(old_values), Some(new_values)) => {
                let removed: Vec<String> = old_values.difference(&new_values).cloned().collect();
                let added: Vec<String> = new_values.difference(&old_values).cloned().collect();
                if !removed.is_empty() {
                    self.push(
                        field,
                        SchemaChangeKind::EnumValuesRemoved { values: removed },
                    );
                }
                if !added.is_empty() {
                    self.push(field, SchemaChangeKind::EnumValuesAdded { values: added });
                }
            }
            (None, None) => {}
            _ => self.push(
                field,
                SchemaChangeKind::KeywordChanged {
                    keyword: "enum".to_owned(),
                },
            ),
        }
    }

    fn compare_properties(&mut self, old: &'a Value, new: &'a Value, field: &str) {
        let old_props = properties(old);
        let new_props = properties(new);
        let old_required = required(old);
        let new_required = required(new);

        let removed: Vec<&String> = old_props
            .keys()
            .filter(|k| !new_props.contains_key(*k))
            .collect();
        let added: Vec<&String> = new_props
            .keys()
            .filter(|k| !old_props.contains_key(*k))
            .collect();

        if let ([from], [to]) = (removed.as_slice(), added.as_slice()) {
            let same_schema = compare_schemas_in(
                self.old_root,
                self.new_root,
                &old_props[from.as_str()],
                &new_props[to.as_str()],
            )
            .is_empty();
            let same_required =
                old_required.contains(from.as_str()) == new_required.contains(to.as_str());
            if same_schema && same_required {
                self.push(
                    &join(field, from),
                    SchemaChangeKind::FieldRenamed { to: (*to).clone() },
                );
                self.compare_common(old_props, new_props, &old_required, &new_required, field);
                return;
            }
        }
        for name in removed {
            self.push(&join(field, name), SchemaChangeKind::FieldRemoved);
        }
        let closed = old.get("additionalProperties") == Some(&Value::Bool(false));
        for name in added {
            let kind = if new_required.contains(name.as_str()) {
                SchemaChangeKind::RequiredFieldAdded
            } else if closed {
                SchemaChangeKind::FieldAddedToClosedObject
            } else {
                SchemaChangeKind::OptionalFieldAdded
            };
            self.push(&join(field, name), kind);
        }
        self.compare_common(old_props, new_props, &old_required, &new_required, field);
    }

    fn compare_common(
        &mut self,
        old_props: &'a Map<String, Value>,
        new_props: &'a Map<String, Value>,
        old_required: &BTreeSet<&str>,
        new_required: &BTreeSet<&str>,
        field: &str,
    ) {
        for (name, old_schema) in old_props {
            let Some(new_schema) = new_props.get(name) else {
                continue;
            };
            let path = join(field, name);
            match (
                old_required.contains(name.as_str()),
                new_required.contains(name.as_str()),
            ) {
                (false, true) => self.push(&path, SchemaChangeKind::BecameRequired),
                (true, false) => self.push(&path, SchemaChangeKind::BecameOptional),
                _ => {}
            }
            self.compare(old_schema, new_schema, &path);
        }
    }

    /// `items` or a schema-valued `additionalProperties`; a boolean
    /// `additionalProperties` is covered by the property rules.
    fn compare_subschema(
        &mut self,
        old: &'a Value,
        new: &'a Value,
        keyword: &str,
        field: &str,
        suffix: &str,
    ) {
        let old_sub = old.get(keyword).filter(|v| !v.is_boolean());
        let new_sub = new.get(keyword).filter(|v| !v.is_boolean());
        match (old_sub, new_sub) {
            (Some(old_sub), Some(new_sub)) if old_sub.is_object() && new_sub.is_object() => {
                self.compare(old_sub, new_sub, &format!("{field}{suffix}"));
            }
            (None, None) => {}
            (old_sub, new_sub) if old_sub == new_sub => {}
            _ => self.push(
                field,
                SchemaChangeKind::KeywordChanged {
                    keyword: keyword.to_owned(),
                },
            ),
        }
    }

    fn compare_alternatives(&mut self, old: &'a Value, new: &'a Value, keyword: &str, field: &str) {
        let old_list = old.get(keyword).and_then(Value::as_array);
        let new_list = new.get(keyword).and_then(Value::as_array);
        match (old_list, new_list) {
            (None, None) => {}
            (Some(old_list), Some(new_list)) if old_list.len() == new_list.len() => {
                for (old_alt, new_alt) in old_list.iter().zip(new_list) {
                    self.compare(old_alt, new_alt, field);
                }
            }
            _ => self.push(
                field,
                SchemaChangeKind::AlternativesChanged {
                    keyword: keyword.to_owned(),
                    from: old_list.map_or(0, Vec::len),
                    to: new_list.map_or(0, Vec::len),
                },
            ),
        }
    }

    fn compare_other_keywords(&mut self, old: &'a Value, new: &'a Value, field: &str) {
        let keys = |schema: &'a Value| -> BTreeMap<&'a str, &'a Value> {
            schema
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| {
                    !ANNOTATIONS.contains(&k.as_str()) && !COMPARED.contains(&k.as_str())
                })
                .map(|(k, v)| (k.as_str(), v))
                .collect()
        };
        let old_keys = keys(old);
        let new_keys = keys(new);
        let all: BTreeSet<&str> = old_keys.keys().chain(new_keys.keys()).copied().collect();
        for keyword in all {
            if old_keys.get(keyword) != new_keys.get(keyword) {
                self.push(
                    field,
                    SchemaChangeKind::KeywordChanged {
                        keyword: keyword.to_owned(),
                    },
                );
            }
        }
    }
}

/// Changes between two subschemas of the given roots, for rename detection.
fn compare_schemas_in(
    old_root: &Value,
    new_root: &Value,
    old: &Value,
    new: &Value,
) -> Vec<SchemaChange> {
    let mut diff = Diff {
        old_root,
        new_root,
        changes: Vec::new(),
        visiting: BTreeSet::new(),
    };
    diff.compare(old, new, "");
    diff.changes
}

/// A schema split into its nullability and the rest.
struct Node<'a> {
    schema: &'a Value,
    /// Non-null JSON types; empty when the schema does not say.
    types: BTreeSet<&'a str>,
    nullable: bool,
    /// The non-null alternative of `anyOf`/`oneOf: [X, {"type": "null"}]`.
    inner: Option<&'a Value>,
}

impl<'a> Node<'a> {
    fn of(schema: &'a Value) -> Self {
        let mut types: BTreeSet<&str> = match schema.get("type") {
            Some(Value::String(t)) => BTreeSet::from([t.as_str()]),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => BTreeSet::new(),
        };
        let mut nullable = types.remove("null");
        let mut inner = None;
        for keyword in ["anyOf", "oneOf"] {
            if let Some([a, b]) = schema
                .get(keyword)
                .and_then(Value::as_array)
                .map(Vec::as_slice)
            {
                match (is_null(a), is_null(b)) {
                    (false, true) => inner = Some(a),
                    (true, false) => inner = Some(b),
                    _ => continue,
                }
                nullable = true;
            }
        }
        Node {
            schema,
            types,
            nullable,
            inner,
        }
    }
}

/// The `properties` of an object schema; an empty map when it has none.
fn properties(schema: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

fn is_null(schema: &Value) -> bool {
    schema.get("type") == Some(&Value::String("null".to_owned()))
}

fn required(schema: &Value) -> BTreeSet<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn type_names(types: &BTreeSet<&str>) -> String {
    if types.is_empty() {
        "any".to_owned()
    } else {
        types.iter().copied().collect::<Vec<_>>().join(" or ")
    }
}

fn join(field: &str, name: &str) -> String {
    if field.is_empty() {
        name.to_owned()
    } else {
        format!("{field}.{name}")
    }
}

/// Follows `$ref`s within `root` (`#/definitions/...`, `#/$defs/...`, any
/// local JSON pointer); the first `$ref` seen names the pair for recursion.
/// An unresolvable reference is compared as written.
fn resolve<'v>(root: &'v Value, mut schema: &'v Value) -> (Option<&'v str>, &'v Value) {
    let mut first = None;
    for _ in 0..MAX_REF_HOPS {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            break;
        };
        first.get_or_insert(reference);
        let Some(target) = reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer))
        else {
            break;
        };
        schema = target;
    }
    (first, schema)
}

//! Turns a `DeriveInput` into a validated [`Event`], or every error found.

use quote::quote;
use syn::ext::IdentExt;
use syn::{Attribute, Data, DeriveInput, Expr, ExprLit, Fields, Ident, Lit, Meta, Type};

use crate::attr::{
    Container, FieldAttrs, AGGREGATE, AGGREGATE_ID, ALLOW_TOPIC_VERSION_MISMATCH, EVENT_TYPE, KEY,
    OUTBOX_EVENT, TOPIC,
};
use crate::ctxt::Ctxt;
use crate::validate;

/// Everything the expansion needs, all of it checked.
pub(crate) struct Event<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) event_type: String,
    pub(crate) topic: String,
    pub(crate) aggregate: String,
    pub(crate) version: u32,
    pub(crate) description: String,
    pub(crate) aggregate_id: EventField<'a>,
    pub(crate) key: Option<EventField<'a>>,
    /// Set by `json_schema`: the payload's JSON schema goes into the
    /// registration. The identifier spans the generated bound.
    pub(crate) json_schema: Option<Ident>,
}

/// A field the generated code reads.
#[derive(Clone, Copy)]
pub(crate) struct EventField<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) ty: &'a Type,
}

pub(crate) fn parse(input: &DeriveInput) -> syn::Result<Event<'_>> {
    let cx = Ctxt::new();
    let event = parse_with(&cx, input);
    cx.check()?;
    Ok(event.expect("an input without errors yields an event"))
}

fn parse_with<'a>(cx: &Ctxt, input: &'a DeriveInput) -> Option<Event<'a>> {
    let ident = &input.ident;
    check_no_generics(cx, input);
    let fields = named_fields(cx, input);
    let container = Container::from_attrs(cx, &input.attrs);
    let (aggregate_id, key) = match fields {
        Some(fields) => id_fields(cx, ident, fields),
        None => (None, None),
    };

    let missing_span: &dyn quote::ToTokens = match container.first_attr {
        Some(attr) => attr,
        None => ident,
    };
    if container.first_attr.is_none() {
        cx.error_spanned_by(
            ident,
            format!(
                "missing `#[{OUTBOX_EVENT}(...)]`: an event needs a topic and an aggregate, e.g. `#[{OUTBOX_EVENT}(topic = \"files.file-uploaded.v1\", aggregate = \"file_upload\")]`"
            ),
        );
    } else if !container.malformed {
        if container.topic.is_none() {
            cx.error_spanned_by(
                missing_span,
                format!("missing `{TOPIC}`: add `{TOPIC} = \"...\"` to `#[{OUTBOX_EVENT}(...)]`, e.g. `{TOPIC} = \"files.file-uploaded.v1\"`"),
            );
        }
        if container.aggregate.is_none() {
            cx.error_spanned_by(
                missing_span,
                format!("missing `{AGGREGATE}`: add `{AGGREGATE} = \"...\"` to `#[{OUTBOX_EVENT}(...)]`, e.g. `{AGGREGATE} = \"file_upload\"`"),
            );
        }
    }

    check_topic_version(cx, &container);

    let event_type = match container.event_type {
        Some(given) => given.map(|lit| lit.value()),
        None => default_event_type(cx, ident),
    };

    Some(Event {
        ident,
        event_type: event_type?,
        topic: container.topic??.value(),
        aggregate: container.aggregate??.value(),
        version: container.version.unwrap_or(Some(1))?,
        description: description(&input.attrs),
        aggregate_id: aggregate_id?,
        key,
        json_schema: container.json_schema,
    })
}

/// A topic ending in `.vN` must carry the event's version, unless the user
/// opted out; an opt-out with nothing to allow is reported too, so it does
/// not linger after the topic or version is fixed.
fn check_topic_version(cx: &Ctxt, container: &Container) {
    let (Some(Some(topic)), Some(version)) =
        (&container.topic, container.version.unwrap_or(Some(1)))
    else {
        return;
    };
    let mismatch = validate::topic_version(&topic.value(), version, container.version.is_some());
    match (mismatch, &container.allow_topic_version_mismatch) {
        (Err(msg), None) => cx.error_spanned_by(topic, msg),
        (Ok(()), Some(opt_out)) => {
            let topic = topic.value();
            let why = match validate::topic_version_suffix(&topic) {
                Some(suffix) => {
                    format!("topic `{topic}` ends in `.v{suffix}`, which is the event's `version`")
                }
                None => format!("topic `{topic}` does not end in `.vN`"),
            };
            cx.error_spanned_by(
                opt_out,
                format!("unneeded `{ALLOW_TOPIC_VERSION_MISMATCH}`: the {why}; remove it"),
            );
        }
        (Err(_), Some(_)) | (Ok(()), None) => {}
    }
}

/// The identifier as written, without `r#`: stable when the type moves
/// between modules.
fn default_event_type(cx: &Ctxt, ident: &Ident) -> Option<String> {
    let name = ident.unraw().to_string();
    match validate::event_type(&name) {
        Ok(()) => Some(name),
        Err(msg) => {
            cx.error_spanned_by(
                ident,
                format!("the event type defaults to the type name `{name}`, which is not usable ({msg}): set `#[{OUTBOX_EVENT}({EVENT_TYPE} = \"...\")]`"),
            );
            None
        }
    }
}

fn check_no_generics(cx: &Ctxt, input: &DeriveInput) {
    let generics = &input.generics;
    let message = "`OutboxEvent` cannot be derived for generic types: an event type needs one registration, so declare a concrete struct per event";
    if !generics.params.is_empty() {
        cx.error_spanned_by(generics, message);
    } else if let Some(where_clause) = &generics.where_clause {
        cx.error_spanned_by(where_clause, message);
    }
}

fn named_fields<'a>(cx: &Ctxt, input: &'a DeriveInput) -> Option<&'a syn::FieldsNamed> {
    let ident = &input.ident;
    let example = format!("`struct {ident} {{ #[{OUTBOX_EVENT}({AGGREGATE_ID})] id: u64, ... }}`");
    match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(fields) => Some(fields),
            Fields::Unnamed(fields) => {
                cx.error_spanned_by(
                    fields,
                    format!("`OutboxEvent` cannot be derived for tuple structs: use named fields, e.g. {example}"),
                );
                None
            }
            Fields::Unit => {
                let struct_token = data.struct_token;
                cx.error_spanned_by(
                    quote!(#struct_token #ident),
                    format!("`OutboxEvent` cannot be derived for unit structs: an event needs a field holding the aggregate id, e.g. {example}"),
                );
                None
            }
        },
        Data::Enum(data) => {
            let enum_token = data.enum_token;
            cx.error_spanned_by(
                quote!(#enum_token #ident),
                format!("`OutboxEvent` cannot be derived for enums: declare one struct per event type, each with its own `#[{OUTBOX_EVENT}(...)]`"),
            );
            None
        }
        Data::Union(data) => {
            let union_token = data.union_token;
            cx.error_spanned_by(
                quote!(#union_token #ident),
                format!("`OutboxEvent` cannot be derived for unions: use a struct with named fields, e.g. {example}"),
            );
            None
        }
    }
}

/// The `aggregate_id` field and the optional `key` field; at most one of
/// each, and not the same field.
fn id_fields<'a>(
    cx: &Ctxt,
    ident: &Ident,
    fields: &'a syn::FieldsNamed,
) -> (Option<EventField<'a>>, Option<EventField<'a>>) {
    let mut aggregate_id: Option<EventField> = None;
    let mut key: Option<EventField> = None;
    let mut malformed = false;
    for field in &fields.named {
        let attrs = FieldAttrs::from_attrs(cx, &field.attrs);
        malformed |= attrs.malformed;
        let this = EventField {
            ident: field.ident.as_ref().expect("named fields have identifiers"),
            ty: &field.ty,
        };
        if let Some(marker) = &attrs.aggregate_id {
            match aggregate_id {
                Some(first) => cx.error_spanned_by(
                    marker,
                    format!("`{AGGREGATE_ID}` is already on field `{}`: exactly one field holds the aggregate id", first.ident),
                ),
                None => aggregate_id = Some(this),
            }
        }
        if let Some(marker) = &attrs.key {
            if attrs.aggregate_id.is_some() {
                cx.error_spanned_by(
                    marker,
                    format!("redundant `{KEY}`: the aggregate id is already the default partition key, remove `{KEY}` from this field"),
                );
                continue;
            }
            match key {
                Some(first) => cx.error_spanned_by(
                    marker,
                    format!("`{KEY}` is already on field `{}`: at most one field can be the partition key", first.ident),
                ),
                None => key = Some(this),
            }
        }
    }
    if aggregate_id.is_none() && !malformed {
        cx.error_spanned_by(
            ident,
            format!("no field is marked `#[{OUTBOX_EVENT}({AGGREGATE_ID})]`: mark the field that holds the aggregate id, e.g. `#[{OUTBOX_EVENT}({AGGREGATE_ID})] file_upload_id: u64`"),
        );
    }
    (aggregate_id, key)
}

/// The `///` lines of the type, one space of indentation removed, joined
/// with `\n` and trimmed.
fn description(attrs: &[Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|attr| attr.path().is_ident("doc"))
        .filter_map(|attr| match &attr.meta {
            Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        .flat_map(|doc| {
            doc.split('\n')
                .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    lines.join("\n").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn errors(input: &DeriveInput) -> Vec<String> {
        match parse(input) {
            Ok(_) => Vec::new(),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn valid_input_has_defaults() {
        let input: DeriveInput = parse_quote! {
            #[outbox_event(topic = "t.v1", aggregate = "file_upload")]
            struct r#FileUploaded {
                #[outbox_event(aggregate_id)]
                id: u64,
            }
        };
        let event = parse(&input).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(event.event_type, "FileUploaded");
        assert_eq!(event.version, 1);
        assert_eq!(event.description, "");
        assert_eq!(event.aggregate_id.ident, "id");
        assert!(event.key.is_none());
        assert!(event.json_schema.is_none());
    }

    #[test]
    fn json_schema_is_a_flag() {
        let input: DeriveInput = parse_quote! {
            #[outbox_event(topic = "t", aggregate = "a", json_schema)]
            struct E { #[outbox_event(aggregate_id)] id: u64 }
        };
        let event = parse(&input).unwrap_or_else(|e| panic!("{e}"));
        assert!(event.json_schema.is_some());
        let input = parse_quote! {
            #[outbox_event(topic = "t", aggregate = "a", json_schema = "draft-07", json_schema)]
            struct E { #[outbox_event(aggregate_id, json_schema)] id: u64 }
        };
        assert_eq!(
            errors(&input),
            [
                "`json_schema` takes no value: write `#[outbox_event(json_schema)]`",
                "duplicate `json_schema`: give it once across all `#[outbox_event(...)]` attributes",
                "`json_schema` belongs on the struct: move it to the `#[outbox_event(...)]` above the struct",
            ]
        );
    }

    #[test]
    fn duplicate_keys_are_reported_once_each_across_attributes() {
        let input = parse_quote! {
            #[outbox_event(topic = "a", aggregate = "x", version = 2)]
            #[outbox_event(topic = "b", version = 3)]
            struct E { #[outbox_event(aggregate_id, aggregate_id)] id: u64 }
        };
        assert_eq!(
            errors(&input),
            [
                "duplicate `topic`: give it once across all `#[outbox_event(...)]` attributes",
                "duplicate `version`: give it once across all `#[outbox_event(...)]` attributes",
                "duplicate `aggregate_id`: give it once across all `#[outbox_event(...)]` attributes",
            ]
        );
    }

    #[test]
    fn rejected_values_are_not_also_reported_missing() {
        let input = parse_quote! {
            #[outbox_event(topic = 1, aggregate = BATCH)]
            struct E { #[outbox_event(aggregate_id)] id: u64 }
        };
        assert_eq!(
            errors(&input),
            [
                "expected `topic = \"...\"` to be a string literal",
                "expected `aggregate = \"...\"` to be a string literal",
            ]
        );
    }

    #[test]
    fn missing_keys() {
        let input = parse_quote! {
            #[outbox_event(version = 2)]
            struct E { #[outbox_event(aggregate_id)] id: u64 }
        };
        let errors = errors(&input);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("missing `topic`"), "{errors:?}");
        assert!(errors[1].starts_with("missing `aggregate`"), "{errors:?}");
    }

    #[test]
    fn malformed_attribute_suppresses_missing_keys() {
        let input = parse_quote! {
            #[outbox_event(topic = "a" "b", aggregate = "x")]
            struct E { #[outbox_event(aggregate_id)] id: u64 }
        };
        assert_eq!(errors(&input), ["expected `,`"]);
    }

    #[test]
    fn version_rules() {
        let check = |input: DeriveInput| errors(&input).join("; ");
        assert!(check(parse_quote! {
            #[outbox_event(topic = "t", aggregate = "a", version = 4294967296)]
            struct E { #[outbox_event(aggregate_id)] id: u64 }
        })
        .contains("must fit in a u32"));
        assert!(check(parse_quote! {
            #[outbox_event(topic = "t", aggregate = "a", version = -1)]
            struct E { #[outbox_event(aggregate_id)] id: u64 }
        })
        .contains("expected `version = N` to be an integer literal"));
    }

    #[test]
    fn unknown_keys_skip_their_value_and_parsing_goes_on() {
        let input = parse_quote! {
            #[outbox_event(colour(red, green), topic = "t", shade = 1 + 2, aggregate = "a")]
            struct E { #[outbox_event(partition = "x", aggregate_id)] id: u64 }
        };
        let errors = errors(&input);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("unknown `outbox_event` attribute `colour`"));
        assert!(errors[1].contains("unknown `outbox_event` attribute `shade`"));
        assert!(errors[2].contains("unknown `outbox_event` field attribute `partition`"));
    }

    #[test]
    fn shape_errors() {
        let tuple: DeriveInput = parse_quote!(
            #[outbox_event(topic = "t", aggregate = "a")]
            struct E(u64);
        );
        assert!(errors(&tuple)[0].contains("tuple structs"));
        let unit: DeriveInput = parse_quote!(
            #[outbox_event(topic = "t", aggregate = "a")]
            struct E;
        );
        assert!(errors(&unit)[0].contains("unit structs"));
        let union: DeriveInput =
            parse_quote!(#[outbox_event(topic = "t", aggregate = "a")] union E { a: u64 });
        assert!(errors(&union)[0].contains("unions"));
        let enumeration: DeriveInput = parse_quote!(
            #[outbox_event(topic = "t", aggregate = "a")]
            enum E {
                A,
            }
        );
        assert_eq!(
            errors(&enumeration),
            ["`OutboxEvent` cannot be derived for enums: declare one struct per event type, each with its own `#[outbox_event(...)]`"]
        );
        let lifetime: DeriveInput = parse_quote! {
            #[outbox_event(topic = "t", aggregate = "a")]
            struct E<'a> { #[outbox_event(aggregate_id)] id: &'a str }
        };
        assert!(errors(&lifetime)[0].contains("generic types"));
    }

    #[test]
    fn key_rules() {
        let input = parse_quote! {
            #[outbox_event(topic = "t", aggregate = "a")]
            struct E {
                #[outbox_event(aggregate_id, key)] id: u64,
                #[outbox_event(aggregate_id)] other: u64,
                #[outbox_event(key)] k1: u64,
                #[outbox_event(key)] k2: u64,
            }
        };
        assert_eq!(
            errors(&input),
            [
                "redundant `key`: the aggregate id is already the default partition key, remove `key` from this field",
                "`aggregate_id` is already on field `id`: exactly one field holds the aggregate id",
                "`key` is already on field `k1`: at most one field can be the partition key",
            ]
        );
    }

    #[test]
    fn topic_version_suffix_must_match_the_version() {
        let input = parse_quote! {
            #[outbox_event(topic = "files.file-uploaded.v1", aggregate = "a", version = 2)]
            struct E { #[outbox_event(aggregate_id)] id: u64 }
        };
        assert_eq!(
            errors(&input),
            ["topic `files.file-uploaded.v1` ends in `.v1` but the event's `version` is 2: set `version = 1`, or name the topic `files.file-uploaded.v2`; if the topic's suffix is not the event's version, add `allow_topic_version_mismatch`"]
        );
        let opted_out: DeriveInput = parse_quote! {
            #[outbox_event(topic = "files.file-uploaded.v1", aggregate = "a", version = 2)]
            #[outbox_event(allow_topic_version_mismatch)]
            struct E { #[outbox_event(aggregate_id)] id: u64 }
        };
        let event = parse(&opted_out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (event.topic.as_str(), event.version),
            ("files.file-uploaded.v1", 2)
        );
    }

    #[test]
    fn topic_version_opt_out_must_be_needed_and_bare() {
        let unneeded = parse_quote! {
            #[outbox_event(topic = "files.uploaded.v2", aggregate = "a", version = 2, allow_topic_version_mismatch)]
            struct E { #[outbox_event(aggregate_id)] id: u64 }
        };
        assert_eq!(
            errors(&unneeded),
            ["unneeded `allow_topic_version_mismatch`: the topic `files.uploaded.v2` ends in `.v2`, which is the event's `version`; remove it"]
        );
        let unversioned = parse_quote! {
            #[outbox_event(topic = "files.uploaded", aggregate = "a", allow_topic_version_mismatch)]
            struct E { #[outbox_event(aggregate_id)] id: u64 }
        };
        assert_eq!(
            errors(&unversioned),
            ["unneeded `allow_topic_version_mismatch`: the topic `files.uploaded` does not end in `.vN`; remove it"]
        );
        let with_value = parse_quote! {
            #[outbox_event(topic = "t.v2", aggregate = "a", allow_topic_version_mismatch = true)]
            struct E { #[outbox_event(aggregate_id)] id: u64 }
        };
        assert_eq!(
            errors(&with_value),
            ["`allow_topic_version_mismatch` takes no value: write `#[outbox_event(allow_topic_version_mismatch)]`"]
        );
    }

    #[test]
    fn description_joins_doc_lines() {
        let attrs: Vec<Attribute> = vec![
            parse_quote!(#[doc = " First line."]),
            parse_quote!(#[doc = ""]),
            parse_quote!(#[doc = "   indented"]),
            parse_quote!(#[doc = " Block\n comment  "]),
            parse_quote!(#[doc = ""]),
        ];
        assert_eq!(
            description(&attrs),
            "First line.\n\n  indented\nBlock\ncomment"
        );
        assert_eq!(description(&[]), "");
    }
}

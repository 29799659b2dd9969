//! Typed model of the `#[outbox_event(...)]` attributes on the struct and on
//! its fields. Every problem goes to the [`Ctxt`]; parsing carries on after
//! it so one compile shows all of them.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::parse::ParseStream;
use syn::{meta::ParseNestedMeta, Attribute, Expr, ExprLit, Ident, Lit, LitStr, Token};

use crate::ctxt::Ctxt;
use crate::validate;

pub(crate) const OUTBOX_EVENT: &str = "outbox_event";

pub(crate) const TOPIC: &str = "topic";
pub(crate) const AGGREGATE: &str = "aggregate";
pub(crate) const EVENT_TYPE: &str = "event_type";
pub(crate) const VERSION: &str = "version";
pub(crate) const JSON_SCHEMA: &str = "json_schema";
pub(crate) const ALLOW_TOPIC_VERSION_MISMATCH: &str = "allow_topic_version_mismatch";

pub(crate) const AGGREGATE_ID: &str = "aggregate_id";
pub(crate) const KEY: &str = "key";

const CONTAINER_KEYS: &[&str] = &[
    TOPIC,
    AGGREGATE,
    EVENT_TYPE,
    VERSION,
    JSON_SCHEMA,
    ALLOW_TOPIC_VERSION_MISMATCH,
];
const FIELD_KEYS: &[&str] = &[AGGREGATE_ID, KEY];

/// A key that may be given once across all `#[outbox_event]` attributes of
/// one item. The only place that reports duplicates.
struct Attr<'c, T> {
    cx: &'c Ctxt,
    name: &'static str,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    fn none(cx: &'c Ctxt, name: &'static str) -> Self {
        Attr {
            cx,
            name,
            value: None,
        }
    }

    fn set<A: ToTokens>(&mut self, obj: A, value: T) {
        if self.value.is_some() {
            let name = self.name;
            self.cx.error_spanned_by(
                obj,
                format!("duplicate `{name}`: give it once across all `#[{OUTBOX_EVENT}(...)]` attributes"),
            );
        } else {
            self.value = Some(value);
        }
    }

    fn get(self) -> Option<T> {
        self.value
    }
}

/// A key's value once given: `None` when it was rejected (and reported), so
/// the key is not reported missing as well. Absent keys are an outer `None`.
type Checked<T> = Option<T>;

/// `#[outbox_event(...)]` on the struct.
pub(crate) struct Container<'a> {
    /// The first `#[outbox_event]` attribute, where "missing key" errors go.
    pub(crate) first_attr: Option<&'a Attribute>,
    /// Some `#[outbox_event]` could not be read; keys may be missing only
    /// because of that, so they are not reported missing.
    pub(crate) malformed: bool,
    pub(crate) topic: Option<Checked<LitStr>>,
    pub(crate) aggregate: Option<Checked<LitStr>>,
    pub(crate) event_type: Option<Checked<LitStr>>,
    pub(crate) version: Option<Checked<u32>>,
    /// `json_schema`: publish the payload's JSON schema in the registry.
    pub(crate) json_schema: Option<Ident>,
    /// `allow_topic_version_mismatch`: the topic's `.vN` suffix is not the
    /// event's version.
    pub(crate) allow_topic_version_mismatch: Option<Ident>,
}

impl<'a> Container<'a> {
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &'a [Attribute]) -> Self {
        let first_attr = attrs.iter().find(|attr| attr.path().is_ident(OUTBOX_EVENT));
        let mut malformed = false;
        let mut topic = Attr::none(cx, TOPIC);
        let mut aggregate = Attr::none(cx, AGGREGATE);
        let mut event_type = Attr::none(cx, EVENT_TYPE);
        let mut version = Attr::none(cx, VERSION);
        let mut json_schema = Attr::none(cx, JSON_SCHEMA);
        let mut allow_topic_version_mismatch = Attr::none(cx, ALLOW_TOPIC_VERSION_MISMATCH);

        for attr in outbox_event_attrs(cx, attrs, &mut malformed) {
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident(TOPIC) {
                    let value = string_value(cx, &meta, TOPIC, validate::topic)?;
                    topic.set(&meta.path, value);
                } else if meta.path.is_ident(AGGREGATE) {
                    let value = string_value(cx, &meta, AGGREGATE, validate::aggregate)?;
                    aggregate.set(&meta.path, value);
                } else if meta.path.is_ident(EVENT_TYPE) {
                    let value = string_value(cx, &meta, EVENT_TYPE, validate::event_type)?;
                    event_type.set(&meta.path, value);
                } else if meta.path.is_ident(VERSION) {
                    let value = version_value(cx, &meta)?;
                    version.set(&meta.path, value);
                } else if let Some(ident) = meta.path.get_ident().filter(|i| *i == JSON_SCHEMA) {
                    flag_without_value(cx, &meta, JSON_SCHEMA)?;
                    json_schema.set(&meta.path, ident.clone());
                } else if let Some(ident) = meta
                    .path
                    .get_ident()
                    .filter(|i| *i == ALLOW_TOPIC_VERSION_MISMATCH)
                {
                    flag_without_value(cx, &meta, ALLOW_TOPIC_VERSION_MISMATCH)?;
                    allow_topic_version_mismatch.set(&meta.path, ident.clone());
                } else if let Some(key) = FIELD_KEYS.iter().find(|key| meta.path.is_ident(key)) {
                    cx.error_spanned_by(
                        &meta.path,
                        format!("`{key}` is a field attribute: put `#[{OUTBOX_EVENT}({key})]` on the field instead"),
                    );
                    skip_value(&meta)?;
                } else {
                    let path = path_text(&meta.path);
                    cx.error_spanned_by(
                        &meta.path,
                        format!(
                            "unknown `{OUTBOX_EVENT}` attribute `{path}`: expected one of {}",
                            list(CONTAINER_KEYS)
                        ),
                    );
                    skip_value(&meta)?;
                }
                Ok(())
            });
            if let Err(err) = result {
                cx.syn_error(err);
                malformed = true;
            }
        }

        Container {
            first_attr,
            malformed,
            topic: topic.get(),
            aggregate: aggregate.get(),
            event_type: event_type.get(),
            version: version.get(),
            json_schema: json_schema.get(),
            allow_topic_version_mismatch: allow_topic_version_mismatch.get(),
        }
    }
}

/// `#[outbox_event(...)]` on one field. Each flag keeps the key's identifier
/// so later checks can point at it.
pub(crate) struct FieldAttrs {
    pub(crate) aggregate_id: Option<Ident>,
    pub(crate) key: Option<Ident>,
    /// Some `#[outbox_event]` on the field could not be read.
    pub(crate) malformed: bool,
}

impl FieldAttrs {
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut aggregate_id = Attr::none(cx, AGGREGATE_ID);
        let mut key = Attr::none(cx, KEY);

        let mut malformed = false;
        for attr in outbox_event_attrs(cx, attrs, &mut malformed) {
            let result = attr.parse_nested_meta(|meta| {
                if let Some(ident) = meta.path.get_ident().filter(|i| *i == AGGREGATE_ID) {
                    flag_without_value(cx, &meta, AGGREGATE_ID)?;
                    aggregate_id.set(&meta.path, ident.clone());
                } else if let Some(ident) = meta.path.get_ident().filter(|i| *i == KEY) {
                    flag_without_value(cx, &meta, KEY)?;
                    key.set(&meta.path, ident.clone());
                } else if let Some(name) = CONTAINER_KEYS.iter().find(|k| meta.path.is_ident(k)) {
                    cx.error_spanned_by(
                        &meta.path,
                        format!("`{name}` belongs on the struct: move it to the `#[{OUTBOX_EVENT}(...)]` above the struct"),
                    );
                    skip_value(&meta)?;
                } else {
                    let path = path_text(&meta.path);
                    cx.error_spanned_by(
                        &meta.path,
                        format!(
                            "unknown `{OUTBOX_EVENT}` field attribute `{path}`: expected {}",
                            list(FIELD_KEYS).replace(", ", " or ")
                        ),
                    );
                    skip_value(&meta)?;
                }
                Ok(())
            });
            if let Err(err) = result {
                cx.syn_error(err);
                malformed = true;
            }
        }

        FieldAttrs {
            aggregate_id: aggregate_id.get(),
            key: key.get(),
            malformed,
        }
    }
}

/// The `#[outbox_event(...)]` attributes in `attrs`; any other form of
/// `outbox_event` (`#[outbox_event]`, `#[outbox_event = "..."]`) is reported.
fn outbox_event_attrs<'a>(
    cx: &Ctxt,
    attrs: &'a [Attribute],
    malformed: &mut bool,
) -> Vec<&'a Attribute> {
    let mut lists = Vec::new();
    for attr in attrs
        .iter()
        .filter(|attr| attr.path().is_ident(OUTBOX_EVENT))
    {
        if let syn::Meta::List(_) = attr.meta {
            lists.push(attr);
        } else {
            *malformed = true;
            cx.error_spanned_by(
                attr,
                format!(
                    "expected a list of keys: `#[{OUTBOX_EVENT}(...)]`, e.g. `#[{OUTBOX_EVENT}(topic = \"files.file-uploaded.v1\", aggregate = \"file_upload\")]`"
                ),
            );
        }
    }
    lists
}

/// `name = "..."`, checked by `rule`. Semantic problems are recorded and
/// yield `None`; only malformed syntax aborts the attribute.
fn string_value(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    name: &str,
    rule: fn(&str) -> Result<(), String>,
) -> syn::Result<Checked<LitStr>> {
    let Some(expr) = value_expr(cx, meta, &format!("`{name} = \"...\"`"))? else {
        return Ok(None);
    };
    if let Expr::Lit(ExprLit {
        lit: Lit::Str(lit), ..
    }) = &expr
    {
        return Ok(checked(cx, lit, rule));
    }
    cx.error_spanned_by(
        &expr,
        format!("expected `{name} = \"...\"` to be a string literal"),
    );
    Ok(None)
}

fn checked(cx: &Ctxt, lit: &LitStr, rule: fn(&str) -> Result<(), String>) -> Checked<LitStr> {
    match rule(&lit.value()) {
        Ok(()) => Some(lit.clone()),
        Err(msg) => {
            cx.error_spanned_by(lit, msg);
            None
        }
    }
}

fn version_value(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Checked<u32>> {
    const EXPECTED: &str =
        "expected `version = N` to be an integer literal of at least 1, e.g. `version = 2`";
    let Some(expr) = value_expr(cx, meta, "`version = N`")? else {
        return Ok(None);
    };
    let Expr::Lit(ExprLit {
        lit: Lit::Int(lit), ..
    }) = &expr
    else {
        cx.error_spanned_by(&expr, EXPECTED);
        return Ok(None);
    };
    match lit.base10_parse::<u32>() {
        Ok(0) => {
            cx.error_spanned_by(
                lit,
                "`version` starts at 1: use `version = 1` or leave it out",
            );
            Ok(None)
        }
        Ok(version) => Ok(Some(version)),
        Err(_) => {
            cx.error_spanned_by(
                lit,
                format!("`version` must fit in a u32 ({} at most)", u32::MAX),
            );
            Ok(None)
        }
    }
}

/// The expression after `=`, or `None` (reported) when the key has no `=`.
fn value_expr(cx: &Ctxt, meta: &ParseNestedMeta, syntax: &str) -> syn::Result<Option<Expr>> {
    if meta.input.peek(Token![=]) {
        return meta.value()?.parse().map(Some);
    }
    cx.error_spanned_by(&meta.path, format!("expected {syntax}"));
    skip_value(meta)?;
    Ok(None)
}

fn flag_without_value(cx: &Ctxt, meta: &ParseNestedMeta, name: &str) -> syn::Result<()> {
    if !at_end_of_item(meta.input) {
        cx.error_spanned_by(
            &meta.path,
            format!("`{name}` takes no value: write `#[{OUTBOX_EVENT}({name})]`"),
        );
        skip_value(meta)?;
    }
    Ok(())
}

fn at_end_of_item(input: ParseStream) -> bool {
    input.is_empty() || input.peek(Token![,])
}

/// Consumes whatever follows a key (`= expr` or `(...)`) so parsing can go on
/// to the next key after an error.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

fn path_text(path: &syn::Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}

fn list(keys: &[&str]) -> String {
    keys.iter()
        .map(|key| format!("`{key}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

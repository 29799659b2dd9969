//! Code generation for a valid [`Event`].

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::DeriveInput;

use crate::fallback;
use crate::parse::{parse, Event, EventField};

/// `#[derive(OutboxEvent)]` over `proc_macro2` types.
pub fn derive(input: &DeriveInput) -> TokenStream {
    match parse(input) {
        Ok(event) => expand(&event),
        Err(errors) => fallback::expand(input, errors),
    }
}

fn expand(event: &Event) -> TokenStream {
    let ident = event.ident;
    let rust_name = ident.unraw().to_string();
    let Event {
        event_type,
        topic,
        aggregate,
        version,
        description,
        ..
    } = event;

    let aggregate_id = field_to_string(&event.aggregate_id);
    let partition_key = event.key.as_ref().map(|key| {
        let body = field_to_string(key);
        quote! {
            fn partition_key(&self) -> ::outbox::__private::String {
                #body
            }
        }
    });

    // Spanned on the `json_schema` key: a type that does not implement
    // `schemars::JsonSchema` is reported there, where the schema was asked for.
    let payload_schema = match &event.json_schema {
        Some(marker) => {
            let mut ty = ident.clone();
            ty.set_span(marker.span());
            let schema_fn =
                quote_spanned!(marker.span()=> ::outbox::__private::payload_schema::<#ty>);
            quote!(::core::option::Option::Some(#schema_fn))
        }
        None => quote!(::core::option::Option::None),
    };

    // One constant feeds both the impl and the registry, so the submission
    // does not go through the trait: if the type is not `Serialize`, the
    // impl header (spanned on the user's identifier) is the only error.
    quote! {
        const _: () = {
            const __REGISTRATION: ::outbox::__private::EventRegistration =
                ::outbox::__private::EventRegistration::new(
                    ::core::concat!(::core::module_path!(), "::", #rust_name),
                    #event_type,
                    #topic,
                    #aggregate,
                    #version,
                    #description,
                    ::outbox::__private::TypeId::of::<#ident>,
                    #payload_schema,
                );

            #[automatically_derived]
            impl ::outbox::__private::OutboxEvent for #ident {
                const REGISTRATION: ::outbox::__private::EventRegistration = __REGISTRATION;

                fn aggregate_id(&self) -> ::outbox::__private::String {
                    #aggregate_id
                }

                #partition_key
            }

            ::outbox::__private::inventory::submit! { __REGISTRATION }
        };
    }
}

/// The field's `to_string()`, preceded by a `Display` check spanned on the
/// field's type so a missing impl underlines the user's type.
///
/// Both bounds come from the same type tokens in the same body, so rustc
/// reports only the check's "doesn't implement `Display`" and drops the
/// `ToString` error it implies.
fn field_to_string(field: &EventField) -> TokenStream {
    let EventField { ident, ty } = *field;
    let assert_display = quote_spanned!(ty.span()=> ::outbox::__private::assert_display::<#ty>);
    quote! {
        #assert_display();
        <#ty as ::outbox::__private::ToString>::to_string(&self.#ident)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn expand_str(input: DeriveInput) -> String {
        derive(&input).to_string()
    }

    #[test]
    fn expands_registration_and_aggregate_id() {
        let out = expand_str(parse_quote! {
            /// Essay content was stored.
            ///
            /// Ready for processing.
            #[outbox_event(topic = "files.essay.v1", aggregate = "file_upload")]
            struct EssayStored {
                #[outbox_event(aggregate_id)]
                file_upload_id: u64,
            }
        });
        let registration = quote! {
            ::outbox::__private::EventRegistration::new(
                ::core::concat!(::core::module_path!(), "::", "EssayStored"),
                "EssayStored",
                "files.essay.v1",
                "file_upload",
                1u32,
                "Essay content was stored.\n\nReady for processing.",
                ::outbox::__private::TypeId::of::<EssayStored>,
                ::core::option::Option::None,
            )
        }
        .to_string();
        assert!(out.contains(&registration), "{out}");
        let aggregate_id = quote! {
            fn aggregate_id(&self) -> ::outbox::__private::String {
                ::outbox::__private::assert_display::<u64>();
                <u64 as ::outbox::__private::ToString>::to_string(&self.file_upload_id)
            }
        };
        assert!(out.contains(&aggregate_id.to_string()), "{out}");
        assert!(out.contains("# [automatically_derived]"), "{out}");
        assert!(out.starts_with("const _ : () ="), "{out}");
        assert!(!out.contains("partition_key"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
        let submit = quote!(::outbox::__private::inventory::submit! { __REGISTRATION });
        assert!(out.contains(&submit.to_string()), "{out}");
    }

    #[test]
    fn json_schema_fills_the_payload_schema() {
        let out = expand_str(parse_quote! {
            #[outbox_event(topic = "t", aggregate = "a", json_schema)]
            struct E {
                #[outbox_event(aggregate_id)]
                id: u64,
            }
        });
        let schema = quote! {
            ::core::option::Option::Some(::outbox::__private::payload_schema::<E>)
        };
        assert!(out.contains(&schema.to_string()), "{out}");
    }

    #[test]
    fn key_field_overrides_partition_key() {
        let out = expand_str(parse_quote! {
            #[outbox_event(topic = "t", aggregate = "a", event_type = "Custom.v2", version = 2)]
            struct E {
                #[outbox_event(aggregate_id)]
                id: u64,
                #[outbox_event(key)]
                batch: String,
            }
        });
        assert!(out.contains("\"Custom.v2\""), "{out}");
        assert!(out.contains("2u32"), "{out}");
        let key = quote! {
            fn partition_key(&self) -> ::outbox::__private::String {
                ::outbox::__private::assert_display::<String>();
                <String as ::outbox::__private::ToString>::to_string(&self.batch)
            }
        };
        assert!(out.contains(&key.to_string()), "{out}");
    }

    #[test]
    fn raw_identifiers_are_unrawed_in_names_only() {
        let out = expand_str(parse_quote! {
            #[outbox_event(topic = "t", aggregate = "a")]
            struct r#Match {
                #[outbox_event(aggregate_id)]
                r#type: u64,
            }
        });
        assert!(out.contains("\"Match\" ,"), "{out}");
        assert!(out.contains("self . r#type"), "{out}");
        assert!(out.contains("for r#Match"), "{out}");
    }

    #[test]
    fn multiple_container_attributes_merge() {
        let out = expand_str(parse_quote! {
            #[outbox_event(topic = "t")]
            #[outbox_event(aggregate = "a", version = 3)]
            struct E {
                #[outbox_event(aggregate_id)]
                id: u64,
            }
        });
        assert!(!out.contains("compile_error"), "{out}");
        assert!(out.contains("3u32"), "{out}");
    }

    #[test]
    fn invalid_input_emits_all_errors_and_a_stub() {
        let out = expand_str(parse_quote! {
            #[outbox_event(topic = "bad topic", aggregate = "BadAggregate", colour = "red")]
            struct E {
                #[outbox_event(key)]
                id: u64,
            }
        });
        assert_eq!(out.matches("compile_error").count(), 4, "{out}");
        assert!(out.contains("invalid character ' ' in topic"), "{out}");
        assert!(out.contains("invalid aggregate `BadAggregate`"), "{out}");
        assert!(
            out.contains("unknown `outbox_event` attribute `colour`"),
            "{out}"
        );
        assert!(out.contains("no field is marked"), "{out}");
        assert!(
            out.contains("impl :: outbox :: __private :: OutboxEvent for E"),
            "{out}"
        );
        assert!(!out.contains("inventory"), "{out}");
    }

    #[test]
    fn no_stub_for_enums_and_generics() {
        for input in [
            parse_quote!(
                #[outbox_event(topic = "t", aggregate = "a")]
                enum E {
                    A,
                }
            ),
            parse_quote!(
                #[outbox_event(topic = "t", aggregate = "a")]
                struct E<T> {
                    #[outbox_event(aggregate_id)]
                    id: T,
                }
            ),
        ] {
            let out = expand_str(input);
            assert!(out.contains("compile_error"), "{out}");
            assert!(!out.contains("impl"), "{out}");
        }
    }

    #[test]
    fn default_event_type_must_be_valid() {
        let out = expand_str(parse_quote! {
            #[outbox_event(topic = "t", aggregate = "a")]
            struct Événement {
                #[outbox_event(aggregate_id)]
                id: u64,
            }
        });
        assert!(
            out.contains("defaults to the type name `Événement`"),
            "{out}"
        );
    }
}

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

    let aggregate_id = read_field(
        &event.aggregate_id,
        quote!(AggregateId),
        quote!(to_aggregate_id),
    );
    let aggregate_id_field = event.aggregate_id.ident.unraw().to_string();
    let (partition_key, key_field) = match &event.key {
        Some(key) => {
            let body = read_field(key, quote!(PartitionKey), quote!(to_partition_key));
            let name = key.ident.unraw().to_string();
            (
                quote! {
                    fn partition_key(&self) -> ::outbox::__private::String {
                        #body
                    }
                },
                quote!(::core::option::Option::Some(#name)),
            )
        }
        None => (quote!(), quote!(::core::option::Option::None)),
    };

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

    // Spanned on the user's identifier, like the impl header. A type without
    // `Serialize` fails both: the impl in serde's words, this check in the
    // outbox's, saying why. rustc keeps the supertrait's own message for the
    // impl, so the check is the only place to say it.
    let assert_payload =
        quote_spanned!(ident.span()=> ::outbox::__private::assert_payload::<#ident>());

    // One constant feeds both the impl and the registry, so the submission
    // does not go through the trait: a type that is not `Serialize` gets no
    // further errors from the registry.
    quote! {
        const _: () = {
            const __REGISTRATION: ::outbox::__private::EventRegistration =
                ::outbox::__private::EventRegistration {
                    rust_type: ::core::concat!(::core::module_path!(), "::", #rust_name),
                    event_type: #event_type,
                    topic: #topic,
                    aggregate_type: #aggregate,
                    version: #version,
                    description: #description,
                    type_id: ::outbox::__private::TypeId::of::<#ident>,
                    payload_schema: #payload_schema,
                    aggregate_id_field: ::core::option::Option::Some(#aggregate_id_field),
                    key_field: #key_field,
                };

            const _: () = #assert_payload;

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

/// The field's text through one of the `__private` marker traits, spanned on
/// the field's type: a type without `Display` is reported there, in the
/// words of that trait's `on_unimplemented`.
fn read_field(field: &EventField, marker: TokenStream, method: TokenStream) -> TokenStream {
    let EventField { ident, ty } = *field;
    let path = quote_spanned!(ty.span()=> <#ty as ::outbox::__private::#marker>::#method);
    quote!(#path(&self.#ident))
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
            ::outbox::__private::EventRegistration {
                rust_type: ::core::concat!(::core::module_path!(), "::", "EssayStored"),
                event_type: "EssayStored",
                topic: "files.essay.v1",
                aggregate_type: "file_upload",
                version: 1u32,
                description: "Essay content was stored.\n\nReady for processing.",
                type_id: ::outbox::__private::TypeId::of::<EssayStored>,
                payload_schema: ::core::option::Option::None,
                aggregate_id_field: ::core::option::Option::Some("file_upload_id"),
                key_field: ::core::option::Option::None,
            }
        }
        .to_string();
        assert!(out.contains(&registration), "{out}");
        let aggregate_id = quote! {
            fn aggregate_id(&self) -> ::outbox::__private::String {
                <u64 as ::outbox::__private::AggregateId>::to_aggregate_id(&self.file_upload_id)
            }
        };
        assert!(out.contains(&aggregate_id.to_string()), "{out}");
        let assert_payload = quote!(
            const _: () = ::outbox::__private::assert_payload::<EssayStored>();
        );
        assert!(out.contains(&assert_payload.to_string()), "{out}");
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
                <String as ::outbox::__private::PartitionKey>::to_partition_key(&self.batch)
            }
        };
        assert!(out.contains(&key.to_string()), "{out}");
        let fields = quote! {
            aggregate_id_field: ::core::option::Option::Some("id"),
            key_field: ::core::option::Option::Some("batch"),
        };
        assert!(out.contains(&fields.to_string()), "{out}");
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
        assert!(out.contains("event_type : \"Match\" ,"), "{out}");
        assert!(
            out.contains("aggregate_id_field : :: core :: option :: Option :: Some (\"type\")"),
            "{out}"
        );
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

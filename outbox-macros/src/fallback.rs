//! Output for invalid input: the errors plus, where possible, a stub impl,
//! so the user sees the real errors and not a cascade of "`OutboxEvent` is
//! not implemented" at every use of the type.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::{Data, DeriveInput};

pub(crate) fn expand(input: &DeriveInput, errors: syn::Error) -> TokenStream {
    let errors = errors.into_compile_error();
    let generics = &input.generics;
    let stub_possible = matches!(input.data, Data::Struct(_))
        && generics.params.is_empty()
        && generics.where_clause.is_none();
    if !stub_possible {
        return errors;
    }

    let ident = &input.ident;
    let rust_name = ident.unraw().to_string();
    quote! {
        #errors

        const _: () = {
            #[automatically_derived]
            impl ::outbox::__private::OutboxEvent for #ident {
                const REGISTRATION: ::outbox::__private::EventRegistration =
                    ::outbox::__private::EventRegistration {
                        rust_type: ::core::concat!(::core::module_path!(), "::", #rust_name),
                        event_type: #rust_name,
                        topic: "",
                        aggregate_type: "",
                        version: 1u32,
                        description: "",
                        type_id: ::outbox::__private::TypeId::of::<#ident>,
                        payload_schema: ::core::option::Option::None,
                        aggregate_id_field: ::core::option::Option::None,
                        key_field: ::core::option::Option::None,
                    };

                fn aggregate_id(&self) -> ::outbox::__private::String {
                    ::core::unreachable!()
                }
            }
        };
    }
}

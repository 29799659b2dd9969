//! Derive macros of the [`outbox`](https://docs.rs/outbox) crate. Use them
//! through `outbox`, which re-exports them; generated code names only
//! `::outbox::__private` and `::core`.

mod attr;
mod ctxt;
mod expand;
mod fallback;
mod parse;
mod validate;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

#[doc = include_str!("../docs/derive.md")]
#[proc_macro_derive(OutboxEvent, attributes(outbox_event))]
pub fn derive_outbox_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}

//! Compile tests for `#[derive(OutboxEvent)]`: `tests/ui/` holds one mistake
//! per file with the error it must produce, `tests/pass/` inputs that must
//! compile and run, and the other tests check the generated code against
//! strict lints and the runtime registry.

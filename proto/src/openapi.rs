//! OpenAPI schemas of the types whose serde is hand-written (ids, timestamps), so that the
//! document says exactly what the deserializers accept. Only with the `openapi` feature.

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;

/// A UUID string.
pub fn uuid(what: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::Custom("uuid".into())))
        .description(Some(format!("A {what}: a UUID.")))
        .into()
}

/// A string that must match `pattern` (which also bounds its length to `max`).
pub fn pattern_string(rule: &str, pattern: &str, max: usize) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .description(Some(rule))
        .into()
}

/// An RFC 3339 timestamp with milliseconds.
pub fn timestamp() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .description(Some("RFC 3339 time, UTC, with milliseconds."))
        .examples(["2026-01-31T12:00:00.000Z"])
        .into()
}

//! `GET /v1/openapi.json`: the API described from the very types and handlers that serve it.
//!
//! Every handler carries a `#[utoipa::path]` naming its route, parameters, body and answers;
//! the bodies are the `warmpool-proto` types (built with its `openapi` feature), so a field
//! added to a type is in the document at once. What every operation shares is added here by
//! [`Common`], from the same functions the server uses: the bearer scheme, `401` on every
//! operation, `403` where [`crate::auth::required_role`] asks for more than a viewer key, and
//! the headers every answer carries. A unit test below checks that the document lists exactly
//! the routes the router serves.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response as OaResponse, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr};
use utoipa::{IntoParams, Modify, OpenApi};
use warmpool_proto::api::Role;

use super::{allocations, cluster, events, fleet, keys, pools, session, tenants, workspaces};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Warmpool",
        description = "Pre-warmed containers on a fleet of Docker hosts. Errors are \
            `{\"error\":{\"code\":\"…\",\"message\":\"…\"}}` with the matching status. With auth on \
            (`--auth`), every route needs `Authorization: Bearer <key>`: viewer keys read, user \
            keys also allocate, release and renew, admin keys do everything."
    ),
    paths(
        fleet::health,
        fleet::ready,
        fleet::whoami,
        fleet::status,
        fleet::usage,
        fleet::containers,
        fleet::container,
        fleet::nodes,
        fleet::node_action,
        pools::list,
        pools::create,
        pools::get,
        pools::put,
        pools::delete,
        allocations::create,
        allocations::list,
        allocations::get,
        allocations::release,
        allocations::renew,
        session::logs,
        session::exec,
        session::download,
        session::upload,
        super::gateway::route,
        events::list,
        events::stream,
        cluster::view,
        cluster::add,
        cluster::remove,
        keys::list,
        keys::create,
        keys::revoke,
        tenants::list,
        tenants::get,
        tenants::put,
        tenants::delete,
        workspaces::list,
        workspaces::get,
        workspaces::delete,
        super::metrics,
        openapi_json,
    ),
    components(schemas(
        warmpool_proto::api::ErrorBody,
        fleet::NodeAction,
        warmpool_proto::session::ExecEvent,
        warmpool_proto::session::LogsDropped,
    )),
    security(("bearer" = [])),
    modifiers(&Common),
    tags(
        (name = "fleet", description = "Health, status, containers and nodes"),
        (name = "pools", description = "Pool specs"),
        (name = "allocations", description = "Handing out warm containers"),
        (name = "session", description = "Using an allocated container: live logs, exec, files (the allocation's tenant and admins only)"),
        (name = "events", description = "The lifecycle event log"),
        (name = "cluster", description = "Raft state and membership"),
        (name = "keys", description = "API keys (admin only)"),
        (name = "tenants", description = "Tenants' limits: concurrent allocations and rate"),
        (name = "workspaces", description = "Saved workspaces (a tenant's key sees its own)"),
        (name = "meta", description = "Metrics and this document"),
    )
)]
pub struct ApiDoc;

/// `Warmpool-Consistency`, taken by every read of the replicated state.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct Consistency {
    /// `linearizable` makes the read wait for a quorum-confirmed index first; `local` (or no
    /// header) reads the answering member's replica as it is. Anything else is a 400.
    #[param(
        rename = "Warmpool-Consistency",
        required = false,
        inline,
        example = "linearizable"
    )]
    warmpool_consistency: ConsistencyLevel,
}

/// The values of `Warmpool-Consistency`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
enum ConsistencyLevel {
    Linearizable,
    Local,
}

/// What every operation shares; see the module doc.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("wpk_<id>_<secret>")
                    .description(Some(
                        "An API key made with POST /v1/keys or --admin-key-file",
                    ))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations(item) {
                add_auth_answers(&method, path, op);
                add_consistency_answer(op);
                add_common_headers(op);
                // Handlers are named by what they do within their module (`list`, `get`):
                // the tag makes the id unique, e.g. `pools_list`.
                if let (Some(tag), Some(id)) =
                    (op.tags.as_ref().and_then(|t| t.first()), &op.operation_id)
                {
                    op.operation_id = Some(format!("{tag}_{id}"));
                }
            }
        }
    }
}

fn operations(item: &mut PathItem) -> Vec<(Method, &mut Operation)> {
    [
        (Method::GET, item.get.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::PUT, item.put.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
        (Method::PATCH, item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}

fn error(description: &str) -> OaResponse {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// 401 on every operation (a path template stands for any value: the role does not depend on
/// it); 403 where a viewer key is not enough.
fn add_auth_answers(method: &Method, path: &str, op: &mut Operation) {
    // Routes that need no key (the probes) answer neither 401 nor 403.
    let Some(needed) = crate::auth::required_role(method, path) else {
        op.security = Some(Vec::new());
        return;
    };
    let responses = &mut op.responses.responses;
    let mut unauthorized = error("No key, or an unknown, malformed or revoked one (auth on)");
    unauthorized.headers.insert(
        header::WWW_AUTHENTICATE.to_string(),
        HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::String))
            .description(Some("Bearer"))
            .build(),
    );
    responses
        .entry("401".into())
        .or_insert(RefOr::T(unauthorized));
    if needed > Role::Viewer {
        let msg = format!("The key's role is below {} (auth on)", needed.as_str());
        responses
            .entry("403".into())
            .or_insert(RefOr::T(error(&msg)));
    }
}

/// 400 on every read that takes `Warmpool-Consistency`: a value other than `linearizable` or
/// `local` is refused.
fn add_consistency_answer(op: &mut Operation) {
    let takes_it = op
        .parameters
        .iter()
        .flatten()
        .any(|p| p.name.eq_ignore_ascii_case("Warmpool-Consistency"));
    if takes_it {
        op.responses
            .responses
            .entry("400".into())
            .or_insert(RefOr::T(error(
                "Malformed request, or an unknown Warmpool-Consistency (`bad_request`)",
            )));
    }
}

/// Headers on every answer, whatever its status (see [`super::observe`]).
fn add_common_headers(op: &mut Operation) {
    let header = |ty: Type, description: &str| {
        HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(ty))
            .description(Some(description))
            .build()
    };
    for response in op.responses.responses.values_mut() {
        let RefOr::T(r) = response else { continue };
        r.headers
            .entry(super::APPLIED_INDEX_HEADER.into())
            .or_insert_with(|| {
                header(
                    Type::Integer,
                    "The Raft index the answering member had applied",
                )
            });
        r.headers
            .entry(super::LEADER_HEADER.into())
            .or_insert_with(|| {
                header(
                    Type::String,
                    "The leader the answering member knows, or `none` (its reads may be stale)",
                )
            });
        r.headers.entry("x-request-id".into()).or_insert_with(|| {
            header(
                Type::String,
                "The request's id: the caller's `x-request-id`, or a new one",
            )
        });
    }
}

/// The document, as served.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!(r#"{{"error":"cannot render the document: {e}"}}"#))
    })
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `(method, path)` of every `.route(...)` in the router's source (`api/mod.rs`).
    fn routed() -> BTreeSet<(String, String)> {
        let src = include_str!("mod.rs");
        let mut out = BTreeSet::new();
        for chunk in src.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).expect("a quoted path");
            // The route's handlers: up to the parenthesis that closes `.route(`.
            let mut depth = 1;
            let end = chunk
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(chunk.len(), |(i, _)| i);
            let handlers = &chunk[..end];
            for method in ["get", "post", "put", "delete", "patch"] {
                let called = |prefix: &str| handlers.contains(&format!("{prefix}{method}("));
                if called(" ") || called("(") || called(".") || called("::") {
                    out.insert((method.to_string(), path.to_string()));
                }
            }
        }
        out
    }

    #[test]
    fn the_pool_spec_documents_its_egress_policy() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["PoolSpec"]["properties"]["egress"]["$ref"], "#/components/schemas/Egress",
            "{}",
            schemas["PoolSpec"]["properties"]["egress"]
        );
        let egress = schemas["Egress"].to_string();
        for word in ["none", "internet", "allow", "EgressRule"] {
            assert!(egress.contains(word), "{word} not in {egress}");
        }
        assert!(schemas["EgressRule"]["properties"]["prefix"].is_object());
    }

    #[test]
    fn an_allocation_may_be_pending_and_asked_for_asynchronously_in_a_location() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let states = schemas["AllocationState"].to_string();
        for word in ["pending", "active", "released", "cancelled"] {
            assert!(states.contains(word), "{word} not in {states}");
        }
        let required = schemas["Allocation"]["required"].to_string();
        for absent_while_pending in ["container_id", "node", "expires_at"] {
            assert!(
                !required.contains(&format!("\"{absent_while_pending}\"")),
                "{absent_while_pending} is required: {required}"
            );
        }
        let create = &schemas["CreateAllocation"]["properties"];
        for field in ["async", "location", "max_lifetime_secs"] {
            assert!(create[field].is_object(), "{field} missing: {create}");
        }
        let codes = schemas["ErrorCode"].to_string();
        assert!(codes.contains("no_matching_node"), "{codes}");
        // A location value is one value or a preference list; its schema is in the document.
        let location = create["location"].to_string();
        if let Some(r) = location
            .split("#/components/schemas/")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        {
            assert!(schemas[r].is_object(), "{r} referenced but not defined");
        }
        assert!(
            location.contains("array") || schemas["LocationValue"].to_string().contains("array"),
            "{location}"
        );
        let post = doc["paths"]["/v1/allocations"]["post"]["responses"].to_string();
        assert!(post.contains("\"202\""), "{post}");
    }

    #[test]
    fn archived_lists_document_their_parameters_and_one_json_body() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        for path in ["/v1/containers", "/v1/allocations", "/v1/events"] {
            let op = &doc["paths"][path]["get"];
            let names: BTreeSet<&str> = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["name"].as_str())
                .collect();
            for want in ["archived", "since", "until"] {
                assert!(names.contains(want), "{path}: no {want} in {names:?}");
            }
            let ok = op["responses"]["200"]["content"].as_object().unwrap();
            assert_eq!(
                ok.keys().collect::<Vec<_>>(),
                vec!["application/json"],
                "{path}"
            );
        }
    }

    #[test]
    fn the_document_lists_exactly_the_routes_the_router_serves() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let routed = routed();
        assert!(
            routed.len() >= 25,
            "the route parser found too little: {routed:?}"
        );
        assert_eq!(
            documented.difference(&routed).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "documented but not routed"
        );
        assert_eq!(
            routed.difference(&documented).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "routed but not documented"
        );
    }

    #[test]
    fn the_document_renders_with_auth_answers() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let keys = &doc["paths"]["/v1/keys"]["get"]["responses"];
        assert!(
            keys.get("401").is_some() && keys.get("403").is_some(),
            "{keys}"
        );
        let status = &doc["paths"]["/v1/status"]["get"]["responses"];
        assert!(status.get("401").is_some() && status.get("403").is_none());
        assert!(
            status.get("400").is_some(),
            "an unknown consistency is a 400"
        );
        let consistency = doc["paths"]["/v1/status"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "Warmpool-Consistency")
            .unwrap()
            .clone();
        assert_eq!(
            consistency["schema"]["enum"],
            serde_json::json!(["linearizable", "local"]),
            "{consistency}"
        );
        let alloc = &doc["paths"]["/v1/allocations"]["post"]["responses"];
        assert!(alloc.get("403").is_some(), "a viewer may not allocate");
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        assert!(doc["components"]["schemas"]["PoolSpec"].is_object());
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap();
                assert!(
                    ids.insert(id.to_string()),
                    "{method} {path}: operationId {id} twice"
                );
            }
        }
    }
}

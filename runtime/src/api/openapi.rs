//! The API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the [`super::schema`] types: served at `/openapi.yaml` and
//! `/openapi.json`, and kept in the repository as `docs/openapi.yaml` (a test compares the
//! two; `SLUICE_BLESS=1` rewrites the file).

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The document's paths, schemas, security and tags.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice worker API",
        description = "The REST API of `sluice run` (default http://127.0.0.1:7070). When the worker runs with `--token` (or SLUICE_API_TOKEN), every request except /health, /ingest, /openapi.* and the console's files must send `Authorization: Bearer <token>`; /ingest accepts the API token or its source's own token. Every error is JSON: `{\"error_code\": <HTTP status>, \"message\": \"...\"}`.",
        license(name = "Apache-2.0")
    ),
    paths(
        super::health,
        super::openapi_yaml,
        super::openapi_json,
        super::metrics::metrics,
        super::pipelines::list,
        super::pipelines::status,
        super::pipelines::put,
        super::pipelines::delete,
        super::pipelines::config,
        super::pipelines::validate,
        super::pipelines::action,
        super::pipelines::restart_task,
        super::pipelines::offsets,
        super::pipelines::reset_offsets,
        super::pipelines::queries,
        super::log::topics,
        super::log::create_topic,
        super::log::describe_topic,
        super::log::delete_topic,
        super::log::read_records,
        super::log::produce,
        super::consume::consume,
        super::consume::commit,
        super::log::groups,
        super::log::describe_group,
        super::log::delete_group,
        super::log::reset_offsets,
        super::cluster::cluster,
        super::sql::statements,
        super::sql::push_query,
        super::ingest::ingest,
        super::console::asset,
    ),
    components(schemas(super::pipelines::Action)),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "worker", description = "Health, metrics and this document"),
        (name = "pipelines", description = "Deploy and run pipeline files"),
        (name = "topics", description = "Topics and their records"),
        (name = "groups", description = "Consumer groups, their offsets and lag"),
        (name = "cluster", description = "The cluster's nodes, controller and partition replicas"),
        (name = "sql", description = "Streaming SQL: statements, push queries, persistent queries"),
        (name = "ingest", description = "HTTP sources"),
        (name = "console", description = "The web console's files"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

/// The operations open without the token (the others may answer 401).
const OPEN: &[&str] = &["health", "openapiYaml", "openapiJson", "console", "ingest"];

/// Declares the bearer token scheme the document's `security` names, and the 401 every
/// operation that needs it may answer.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let unauthorized = utoipa::openapi::ResponseBuilder::new()
            .description("The bearer token is missing or wrong (when the worker has one)")
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                if op
                    .operation_id
                    .as_deref()
                    .is_some_and(|id| OPEN.contains(&id))
                {
                    continue;
                }
                op.responses
                    .responses
                    .entry("401".into())
                    .or_insert_with(|| unauthorized.clone().into());
            }
        }
    }
}

/// The document, with this build's version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as YAML.
pub fn yaml() -> Result<String, String> {
    document().to_yaml().map_err(|e| e.to_string())
}

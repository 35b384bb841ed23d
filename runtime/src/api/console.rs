//! The web console: the files of `console/dist/` built into the binary (see `build.rs`),
//! served at `/` without the API token (a browser cannot send one with a page load; the
//! console asks for the token and sends it with each API call).

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

mod assets {
    include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));
}

/// Whether the console was built into this binary.
pub fn built() -> bool {
    !assets::ASSETS.is_empty()
}

/// True for the paths the console's files are served at (open without the token).
pub fn is_console_path(path: &str) -> bool {
    path == "/" || path == "/index.html" || path.starts_with("/assets/")
}

/// What `/` answers when the binary was built without the console.
const NOT_BUILT: &str = "<!doctype html><title>Sluice</title><h1>Sluice</h1>\
<p>This binary was built without its web console. Build it with \
<code>cd console &amp;&amp; npm ci &amp;&amp; npm run build</code> (scripts/setup.sh does), \
then rebuild <code>sluice</code>. The REST API is served here all the same: \
<a href=\"/openapi.yaml\">/openapi.yaml</a>.</p>";

/// The web console (also `/index.html` and `/assets/*`): open without the token; the page
/// asks for it.
#[utoipa::path(get, operation_id = "console", path = "/", tag = "console", security(()),
    responses((status = 200, description = "The console's page", content_type = "text/html", body = String)))]
pub async fn asset(uri: Uri) -> Response {
    let path = match uri.path() {
        "/" => "/index.html",
        p => p,
    };
    let Some((_, content_type, bytes)) = assets::ASSETS.iter().find(|(p, _, _)| *p == path) else {
        if path == "/index.html" {
            return (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                NOT_BUILT,
            )
                .into_response();
        }
        return super::ApiError(StatusCode::NOT_FOUND, format!("no console file {path}"))
            .into_response();
    };
    // File names under /assets/ carry a hash of their content: cached for good. The page
    // itself is revalidated, so a new binary's console is picked up.
    let cache = if path.starts_with("/assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut resp = (*bytes).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

//! The dashboard's built files, served at `/` by every member.
//!
//! Vite puts content-hashed files under `/assets/`: they never change, so browsers may keep
//! them for a year. Everything else (`index.html` above all) must be revalidated, so a new
//! build shows up on the next load. Paths under `/v1/` never reach this: an unknown API path
//! is a JSON 404, not a page.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeDir;

use super::error::ApiError;
use super::AppState;

pub async fn serve(State(app): State<AppState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let api = path == "/v1" || path.starts_with("/v1/") || path == "/metrics";
    let Some(dir) = app.dashboard.clone().filter(|_| !api) else {
        return ApiError::NotFound(format!("no route for {} {path}", req.method())).into_response();
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ApiError::MethodNotAllowed(format!("{} is not allowed on {path}", req.method()))
            .into_response();
    }
    // Any other path is one of the page's own routes (`/containers`, ...): index.html. A
    // missing asset is a 404, never the page: a browser would keep that for a year.
    let asset = path.starts_with("/assets/");
    let req = req.map(|_| Body::empty());
    let served = if asset {
        ServeDir::new(&dir).oneshot(req).await
    } else {
        let index = tower_http::services::ServeFile::new(dir.join("index.html"));
        ServeDir::new(&dir)
            .append_index_html_on_directories(true)
            .fallback(index)
            .oneshot(req)
            .await
    };
    let mut resp = match served {
        Ok(r) => r.into_response(),
        Err(e) => return ApiError::Internal(format!("dashboard: {e}")).into_response(),
    };
    if asset && resp.status() == axum::http::StatusCode::NOT_FOUND {
        return ApiError::NotFound(format!("no dashboard file {path}")).into_response();
    }
    let cache = if asset && resp.status().is_success() {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

//! The live dashboard at `/`: one HTML page with its CSS and JavaScript, embedded in the binary
//! (no build step). It asks for the admin token once (kept in the browser's session storage),
//! then follows the server's stream of live updates (`GET /v1/events`, [`super::live`]; no
//! polling, and a new stream after a dropped one): campaigns with status, progress, rate and
//! ETA, and per campaign its executions, counts by state and by error, an audit search by phone
//! (masked), and stop / cancel / resume buttons.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("dashboard.html");

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}

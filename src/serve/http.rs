//! The HTTP edge of the server: axum routes over [`ServeState`]. Everything the routes do
//! besides HTTP (parsing inputs, batching, the model) lives in the other files, so the tests
//! drive this router in-process as well as over a socket.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::input::{Batch, InputError, InputSpec};
use super::ServeState;

/// The router of `exp serve`.
pub fn router(state: Arc<ServeState>) -> Router {
    Router::new()
        .route("/invocations", post(invocations))
        .route("/predict", post(predict))
        .route("/ping", get(ping))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/version", get(version))
        .route("/v1/model", get(model))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// An error answer in MLflow's shape: `{"error_code": …, "message": …}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let code = match status {
        StatusCode::BAD_REQUEST => "BAD_REQUEST",
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
        StatusCode::SERVICE_UNAVAILABLE => "SERVICE_UNAVAILABLE",
        StatusCode::NOT_FOUND => "ENDPOINT_NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::REQUEST_TIMEOUT => "REQUEST_TIMEOUT",
        _ => "INTERNAL_ERROR",
    };
    let response = (
        status,
        Json(json!({"error_code": code, "message": message.into()})),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        retry_soon(response)
    } else {
        response
    }
}

/// `response` with `Retry-After: 1`: a 503 that will pass (warming up, a full queue).
fn retry_soon(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Counts and times every request, and logs it at debug level.
async fn observe(State(state): State<Arc<ServeState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_string();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = match tokio::time::timeout(super::REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {} s (reading its body, waiting and the forward pass)",
                super::REQUEST_TIMEOUT.as_secs()
            ),
        ),
    };
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status();
    state
        .metrics
        .requests
        .with_label_values(&[endpoint.as_str(), status.as_str()])
        .inc();
    state
        .metrics
        .latency
        .with_label_values(&[endpoint.as_str()])
        .observe(seconds);
    tracing::debug!(
        "{method} {path} {} {:.2} ms",
        status.as_u16(),
        seconds * 1000.0
    );
    response
}

/// The body, or the status and message for one that cannot be read (over the limit: 413).
fn body(
    state: &ServeState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, (StatusCode, String)> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is larger than {} bytes (exp serve --max-body-bytes)",
                    state.max_body_bytes
                ),
            )
        } else {
            (rejection.status(), rejection.body_text())
        }
    })
}

/// Runs a parsed batch through the queue and answers with the predictions.
async fn answer(state: &ServeState, batch: Result<Batch, InputError>) -> Response {
    let batch = match batch {
        Ok(batch) => batch,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.0),
    };
    let Some(batcher) = state.batcher() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model is still loading (GET /ready answers 200 once it serves)",
        );
    };
    let waiting = match batcher.submit(batch) {
        Ok(waiting) => waiting,
        Err(full) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{full}; retry later (exp serve --max-queue)"),
            )
        }
    };
    match waiting.await {
        Ok(Ok(rows)) => {
            let predictions: Vec<_> = rows
                .into_iter()
                .map(|probabilities| {
                    let label = argmax(&probabilities);
                    json!({
                        "label": label,
                        "class": state.info.classes.get(label),
                        "probabilities": probabilities,
                    })
                })
                .collect();
            Json(json!({ "predictions": predictions })).into_response()
        }
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the forward pass failed: {e}"),
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ),
    }
}

fn argmax(values: &[f64]) -> usize {
    (0..values.len())
        .max_by(|&a, &b| values[a].total_cmp(&values[b]).then(b.cmp(&a)))
        .unwrap_or(0)
}

/// The media type of a request, without parameters, lower-case; None when not given.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

async fn invocations(
    State(state): State<Arc<ServeState>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let wrong_type = |media: &str| {
        format!("/invocations takes application/json, not {media} (images go to /predict)")
    };
    predictions(
        state,
        &headers,
        raw,
        &["application/json"],
        wrong_type,
        InputSpec::parse_json,
    )
    .await
}

async fn predict(
    State(state): State<Arc<ServeState>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let wrong_type = |media: &str| {
        format!("/predict takes a PNG or JPEG body (image/png, image/jpeg), not {media}; JSON goes to /invocations")
    };
    let accepted = ["image/png", "image/jpeg", "application/octet-stream"];
    predictions(
        state,
        &headers,
        raw,
        &accepted,
        wrong_type,
        InputSpec::parse_image,
    )
    .await
}

/// The two prediction endpoints: the content type among `accepted` (or none), the body read,
/// `parse` run off the async threads (it is CPU work: /health answers while big bodies parse),
/// and the batch answered.
async fn predictions(
    state: Arc<ServeState>,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
    accepted: &[&str],
    wrong_type: impl Fn(&str) -> String,
    parse: fn(&InputSpec, &[u8]) -> Result<Batch, InputError>,
) -> Response {
    if let Some(media) = media_type(headers) {
        if !accepted.contains(&media.as_str()) {
            return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, wrong_type(&media));
        }
    }
    let bytes = match body(&state, raw) {
        Ok(bytes) => bytes,
        Err((status, message)) => return error(status, message),
    };
    let parsing = state.clone();
    let batch = tokio::task::spawn_blocking(move || parse(&parsing.input, &bytes))
        .await
        // A panic in the parser is the body's fault; it must not take the server down.
        .unwrap_or_else(|e| Err(InputError(format!("the body could not be read: {e}"))));
    answer(&state, batch).await
}

/// MLflow's health check: 200 once the model serves.
async fn ping(State(state): State<Arc<ServeState>>) -> Response {
    if state.batcher().is_some() {
        (StatusCode::OK, "\n").into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model is still loading",
        )
    }
}

/// Liveness: the process answers (whether or not the model is ready).
async fn health(State(state): State<Arc<ServeState>>) -> Response {
    Json(json!({"status": "ok", "ready": state.batcher().is_some()})).into_response()
}

/// Readiness: 200 only after the weights are loaded and a warm-up forward pass has run.
async fn ready(State(state): State<Arc<ServeState>>) -> Response {
    if state.batcher().is_some() {
        Json(json!({"ready": true})).into_response()
    } else {
        retry_soon(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"ready": false, "status": "warming up"})),
            )
                .into_response(),
        )
    }
}

async fn version() -> Response {
    Json(json!({"exp": crate::VERSION, "candle": crate::CANDLE_VERSION})).into_response()
}

async fn model(State(state): State<Arc<ServeState>>) -> Response {
    Json(&state.info).into_response()
}

async fn metrics(State(state): State<Arc<ServeState>>) -> Response {
    if let Some(batcher) = state.batcher() {
        state.metrics.queue_depth.set(batcher.depth() as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found(request: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {} {}: POST /invocations, POST /predict, GET /ping, /health, /ready, /version, /v1/model, /metrics",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} {} is not served: POST /invocations and /predict, GET the others",
            request.method(),
            request.uri().path()
        ),
    )
}

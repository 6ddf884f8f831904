//! Any bytes as the body (or query, or path) of a request to the HTTP API's routes,
//! against one real broker in a temporary directory: every answer is a success or a JSON
//! error `{"error", "message"}` with a 4xx status; never a panic, never a 500.
//!
//! The first byte picks the route; the rest is the body (POST/PATCH), the query string
//! (GET) or the path itself. Time is paused, so a long-poll `wait_ms` costs nothing.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use herald_broker::queue::SubscriptionSettings;
use herald_broker::{Broker, BrokerConfig};
use herald_http::{AppState, HttpLimits};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct World {
    runtime: tokio::runtime::Runtime,
    state: AppState,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let state = runtime.block_on(async {
            let broker: Arc<Broker> =
                Broker::open(BrokerConfig::new(dir.path().to_path_buf())).expect("broker");
            broker
                .create_topic("t", Some(2), Default::default(), false)
                .expect("topic");
            broker
                .create_subscription("t", "s", SubscriptionSettings::default())
                .await
                .expect("subscription");
            AppState::new(broker, HttpLimits::default())
        });
        World {
            runtime,
            state,
            _dir: dir,
        }
    })
}

const SUB: &str = "/topics/t/subscriptions/s";

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (method, uri, body) = match pick % 12 {
        0 => (Method::POST, "/topics/t/records".to_string(), rest),
        1 => (Method::POST, "/topics/t/subscriptions".to_string(), rest),
        2 => (Method::PATCH, SUB.to_string(), rest),
        3 => (Method::POST, format!("{SUB}/receive"), rest),
        4 => (Method::POST, format!("{SUB}/ack"), rest),
        5 => (Method::POST, format!("{SUB}/nack"), rest),
        6 => (Method::POST, format!("{SUB}/release"), rest),
        7 => (Method::POST, format!("{SUB}/extend"), rest),
        8 => (
            Method::GET,
            format!("/topics/t/partitions/0/records?{text}"),
            &[][..],
        ),
        9 => (Method::GET, format!("{SUB}/dead-letters?{text}"), &[][..]),
        10 => (Method::GET, format!("/{text}"), &[][..]),
        _ => (Method::POST, "/topics".to_string(), rest),
    };
    // Topic creation with a fuzzed partition count would fill the disk; keep it small.
    if pick % 12 == 11 && rest.len() > 64 {
        return;
    }
    let Ok(request) = Request::builder()
        .method(method)
        .uri(&uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
    else {
        return; // not a valid URI: rejected before any route sees it
    };
    let w = world();
    let (status, bytes) = w.runtime.block_on(async {
        let response = herald_http::router(w.state.clone(), herald_http::BODY_BYTES_MAX_DEFAULT)
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, bytes)
    });
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{uri}: {}",
        String::from_utf8_lossy(&bytes)
    );
    if status.is_client_error() {
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("4xx body is JSON");
        assert!(
            json["error"].is_string() && json["message"].is_string(),
            "{json}"
        );
    }
});

//! The router without a socket: error shapes, readiness, and metrics from a real broker.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use herald_broker::{Broker, BrokerConfig};
use herald_http::{AppState, BODY_BYTES_MAX_DEFAULT, HttpLimits, router};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn call(state: &AppState, method: Method, uri: &str) -> (StatusCode, String) {
    let response = router(state.clone(), BODY_BYTES_MAX_DEFAULT)
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

fn state(dir: &std::path::Path) -> AppState {
    let broker = Broker::open(BrokerConfig::new(dir.to_path_buf())).unwrap();
    AppState::new(broker, HttpLimits::default())
}

#[tokio::test]
async fn errors_are_json_and_readiness_follows_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path());
    let (status, body) = call(&state, Method::GET, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("starting"), "{body}");
    state.ready.store(true, Ordering::Release);
    assert_eq!(call(&state, Method::GET, "/ready").await.0, StatusCode::OK);

    let (status, body) = call(&state, Method::GET, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "not_found");
    let (status, body) = call(&state, Method::DELETE, "/health").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body.contains("method_not_allowed"), "{body}");
    let (status, body) = call(&state, Method::GET, "/topics/missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("unknown_topic"), "{body}");
}

#[tokio::test]
async fn metrics_and_topics_show_the_broker_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path());
    state
        .broker
        .create_topic("orders", Some(3), Default::default(), false)
        .unwrap();
    let (status, text) = call(&state, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("kafka_topic_partitions{topic=\"orders\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("kafka_topic_partition_current_offset{topic=\"orders\",partition=\"2\"} 0"),
        "{text}"
    );
    let (status, body) = call(&state, Method::GET, "/topics/orders").await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["partitions"].as_array().unwrap().len(), 3);
    let (_, spec) = call(&state, Method::GET, "/openapi.json").await;
    assert!(spec.contains("/groups/{group_id}"), "{spec}");
}

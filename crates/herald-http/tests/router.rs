//! The router without a socket: error shapes, readiness, and metrics from a real broker.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use herald_broker::{Broker, BrokerConfig};
use herald_http::{AppState, BODY_BYTES_MAX_DEFAULT, HttpLimits, router};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn call(state: &AppState, method: Method, uri: &str) -> (StatusCode, String) {
    send(
        state,
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

async fn send(state: &AppState, request: Request<Body>) -> (StatusCode, String) {
    let response = router(state.clone(), BODY_BYTES_MAX_DEFAULT)
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// A JSON request; the answer parsed as JSON (null for an empty body).
async fn call_json(
    state: &AppState,
    method: Method,
    uri: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, text) = send(state, request).await;
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    (status, json)
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

#[tokio::test]
async fn a_failing_record_is_retried_dead_lettered_and_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path());
    state
        .broker
        .create_topic("jobs", Some(1), Default::default(), false)
        .unwrap();
    let (status, sub) = call_json(
        &state,
        Method::POST,
        "/topics/jobs/subscriptions",
        serde_json::json!({"name": "w", "max_deliveries": 2, "backoff_base_ms": 1,
            "backoff_max_ms": 1, "backoff_jitter": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    assert_eq!(sub["dead_letter_topic"], "jobs.w.dlq");
    let (status, again) = call_json(
        &state,
        Method::POST,
        "/topics/jobs/subscriptions",
        serde_json::json!({"name": "w"}),
    )
    .await;
    assert_eq!(
        (status, again["error"].as_str()),
        (StatusCode::CONFLICT, Some("subscription_exists"))
    );
    let (status, _) = call_json(
        &state,
        Method::POST,
        "/topics/jobs/records",
        serde_json::json!({"records": [{"key": "k1", "value": {"n": 1}, "headers": {"h": "v"}}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let receive = serde_json::json!({"max_records": 10, "wait_ms": 5000});
    for attempt in 1..=2 {
        let (status, got) = call_json(
            &state,
            Method::POST,
            "/topics/jobs/subscriptions/w/receive",
            receive.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{got}");
        let record = &got["records"][0];
        assert_eq!(record["delivery_count"], attempt, "{got}");
        assert_eq!(record["value"], serde_json::json!({"n": 1}));
        let (status, nacked) = call_json(
            &state,
            Method::POST,
            "/topics/jobs/subscriptions/w/nack",
            serde_json::json!({"receipt": record["receipt"], "error": format!("boom {attempt}")}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{nacked}");
        assert_eq!(nacked["dead_lettered"], attempt == 2);
    }
    let (_, dead) = call(
        &state,
        Method::GET,
        "/topics/jobs/subscriptions/w/dead-letters",
    )
    .await;
    let dead: serde_json::Value = serde_json::from_str(&dead).unwrap();
    let headers = &dead["records"][0]["headers"];
    assert_eq!(headers["herald-dlq-last-error"], "boom 2", "{dead}");
    assert_eq!(headers["herald-dlq-delivery-count"], "2", "{dead}");
    assert_eq!(headers["h"], "v", "{dead}");
    let (_, text) = call(&state, Method::GET, "/metrics").await;
    let labels = "{topic=\"jobs\",subscription=\"w\"}";
    for line in [
        format!("herald_subscription_dlq_depth{labels} 1"),
        format!("herald_subscription_dead_lettered_total{labels} 1"),
        format!("herald_subscription_in_flight{labels} 0"),
    ] {
        assert!(text.contains(&line), "{line} missing from {text}");
    }

    let (status, moved) = call_json(
        &state,
        Method::POST,
        "/topics/jobs/subscriptions/w/redrive",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(
        (status, &moved["moved"]),
        (StatusCode::OK, &serde_json::json!(1))
    );
    let (_, got) = call_json(
        &state,
        Method::POST,
        "/topics/jobs/subscriptions/w/receive",
        receive.clone(),
    )
    .await;
    let record = &got["records"][0];
    assert_eq!(record["delivery_count"], 1, "{got}");
    assert_eq!(record["key"], "k1");
    assert!(
        record["headers"].get("herald-dlq-last-error").is_none(),
        "{got}"
    );
    let (status, acked) = call_json(
        &state,
        Method::POST,
        "/topics/jobs/subscriptions/w/ack",
        serde_json::json!({"receipts": [record["receipt"], "v1:other:w:0:0:1", "junk"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{acked}");
    assert_eq!(acked["acked"], 1, "{acked}");
    let codes: Vec<&str> = acked["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["error"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["invalid_receipt", "invalid_receipt"]);
    let (status, stale) = call_json(
        &state,
        Method::POST,
        "/topics/jobs/subscriptions/w/nack",
        serde_json::json!({"receipt": record["receipt"]}),
    )
    .await;
    assert_eq!(
        (status, stale["error"].as_str()),
        (StatusCode::CONFLICT, Some("not_leased"))
    );
}

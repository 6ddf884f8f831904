//! Any bytes as the body of a gRPC request to the event store's services, through the
//! same router the listener serves (`herald_eventstore::service::routes`, with the
//! `Caller` the connection layer attaches), against one real broker in a temporary
//! directory. Never a panic; every answer is a gRPC status (in the headers or the
//! trailers) and never Herald's "broker failed" INTERNAL nor UNKNOWN (INTERNAL from
//! tonic's own decoding of a malformed message is the expected answer to garbage);
//! every message Herald sends back is a well-formed gRPC frame that decodes as the
//! method's response type; no call hangs (time is paused, so a timeout here means
//! nothing was left to run: the call waits for something that will never come).
//!
//! The first byte picks the method (Streams Append, Read, BatchAppend, Delete,
//! Tombstone, Gossip Read, ServerFeatures) and, with its top bit, how the rest is
//! sent: set, the rest is the HTTP body as is (gRPC's 5-byte message framing
//! included); clear, the rest is cut into messages of `[len: u8][len bytes]` that the
//! harness frames, so the fuzzer reaches protobuf decoding and the handlers at once.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use herald_broker::{Broker, BrokerConfig};
use herald_eventstore::caller::Caller;
use herald_eventstore::proto::{gossip, server_features, streams};
use herald_eventstore::service::{self, NodeInfo};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tonic::codegen::http;
use tonic::service::Routes;
use tower::ServiceExt;

/// The listener's own default: what a message may be, each way.
const MESSAGE_BYTES_MAX: usize = herald_eventstore::MESSAGE_BYTES_MAX_DEFAULT;
/// Response messages read before the harness hangs up (a subscription never ends by
/// itself; a read of a long `$all` need not be read to its end).
const RESPONSES_MAX: usize = 64;
/// How long (paused, virtual time) a call may take: passing it means a hang.
const CALL_DEADLINE: Duration = Duration::from_secs(600);

struct World {
    runtime: tokio::runtime::Runtime,
    routes: Routes,
    _broker: Arc<Broker>,
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
        let (broker, routes) = runtime.block_on(async {
            let broker: Arc<Broker> =
                Broker::open(BrokerConfig::new(dir.path().to_path_buf())).expect("broker");
            let node = NodeInfo {
                listen: "127.0.0.1:2113".parse().expect("address"),
                instance_id: uuid::Uuid::nil(),
            };
            let routes = service::routes(node, broker.clone(), MESSAGE_BYTES_MAX);
            (broker, routes)
        });
        World {
            runtime,
            routes,
            _broker: broker,
            _dir: dir,
        }
    })
}

#[derive(Clone, Copy, Debug)]
enum Method {
    Append,
    Read,
    BatchAppend,
    Delete,
    Tombstone,
    Gossip,
    ServerFeatures,
}

impl Method {
    fn pick(byte: u8) -> Method {
        match (byte & 0x7f) % 7 {
            0 => Method::Append,
            1 => Method::Read,
            2 => Method::BatchAppend,
            3 => Method::Delete,
            4 => Method::Tombstone,
            5 => Method::Gossip,
            _ => Method::ServerFeatures,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Method::Append => "/event_store.client.streams.Streams/Append",
            Method::Read => "/event_store.client.streams.Streams/Read",
            Method::BatchAppend => "/event_store.client.streams.Streams/BatchAppend",
            Method::Delete => "/event_store.client.streams.Streams/Delete",
            Method::Tombstone => "/event_store.client.streams.Streams/Tombstone",
            Method::Gossip => "/event_store.client.gossip.Gossip/Read",
            Method::ServerFeatures => {
                "/event_store.client.server_features.ServerFeatures/GetSupportedMethods"
            }
        }
    }

    /// Whether `message` is one of this method's responses; for a read, whether it
    /// says the subscription caught up (the harness stops there).
    fn check_response(self, message: &[u8]) -> Result<bool, prost::DecodeError> {
        match self {
            Method::Append => streams::AppendResp::decode(message).map(|_| false),
            Method::Read => streams::ReadResp::decode(message)
                .map(|r| matches!(r.content, Some(streams::read_resp::Content::CaughtUp(_)))),
            Method::BatchAppend => streams::BatchAppendResp::decode(message).map(|_| false),
            Method::Delete => streams::DeleteResp::decode(message).map(|_| false),
            Method::Tombstone => streams::TombstoneResp::decode(message).map(|_| false),
            Method::Gossip => gossip::ClusterInfo::decode(message).map(|_| false),
            Method::ServerFeatures => {
                server_features::SupportedMethods::decode(message).map(|_| false)
            }
        }
    }
}

/// `[len: u8][len bytes]...` as gRPC messages (uncompressed, 4-byte big-endian length);
/// a last chunk shorter than its length byte says is sent as it is.
fn framed(mut rest: &[u8]) -> Bytes {
    let mut body = BytesMut::new();
    while let Some((&len, tail)) = rest.split_first() {
        let (message, after) = tail.split_at(usize::from(len).min(tail.len()));
        body.put_u8(0);
        body.put_u32(message.len() as u32);
        body.put_slice(message);
        rest = after;
    }
    body.freeze()
}

/// The status in a header map (`grpc-message` percent-decoded, as clients read it).
fn grpc_status(headers: &http::HeaderMap) -> Option<(tonic::Code, String)> {
    tonic::Status::from_header_map(headers).map(|s| (s.code(), s.message().to_string()))
}

/// What a call ended with: its status, and how many response messages came before it.
#[derive(Debug)]
struct Outcome {
    status: Option<(tonic::Code, String)>,
    responses: usize,
}

async fn call(routes: Routes, method: Method, body: Bytes) -> Outcome {
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:2113{}", method.path()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .expect("request");
    let caller = Caller::of(&request, peer);
    request.extensions_mut().insert(caller);
    let response = routes.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), http::StatusCode::OK, "{method:?}");
    if let Some(status) = grpc_status(response.headers()) {
        // Trailers-only: the status and nothing else.
        return Outcome {
            status: Some(status),
            responses: 0,
        };
    }
    let mut body = response.into_body();
    let mut pending = BytesMut::new();
    let mut responses = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| panic!("{method:?}: response body error {e}"));
        if let Some(trailers) = frame.trailers_ref() {
            return Outcome {
                status: grpc_status(trailers),
                responses,
            };
        }
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while pending.len() >= 5 {
            let compressed = pending[0];
            let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
            assert_eq!(
                compressed, 0,
                "{method:?}: a compressed response nobody asked for"
            );
            assert!(
                len <= MESSAGE_BYTES_MAX,
                "{method:?}: a {len}-byte response"
            );
            if pending.len() < 5 + len {
                break;
            }
            pending.advance(5);
            let message = pending.split_to(len);
            let caught_up = method
                .check_response(&message)
                .unwrap_or_else(|e| panic!("{method:?}: a response that does not decode: {e}"));
            responses += 1;
            if caught_up || responses == RESPONSES_MAX {
                // A subscription that caught up, or a long read: enough. Dropping the
                // body hangs up, as a client that stops reading does.
                return Outcome {
                    status: None,
                    responses,
                };
            }
        }
    }
    panic!("{method:?}: the response ended without a status after {responses} messages");
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let method = Method::pick(pick);
    let body = if pick & 0x80 != 0 {
        Bytes::copy_from_slice(rest)
    } else {
        framed(rest)
    };
    let w = world();
    let outcome = w.runtime.block_on(async {
        tokio::time::timeout(CALL_DEADLINE, call(w.routes.clone(), method, body))
            .await
            .unwrap_or_else(|_| panic!("{method:?}: no answer within {CALL_DEADLINE:?}"))
    });
    let unary = !matches!(method, Method::Read | Method::BatchAppend);
    if let (true, Some((code, _))) = (unary, &outcome.status) {
        // A unary call answers with its one message and OK, or a status alone.
        let messages = usize::from(*code == tonic::Code::Ok);
        assert_eq!(outcome.responses, messages, "{method:?}: {outcome:?}");
    }
    if let Some((code, message)) = &outcome.status {
        // UNKNOWN is what a handler's unmapped error would be; Herald's INTERNAL
        // ("cannot serve stream ...") is a broker failure, which fuzzed input must
        // not cause; tonic's INTERNAL for an undecodable message is the right answer.
        assert_ne!(*code, tonic::Code::Unknown, "{method:?}: {outcome:?}");
        assert!(
            !(*code == tonic::Code::Internal
                && (message.starts_with("cannot serve") || message.starts_with("Error encoding"))),
            "{method:?}: {outcome:?}"
        );
    }
});

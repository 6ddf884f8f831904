//! `Streams`: append, batch append, read (a stream or `$all`, forwards or backwards,
//! filtered), catch-up subscriptions, delete and tombstone, translated into the
//! broker's stream calls (`herald_broker::streams`). The answers take the shapes the
//! clients parse (see the notes in each function): a conflicting append is a message
//! in the body for Append and BatchAppend but a FAILED_PRECONDITION status for Delete
//! and Tombstone, a missing stream is a `stream_not_found` message, a deleted one a
//! FAILED_PRECONDITION with KurrentDB's `exception` trailers.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use herald_broker::streams::{
    AllFilter, Appended, Expected, FilterOn, NewEvent, ReadEvent, ReadFrom, RecordedEvent,
    StreamError, StreamRead,
};
use herald_broker::{Broker, BrokerError, Principal};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::google::rpc;
use crate::proto::shared::{self, StreamIdentifier};
use crate::proto::streams::{
    AppendReq, AppendResp, BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq,
    ReadResp, TombstoneReq, TombstoneResp, append_req, append_resp, batch_append_req,
    batch_append_resp, delete_resp, read_req, read_resp, streams_server::Streams, tombstone_resp,
};

/// Events read from the broker per step of a read or subscription.
const READ_PAGE: u64 = 500;
/// Responses queued for a slow reader before the read waits for it.
const READ_QUEUE: usize = 64;
/// Most bytes of event data and metadata one append may carry (KurrentDB's default
/// `MaxAppendSize`).
pub const APPEND_BYTES_MAX: usize = 1 << 20;
/// Batch appends of one call being gathered at once (a client splits a large append
/// into several requests with one correlation id).
const BATCHES_IN_FLIGHT_MAX: usize = 64;
/// Filtered `$all` reads examine at most this many events per step, so a filter that
/// matches nothing still answers with checkpoints.
const EXAMINE_PER_STEP: usize = 4_096;

pub struct StreamsService {
    broker: Arc<Broker>,
}

impl StreamsService {
    pub fn new(broker: Arc<Broker>) -> StreamsService {
        StreamsService { broker }
    }

    /// Delete or tombstone: the position of the record that did it.
    async fn delete_stream(
        &self,
        who: &Principal,
        id: Option<&StreamIdentifier>,
        expected: Expected,
        tombstone: bool,
    ) -> Result<u64, Status> {
        let stream = stream_name(id)?;
        let op = if tombstone { "Tombstone" } else { "Delete" };
        self.broker
            .stream_delete(who, &stream, expected, tombstone)
            .await
            .map_err(|e| delete_status(e, &stream, op))
    }
}

pub(crate) fn stream_name(id: Option<&StreamIdentifier>) -> Result<String, Status> {
    let id = id.ok_or_else(|| Status::invalid_argument("stream_identifier is missing"))?;
    let name = String::from_utf8(id.stream_name.to_vec())
        .map_err(|_| Status::invalid_argument("the stream name is not UTF-8"))?;
    herald_broker::streams::check_stream_name(&name).map_err(|e| status(&e, &name))?;
    Ok(name)
}

pub(crate) fn identifier(name: &str) -> StreamIdentifier {
    StreamIdentifier {
        stream_name: Bytes::from(name.to_string()),
    }
}

/// An event from a proposed message: its id, and `type` / `content-type` from its
/// metadata map.
fn new_event(
    id: Option<&shared::Uuid>,
    metadata: &HashMap<String, String>,
    custom_metadata: Bytes,
    data: Bytes,
) -> Result<NewEvent, Status> {
    let id = id
        .and_then(crate::uuid::from_proto)
        .ok_or_else(|| Status::invalid_argument("an event has no valid id"))?;
    let event_type = metadata
        .get("type")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::invalid_argument(format!("event {id} has no type")))?
        .clone();
    let content_type = metadata
        .get("content-type")
        .cloned()
        .unwrap_or_else(|| "application/octet-stream".to_string());
    Ok(NewEvent {
        id,
        event_type,
        content_type,
        custom_metadata,
        data,
    })
}

fn event_bytes(e: &NewEvent) -> usize {
    e.data.len() + e.custom_metadata.len() + e.event_type.len() + e.content_type.len()
}

fn too_large(bytes: usize) -> Status {
    let mut s = Status::invalid_argument(format!(
        "Maximum Append Size of {APPEND_BYTES_MAX} Exceeded (the append holds {bytes} bytes)."
    ));
    trailer(&mut s, "exception", "maximum-append-size-exceeded");
    trailer(&mut s, "maximum-append-size", &APPEND_BYTES_MAX.to_string());
    s
}

pub(crate) fn trailer(status: &mut Status, key: &'static str, value: &str) {
    if let Ok(v) = MetadataValue::try_from(value) {
        status.metadata_mut().insert(key, v);
    }
}

/// The status for a broker refusal, with the trailers KurrentDB's clients read.
pub(crate) fn status(e: &StreamError, stream: &str) -> Status {
    match e {
        StreamError::Deleted(s) => {
            let mut st = Status::failed_precondition(e.to_string());
            trailer(&mut st, "exception", "stream-deleted");
            trailer(&mut st, "stream-name", s);
            st
        }
        StreamError::WrongExpectedVersion {
            stream,
            expected,
            current,
        } => {
            let mut st = Status::failed_precondition(e.to_string());
            trailer(&mut st, "exception", "wrong-expected-version");
            trailer(&mut st, "stream-name", stream);
            trailer(
                &mut st,
                "expected-version",
                &expected.as_number().to_string(),
            );
            if let Some(c) = current {
                trailer(&mut st, "actual-version", &c.to_string());
            }
            st
        }
        StreamError::BadRequest(m) => Status::invalid_argument(m.clone()),
        StreamError::TooLarge { bytes, .. } => too_large(*bytes),
        StreamError::SubscriptionExists { stream, group } => {
            let mut st = Status::already_exists(e.to_string());
            trailer(&mut st, "exception", "persistent-subscription-exists");
            trailer(&mut st, "stream-name", stream);
            trailer(&mut st, "group-name", group);
            st
        }
        StreamError::SubscriptionNotFound { stream, group } => {
            let mut st = Status::not_found(e.to_string());
            trailer(
                &mut st,
                "exception",
                "persistent-subscription-does-not-exist",
            );
            trailer(&mut st, "stream-name", stream);
            trailer(&mut st, "group-name", group);
            st
        }
        StreamError::MaximumSubscribers { stream, group } => {
            let mut st = Status::failed_precondition(e.to_string());
            trailer(&mut st, "exception", "maximum-subscribers-reached");
            trailer(&mut st, "stream-name", stream);
            trailer(&mut st, "group-name", group);
            st
        }
        StreamError::Broker(BrokerError::ShuttingDown) => {
            Status::unavailable("the broker is shutting down")
        }
        StreamError::Broker(b) => {
            tracing::warn!(stream, error = %b, "event store call failed");
            Status::internal(format!("cannot serve stream '{stream}': {b}"))
        }
    }
}

/// The expected revision of Append, Delete and Tombstone options: three generated
/// enums with the same variants (`any` when none is given).
macro_rules! expected_revision {
    ($option:expr, $enum:path) => {{
        use $enum as E;
        match $option {
            Some(E::Revision(r)) => Expected::Revision(r),
            Some(E::NoStream(_)) => Expected::NoStream,
            Some(E::StreamExists(_)) => Expected::StreamExists,
            Some(E::Any(_)) | None => Expected::Any,
        }
    }};
}

fn position(p: u64) -> append_resp::Position {
    append_resp::Position {
        commit_position: p,
        prepare_position: p,
    }
}

fn append_success(a: Appended) -> AppendResp {
    use append_resp::success::{CurrentRevisionOption, PositionOption};
    AppendResp {
        result: Some(append_resp::Result::Success(append_resp::Success {
            current_revision_option: Some(CurrentRevisionOption::CurrentRevision(
                a.current_revision,
            )),
            position_option: Some(PositionOption::Position(position(a.position))),
        })),
    }
}

/// Append's conflict, in the body (status OK), both the current and the 20.6 fields.
fn append_conflict(expected: Expected, current: Option<u64>) -> AppendResp {
    use append_resp::wrong_expected_version::{
        CurrentRevisionOption, CurrentRevisionOption2060, ExpectedRevisionOption,
        ExpectedRevisionOption2060,
    };
    let empty = shared::Empty {};
    AppendResp {
        result: Some(append_resp::Result::WrongExpectedVersion(
            append_resp::WrongExpectedVersion {
                current_revision_option_20_6_0: Some(match current {
                    Some(c) => CurrentRevisionOption2060::CurrentRevision2060(c),
                    None => CurrentRevisionOption2060::NoStream2060(empty),
                }),
                expected_revision_option_20_6_0: Some(match expected {
                    Expected::Revision(r) => ExpectedRevisionOption2060::ExpectedRevision2060(r),
                    Expected::StreamExists => ExpectedRevisionOption2060::StreamExists2060(empty),
                    Expected::Any | Expected::NoStream => {
                        ExpectedRevisionOption2060::Any2060(empty)
                    }
                }),
                current_revision_option: Some(match current {
                    Some(c) => CurrentRevisionOption::CurrentRevision(c),
                    None => CurrentRevisionOption::CurrentNoStream(empty),
                }),
                expected_revision_option: Some(match expected {
                    Expected::Revision(r) => ExpectedRevisionOption::ExpectedRevision(r),
                    Expected::Any => ExpectedRevisionOption::ExpectedAny(empty),
                    Expected::StreamExists => ExpectedRevisionOption::ExpectedStreamExists(empty),
                    Expected::NoStream => ExpectedRevisionOption::ExpectedNoStream(empty),
                }),
            },
        )),
    }
}

/// An `Any` packing `message` under its KurrentDB type name.
fn any<M: Message>(type_name: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: message.encode_to_vec(),
    }
}

/// BatchAppend's refusal, in the body: a `google.rpc.Status` whose details name it.
fn batch_error(e: &StreamError) -> rpc::Status {
    use shared::wrong_expected_version::{
        CurrentStreamRevisionOption, ExpectedStreamPositionOption,
    };
    let (code, details) = match e {
        StreamError::WrongExpectedVersion {
            expected, current, ..
        } => (
            rpc::Code::FailedPrecondition,
            Some(any(
                "event_store.client.WrongExpectedVersion",
                &shared::WrongExpectedVersion {
                    current_stream_revision_option: Some(match current {
                        Some(c) => CurrentStreamRevisionOption::CurrentStreamRevision(*c),
                        None => CurrentStreamRevisionOption::CurrentNoStream(()),
                    }),
                    expected_stream_position_option: Some(match expected {
                        Expected::Revision(r) => {
                            ExpectedStreamPositionOption::ExpectedStreamPosition(*r)
                        }
                        Expected::Any => ExpectedStreamPositionOption::ExpectedAny(()),
                        Expected::StreamExists => {
                            ExpectedStreamPositionOption::ExpectedStreamExists(())
                        }
                        Expected::NoStream => ExpectedStreamPositionOption::ExpectedNoStream(()),
                    }),
                },
            )),
        ),
        StreamError::Deleted(s) => (
            rpc::Code::FailedPrecondition,
            Some(any(
                "event_store.client.StreamDeleted",
                &shared::StreamDeleted {
                    stream_identifier: Some(identifier(s)),
                },
            )),
        ),
        StreamError::TooLarge { .. } => (
            rpc::Code::InvalidArgument,
            Some(any(
                "event_store.client.MaximumAppendSizeExceeded",
                &shared::MaximumAppendSizeExceeded {
                    max_append_size: APPEND_BYTES_MAX as u32,
                },
            )),
        ),
        StreamError::BadRequest(m) => (
            rpc::Code::InvalidArgument,
            Some(any(
                "event_store.client.BadRequest",
                &shared::BadRequest { message: m.clone() },
            )),
        ),
        StreamError::SubscriptionExists { .. }
        | StreamError::SubscriptionNotFound { .. }
        | StreamError::MaximumSubscribers { .. }
        | StreamError::Broker(_) => (
            rpc::Code::Internal,
            Some(any("event_store.client.Unknown", &shared::Unknown {})),
        ),
    };
    rpc::Status {
        code: code as i32,
        message: e.to_string(),
        details,
    }
}

/// .NET ticks (100 ns) since the Unix epoch, as KurrentDB's `created` metadata holds.
fn ticks(ms: i64) -> String {
    (ms.saturating_mul(10_000)).to_string()
}

fn timestamp_now() -> prost_types::Timestamp {
    let ms = herald_broker::now_ms();
    prost_types::Timestamp {
        seconds: ms.div_euclid(1_000),
        nanos: (ms.rem_euclid(1_000) * 1_000_000) as i32,
    }
}

/// The system metadata KurrentDB sends with every event it reads out (Streams and
/// PersistentSubscriptions alike).
pub(crate) fn event_metadata(e: &RecordedEvent) -> HashMap<String, String> {
    HashMap::from([
        ("type".to_string(), e.event_type.clone()),
        ("content-type".to_string(), e.content_type.clone()),
        ("created".to_string(), ticks(e.created_ms)),
    ])
}

fn proto_event(e: &RecordedEvent, structured: bool) -> read_resp::read_event::RecordedEvent {
    let metadata = event_metadata(e);
    read_resp::read_event::RecordedEvent {
        id: Some(crate::uuid::to_proto(e.id, structured)),
        stream_identifier: Some(identifier(&e.stream)),
        stream_revision: e.revision,
        prepare_position: e.position,
        commit_position: e.position,
        metadata,
        custom_metadata: e.custom_metadata.clone(),
        data: e.data.clone(),
    }
}

fn read_event(e: &ReadEvent, structured: bool) -> ReadResp {
    // The position of the event as read: the original's (a link's is its target's).
    let position = e.link.as_ref().map_or(e.event.position, |l| l.position);
    ReadResp {
        content: Some(read_resp::Content::Event(read_resp::ReadEvent {
            event: Some(proto_event(&e.event, structured)),
            link: e.link.as_ref().map(|l| proto_event(l, structured)),
            position: Some(read_resp::read_event::Position::CommitPosition(position)),
        })),
    }
}

/// A `$all` event, taken by value: its strings and bytes move into the message
/// instead of being copied (a catch-up sends hundreds of thousands a second).
fn all_event(e: RecordedEvent, structured: bool) -> ReadResp {
    let position = e.position;
    let metadata = HashMap::from([
        ("created".to_string(), ticks(e.created_ms)),
        ("type".to_string(), e.event_type),
        ("content-type".to_string(), e.content_type),
    ]);
    let event = read_resp::read_event::RecordedEvent {
        id: Some(crate::uuid::to_proto(e.id, structured)),
        stream_identifier: Some(StreamIdentifier {
            stream_name: e.stream.into_bytes().into(),
        }),
        stream_revision: e.revision,
        prepare_position: position,
        commit_position: position,
        metadata,
        custom_metadata: e.custom_metadata,
        data: e.data,
    };
    ReadResp {
        content: Some(read_resp::Content::Event(read_resp::ReadEvent {
            event: Some(event),
            link: None,
            position: Some(read_resp::read_event::Position::CommitPosition(position)),
        })),
    }
}

fn checkpoint(p: u64) -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::Checkpoint(read_resp::Checkpoint {
            commit_position: p,
            prepare_position: p,
            timestamp: Some(timestamp_now()),
        })),
    }
}

fn caught_up(revision: Option<i64>, position: Option<u64>) -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::CaughtUp(read_resp::CaughtUp {
            timestamp: Some(timestamp_now()),
            stream_revision: revision,
            position: position.map(|p| read_resp::Position {
                commit_position: p,
                prepare_position: p,
            }),
        })),
    }
}

/// What a read asked for, checked.
struct ReadPlan {
    who: Principal,
    target: Target,
    forwards: bool,
    resolve_links: bool,
    structured: bool,
    /// None: a subscription.
    count: Option<u64>,
    filter: Option<(AllFilter, u64)>,
}

enum Target {
    Stream { name: String, from: ReadFrom },
    All { position: AllFrom },
}

#[derive(Clone, Copy)]
enum AllFrom {
    Start,
    End,
    Position(u64),
}

fn plan(who: Principal, options: read_req::Options) -> Result<ReadPlan, Status> {
    use read_req::options::{
        CountOption, FilterOption, ReadDirection, StreamOption, all_options::AllOption,
        filter_options, stream_options::RevisionOption, uuid_option,
    };
    let forwards = options.read_direction != ReadDirection::Backwards as i32;
    let structured = matches!(
        options
            .uuid_option
            .as_ref()
            .and_then(|u| u.content.as_ref()),
        Some(uuid_option::Content::Structured(_))
    );
    let count = match options.count_option {
        Some(CountOption::Count(n)) => Some(n),
        Some(CountOption::Subscription(_)) => None,
        None => Some(u64::MAX),
    };
    let target = match options.stream_option {
        Some(StreamOption::Stream(s)) => Target::Stream {
            name: stream_name(s.stream_identifier.as_ref())?,
            from: match s.revision_option {
                Some(RevisionOption::Revision(r)) => ReadFrom::Revision(r),
                Some(RevisionOption::End(_)) => ReadFrom::End,
                Some(RevisionOption::Start(_)) | None => {
                    if forwards || count.is_none() {
                        ReadFrom::Start
                    } else {
                        ReadFrom::End
                    }
                }
            },
        },
        Some(StreamOption::All(a)) => Target::All {
            position: match a.all_option {
                Some(AllOption::Position(p)) => AllFrom::Position(p.commit_position),
                Some(AllOption::End(_)) => AllFrom::End,
                Some(AllOption::Start(_)) | None => AllFrom::Start,
            },
        },
        None => {
            return Err(Status::invalid_argument(
                "read of neither a stream nor $all",
            ));
        }
    };
    let filter = match options.filter_option {
        Some(FilterOption::Filter(f)) => {
            let (on, expression) = match f.filter {
                Some(filter_options::Filter::StreamIdentifier(e)) => (FilterOn::StreamName, e),
                Some(filter_options::Filter::EventType(e)) => (FilterOn::EventType, e),
                None => return Err(Status::invalid_argument("a filter with no expression")),
            };
            if !matches!(target, Target::All { .. }) {
                return Err(Status::invalid_argument("filters apply to $all reads only"));
            }
            let window = match f.window {
                Some(filter_options::Window::Max(m)) => u64::from(m.max(1)),
                _ => 32,
            };
            let every = window.saturating_mul(u64::from(f.checkpoint_interval_multiplier.max(1)));
            let filter = AllFilter::new(on, expression.prefix, &expression.regex)
                .map_err(|e| status(&e, "$all"))?;
            Some((filter, every))
        }
        _ => None,
    };
    Ok(ReadPlan {
        who,
        target,
        forwards,
        resolve_links: options.resolve_links,
        structured,
        count,
        filter,
    })
}

type Tx = mpsc::Sender<Result<ReadResp, Status>>;

/// Run a read or subscription, sending its answers; returns when done or when the
/// client is gone.
async fn serve_read(broker: Arc<Broker>, plan: ReadPlan, tx: Tx) {
    let outcome = match &plan.target {
        Target::Stream { name, from } => serve_stream(&broker, &plan, name, *from, &tx).await,
        Target::All { position } => serve_all(&broker, &plan, *position, &tx).await,
    };
    if let Err(Some(status)) = outcome {
        let _ = tx.send(Err(status)).await;
    }
}

/// Err(None): the client went away; Err(Some): end with this status.
type Served = Result<(), Option<Status>>;

async fn send(tx: &Tx, message: ReadResp) -> Served {
    tx.send(Ok(message)).await.map_err(|_| None)
}

async fn serve_stream(
    broker: &Arc<Broker>,
    plan: &ReadPlan,
    name: &str,
    from: ReadFrom,
    tx: &Tx,
) -> Served {
    let fail = |e: StreamError| Some(status(&e, name));
    let mut progress = broker.stream_index_progress();
    let Some(count) = plan.count else {
        // A catch-up subscription: confirmation first, then history from after the
        // revision given (or the start, or only new events), then live.
        send(
            tx,
            ReadResp {
                content: Some(read_resp::Content::Confirmation(
                    read_resp::SubscriptionConfirmation {
                        subscription_id: uuid::Uuid::new_v4().to_string(),
                    },
                )),
            },
        )
        .await?;
        let mut next = match from {
            ReadFrom::Start => 0,
            ReadFrom::Revision(r) => r.saturating_add(1),
            ReadFrom::End => broker
                .stream_revision(name)
                .await
                .map_err(fail)?
                .0
                .map_or(0, |r| r + 1),
        };
        let mut live = false;
        loop {
            progress.borrow_and_update();
            // The head first: every revision up to it existed when the page was read.
            let head = broker.stream_revision(name).await.map_err(fail)?.0;
            let page = match broker
                .stream_read(
                    &plan.who,
                    name,
                    ReadFrom::Revision(next),
                    true,
                    READ_PAGE,
                    plan.resolve_links,
                )
                .await
            {
                Ok(StreamRead::Events(events)) => events,
                Ok(StreamRead::NotFound) => Vec::new(),
                Err(e) => return Err(fail(e)),
            };
            if page.is_empty()
                && let Some(last) = head
            {
                // Revisions the metadata hides ($maxAge): step over them, never past
                // the head (the next revision may be appended any moment).
                next = next.saturating_add(READ_PAGE).min(last + 1).max(next);
            }
            for e in &page {
                next = next.max(e.link.as_ref().map_or(e.event.revision, |l| l.revision) + 1);
                send(tx, read_event(e, plan.structured)).await?;
            }
            let at_end = head.is_none_or(|last| next > last);
            if at_end {
                if !live {
                    live = true;
                    let revision = next.checked_sub(1).map(|r| r as i64);
                    send(tx, caught_up(revision, None)).await?;
                }
                tokio::select! {
                    changed = progress.changed() => if changed.is_err() { return Ok(()) },
                    _ = tx.closed() => return Err(None),
                }
            }
        }
    };
    let mut left = count;
    let mut cursor = from;
    // The head when the read began: a forwards read steps over pages the metadata hides
    // ($maxAge) up to it.
    let head = broker.stream_revision(name).await.map_err(fail)?.0;
    while left > 0 {
        let page = match broker
            .stream_read(
                &plan.who,
                name,
                cursor,
                plan.forwards,
                left.min(READ_PAGE),
                plan.resolve_links,
            )
            .await
        {
            Ok(StreamRead::NotFound) => {
                return send(
                    tx,
                    ReadResp {
                        content: Some(read_resp::Content::StreamNotFound(
                            read_resp::StreamNotFound {
                                stream_identifier: Some(identifier(name)),
                            },
                        )),
                    },
                )
                .await;
            }
            Ok(StreamRead::Events(events)) => events,
            Err(e) => return Err(fail(e)),
        };
        let Some(last) = page.last() else {
            match (plan.forwards, cursor, head) {
                (true, ReadFrom::Revision(r), Some(h)) if r.saturating_add(READ_PAGE) <= h => {
                    cursor = ReadFrom::Revision(r + READ_PAGE);
                    continue;
                }
                (true, ReadFrom::Start, Some(h)) if READ_PAGE <= h => {
                    cursor = ReadFrom::Revision(READ_PAGE);
                    continue;
                }
                _ => break,
            }
        };
        let last = last
            .link
            .as_ref()
            .map_or(last.event.revision, |l| l.revision);
        for e in &page {
            send(tx, read_event(e, plan.structured)).await?;
        }
        left = left.saturating_sub(page.len() as u64);
        if (page.len() as u64) < left.min(READ_PAGE) && plan.forwards {
            break;
        }
        cursor = if plan.forwards {
            ReadFrom::Revision(last + 1)
        } else if last == 0 {
            break;
        } else {
            ReadFrom::Revision(last - 1)
        };
    }
    Ok(())
}

async fn serve_all(broker: &Arc<Broker>, plan: &ReadPlan, from: AllFrom, tx: &Tx) -> Served {
    let fail = |e: StreamError| Some(status(&e, "$all"));
    let filter = plan.filter.as_ref().map(|(f, _)| f);
    let Some(count) = plan.count else {
        send(
            tx,
            ReadResp {
                content: Some(read_resp::Content::Confirmation(
                    read_resp::SubscriptionConfirmation {
                        subscription_id: uuid::Uuid::new_v4().to_string(),
                    },
                )),
            },
        )
        .await?;
        let mut progress = broker.stream_index_progress();
        // Events after the position given (a subscription's start is exclusive).
        let mut next = match from {
            AllFrom::Start => 0,
            AllFrom::Position(p) => p.saturating_add(1),
            AllFrom::End => {
                (broker.stream_index_settled().await.map_err(fail)? as u64).saturating_add(1)
            }
        };
        let checkpoint_every = plan.filter.as_ref().map(|(_, every)| *every);
        let mut since_checkpoint = 0u64;
        let mut live = false;
        loop {
            progress.borrow_and_update();
            let page = broker
                .read_all(
                    &plan.who,
                    next,
                    true,
                    READ_PAGE as usize,
                    EXAMINE_PER_STEP,
                    filter,
                )
                .await
                .map_err(fail)?;
            let examined = page.next.saturating_sub(next);
            for e in page.events {
                send(tx, all_event(e, plan.structured)).await?;
            }
            next = page.next.max(next);
            if let Some(every) = checkpoint_every {
                since_checkpoint += examined;
                if since_checkpoint >= every || (page.end && examined > 0) {
                    since_checkpoint = 0;
                    send(tx, checkpoint(next.saturating_sub(1))).await?;
                }
            }
            if page.end {
                if !live {
                    live = true;
                    send(tx, caught_up(None, Some(next.saturating_sub(1)))).await?;
                }
                tokio::select! {
                    changed = progress.changed() => if changed.is_err() { return Ok(()) },
                    _ = tx.closed() => return Err(None),
                }
            }
        }
    };
    let mut left = usize::try_from(count).unwrap_or(usize::MAX);
    let mut position = match (from, plan.forwards) {
        (AllFrom::Start, true) => 0,
        (AllFrom::Start, false) => return Ok(()),
        (AllFrom::End, true) => return Ok(()),
        (AllFrom::End, false) => 0,
        (AllFrom::Position(p), _) => p,
    };
    while left > 0 {
        let page = broker
            .read_all(
                &plan.who,
                position,
                plan.forwards,
                left.min(READ_PAGE as usize),
                EXAMINE_PER_STEP,
                filter,
            )
            .await
            .map_err(fail)?;
        left = left.saturating_sub(page.events.len());
        for e in page.events {
            send(tx, all_event(e, plan.structured)).await?;
        }
        if page.end || page.next == position {
            break;
        }
        position = page.next;
        if !plan.forwards && position <= 1 {
            break;
        }
    }
    Ok(())
}

/// One batch append being gathered (a client may split it across requests).
struct Gathering {
    stream: String,
    expected: Expected,
    expected_option: Option<batch_append_resp::ExpectedStreamPosition>,
    events: Vec<NewEvent>,
    bytes: usize,
}

fn expected_from_batch(
    o: Option<&batch_append_req::options::ExpectedStreamPosition>,
) -> (Expected, Option<batch_append_resp::ExpectedStreamPosition>) {
    use batch_append_req::options::ExpectedStreamPosition as E;
    use batch_append_resp::ExpectedStreamPosition as R;
    match o {
        Some(E::StreamPosition(r)) => (Expected::Revision(*r), Some(R::StreamPosition(*r))),
        Some(E::NoStream(())) => (Expected::NoStream, Some(R::NoStream(()))),
        Some(E::StreamExists(())) => (Expected::StreamExists, Some(R::StreamExists(()))),
        Some(E::Any(())) | None => (Expected::Any, Some(R::Any(()))),
    }
}

fn batch_response(
    correlation: Option<shared::Uuid>,
    stream: &str,
    expected: Option<batch_append_resp::ExpectedStreamPosition>,
    outcome: Result<Appended, StreamError>,
) -> BatchAppendResp {
    use batch_append_resp::success::{CurrentRevisionOption, PositionOption};
    BatchAppendResp {
        correlation_id: correlation,
        stream_identifier: Some(identifier(stream)),
        expected_stream_position: expected,
        result: Some(match outcome {
            Ok(a) => batch_append_resp::Result::Success(batch_append_resp::Success {
                current_revision_option: Some(CurrentRevisionOption::CurrentRevision(
                    a.current_revision,
                )),
                position_option: Some(PositionOption::Position(shared::AllStreamPosition {
                    commit_position: a.position,
                    prepare_position: a.position,
                })),
            }),
            Err(e) => batch_append_resp::Result::Error(batch_error(&e)),
        }),
    }
}

fn correlation_key(id: Option<&shared::Uuid>) -> Result<uuid::Uuid, Status> {
    id.and_then(crate::uuid::from_proto)
        .ok_or_else(|| Status::invalid_argument("a batch append without a valid correlation_id"))
}

#[tonic::async_trait]
impl Streams for StreamsService {
    type ReadStream = BoxStream<ReadResp>;
    type BatchAppendStream = BoxStream<BatchAppendResp>;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        let who = crate::caller::principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("a read without options"))?;
        let plan = plan(who, options)?;
        let (tx, rx) = mpsc::channel(READ_QUEUE);
        tokio::spawn(serve_read(self.broker.clone(), plan, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Options first, then the events; the answer once the client half-closes.
    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        let who = crate::caller::principal(&request)?;
        let mut messages = request.into_inner();
        let Some(first) = messages.message().await? else {
            return Err(Status::invalid_argument("an append without options"));
        };
        let Some(append_req::Content::Options(options)) = first.content else {
            return Err(Status::invalid_argument(
                "an append must start with its options",
            ));
        };
        let stream = stream_name(options.stream_identifier.as_ref())?;
        let expected = expected_revision!(
            options.expected_stream_revision,
            append_req::options::ExpectedStreamRevision
        );
        let mut events = Vec::new();
        let mut bytes = 0usize;
        while let Some(message) = messages.message().await? {
            match message.content {
                Some(append_req::Content::ProposedMessage(m)) => {
                    let e = new_event(m.id.as_ref(), &m.metadata, m.custom_metadata, m.data)?;
                    bytes += event_bytes(&e);
                    if bytes > APPEND_BYTES_MAX {
                        return Err(too_large(bytes));
                    }
                    events.push(e);
                }
                _ => return Err(Status::invalid_argument("options sent twice in one append")),
            }
        }
        match self
            .broker
            .stream_append(&who, &stream, expected, events)
            .await
        {
            Ok(a) => Ok(Response::new(append_success(a))),
            Err(StreamError::WrongExpectedVersion {
                expected, current, ..
            }) => Ok(Response::new(append_conflict(expected, current))),
            Err(e) => Err(status(&e, &stream)),
        }
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        let who = crate::caller::principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("a delete without options"))?;
        let expected = expected_revision!(
            options.expected_stream_revision,
            crate::proto::streams::delete_req::options::ExpectedStreamRevision
        );
        let p = self
            .delete_stream(&who, options.stream_identifier.as_ref(), expected, false)
            .await?;
        Ok(Response::new(DeleteResp {
            position_option: Some(delete_resp::PositionOption::Position(
                delete_resp::Position {
                    commit_position: p,
                    prepare_position: p,
                },
            )),
        }))
    }

    async fn tombstone(
        &self,
        request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        let who = crate::caller::principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("a tombstone without options"))?;
        let expected = expected_revision!(
            options.expected_stream_revision,
            crate::proto::streams::tombstone_req::options::ExpectedStreamRevision
        );
        let p = self
            .delete_stream(&who, options.stream_identifier.as_ref(), expected, true)
            .await?;
        Ok(Response::new(TombstoneResp {
            position_option: Some(tombstone_resp::PositionOption::Position(
                tombstone_resp::Position {
                    commit_position: p,
                    prepare_position: p,
                },
            )),
        }))
    }

    /// Batches gathered by correlation id until `is_final`, each answered as soon as
    /// it is appended, on a call that stays open for more.
    async fn batch_append(
        &self,
        request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        let who = crate::caller::principal(&request)?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<BatchAppendResp, Status>>(READ_QUEUE);
        let broker = self.broker.clone();
        tokio::spawn(async move {
            let mut gathering: HashMap<uuid::Uuid, Gathering> = HashMap::new();
            loop {
                let message = match requests.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "batch append call ended");
                        return;
                    }
                };
                let key = match correlation_key(message.correlation_id.as_ref()) {
                    Ok(k) => k,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                };
                if !gathering.contains_key(&key) {
                    let Some(options) = message.options.as_ref() else {
                        let _ = tx
                            .send(Err(Status::invalid_argument(
                                "the first request of a batch append must carry its options",
                            )))
                            .await;
                        return;
                    };
                    if gathering.len() >= BATCHES_IN_FLIGHT_MAX {
                        let _ = tx
                            .send(Err(Status::resource_exhausted(format!(
                                "more than {BATCHES_IN_FLIGHT_MAX} batch appends gathered at once on one call"
                            ))))
                            .await;
                        return;
                    }
                    let stream = match stream_name(options.stream_identifier.as_ref()) {
                        Ok(s) => s,
                        Err(s) => {
                            let _ = tx.send(Err(s)).await;
                            return;
                        }
                    };
                    let (expected, expected_option) =
                        expected_from_batch(options.expected_stream_position.as_ref());
                    gathering.insert(
                        key,
                        Gathering {
                            stream,
                            expected,
                            expected_option,
                            events: Vec::new(),
                            bytes: 0,
                        },
                    );
                }
                let Some(g) = gathering.get_mut(&key) else {
                    continue;
                };
                let mut refused = None;
                for m in message.proposed_messages {
                    match new_event(m.id.as_ref(), &m.metadata, m.custom_metadata, m.data) {
                        Ok(e) => {
                            g.bytes += event_bytes(&e);
                            g.events.push(e);
                        }
                        Err(s) => {
                            refused = Some(StreamError::BadRequest(s.message().to_string()));
                            break;
                        }
                    }
                }
                if refused.is_none() && g.bytes > APPEND_BYTES_MAX {
                    refused = Some(StreamError::TooLarge {
                        bytes: g.bytes,
                        max: APPEND_BYTES_MAX,
                    });
                }
                if refused.is_none() && !message.is_final {
                    continue;
                }
                let Some(g) = gathering.remove(&key) else {
                    continue;
                };
                let correlation = message.correlation_id;
                let broker = broker.clone();
                let who = who.clone();
                let tx = tx.clone();
                // Batches of one call run concurrently: one client sends all its
                // appends on one call.
                tokio::spawn(async move {
                    let outcome = match refused {
                        Some(e) => Err(e),
                        None => {
                            broker
                                .stream_append(&who, &g.stream, g.expected, g.events)
                                .await
                        }
                    };
                    let _ = tx
                        .send(Ok(batch_response(
                            correlation,
                            &g.stream,
                            g.expected_option,
                            outcome,
                        )))
                        .await;
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Delete and Tombstone report a conflict as a status, with the message the Python
/// client parses (`<op> failed due to WrongExpectedVersion. Stream: s, Expected
/// version: n, Actual version: m`) and the trailers the Node client reads.
fn delete_status(e: StreamError, stream: &str, op: &str) -> Status {
    match &e {
        StreamError::WrongExpectedVersion { .. } => {
            let base = status(&e, stream);
            let mut st = Status::failed_precondition(format!("{op} failed due to {e}"));
            *st.metadata_mut() = base.metadata().clone();
            st
        }
        _ => status(&e, stream),
    }
}

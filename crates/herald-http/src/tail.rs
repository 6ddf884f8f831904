//! Live tail of a partition as Server-Sent Events. The stream sleeps on the broker's
//! data-change watch (the one Kafka long-poll fetches wait on), so an idle tail costs
//! nothing; when the watch moves it reads what became visible, in bounded steps.
//! It ends when the server shuts down (so graceful shutdown is not held up by tails),
//! when the client goes away, or after a read error (sent as a last `error` event).
//! A tail on a topic that is then deleted stays open, idle, until one of those.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::stream;
use herald_broker::partition::Partition;
use serde::Deserialize;
use tokio::sync::watch;
use utoipa::IntoParams;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::records::{
    broker_error, check_readable, find_topic, path_rejection, query_rejection, read_records,
};

/// Records one tail step reads before sending them; bounds what a tail buffers.
pub const TAIL_STEP_RECORDS_MAX: usize = 500;
/// A comment line this often keeps proxies from closing an idle tail.
pub const TAIL_KEEP_ALIVE_SECS: u64 = 15;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TailQuery {
    /// First offset to send (default: the high watermark, i.e. only records committed
    /// after the tail starts).
    pub offset: Option<i64>,
}

struct Tail {
    partition: Arc<Partition>,
    next: i64,
    pending: VecDeque<Event>,
    changes: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    read_bytes_max: usize,
    done: bool,
}

impl Tail {
    /// The next event, waiting for new data when there is none.
    async fn next_event(mut self) -> Option<(Result<Event, Infallible>, Tail)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done || *self.shutdown.borrow() {
                return None;
            }
            // Mark the current version seen before reading, so a change that lands
            // during the read wakes the wait below instead of being missed.
            self.changes.borrow_and_update();
            let high_watermark = self.partition.high_watermark();
            if self.next < high_watermark {
                self.step(high_watermark);
                continue;
            }
            tokio::select! {
                changed = self.changes.changed() => if changed.is_err() { return None },
                _ = self.shutdown.wait_for(|stop| *stop) => return None,
            }
        }
    }

    /// Read up to `TAIL_STEP_RECORDS_MAX` records into `pending`; an error becomes an
    /// `error` event and ends the stream.
    fn step(&mut self, high_watermark: i64) {
        if self.next < self.partition.log_start_offset() {
            // Retention removed what we were about to read: continue from what is left,
            // as a Kafka consumer with auto.offset.reset=earliest would.
            self.next = self.partition.log_start_offset();
        }
        match read_records(
            &self.partition,
            self.next,
            high_watermark,
            TAIL_STEP_RECORDS_MAX,
            self.read_bytes_max,
        ) {
            Ok(read) => {
                let next = read.next;
                // In offset order: a batch stepped over (an event `skipped`, see
                // `SkippedBatch`) comes where its records would have.
                let mut skipped = read.skipped.into_iter().peekable();
                for record in read.records {
                    while let Some(s) = skipped.next_if(|s| s.first_offset < record.offset) {
                        if !self.push("skipped", None, &s) {
                            return;
                        }
                    }
                    if !self.push("record", Some(record.offset.to_string()), &record) {
                        return;
                    }
                }
                for s in skipped {
                    if !self.push("skipped", None, &s) {
                        return;
                    }
                }
                if next <= self.next {
                    self.fail("stalled", format!("no progress reading at offset {next}"));
                }
                self.next = next;
            }
            Err(e) => self.fail(e.code, e.message),
        }
    }

    /// Queue one event; false (and the stream ends with an error) if it cannot be encoded.
    fn push(&mut self, kind: &str, id: Option<String>, data: &impl serde::Serialize) -> bool {
        let mut event = Event::default().event(kind);
        if let Some(id) = id {
            event = event.id(id);
        }
        match event.json_data(data) {
            Ok(event) => {
                self.pending.push_back(event);
                true
            }
            Err(e) => {
                self.fail("internal", e.to_string());
                false
            }
        }
    }

    fn fail(&mut self, code: &str, message: String) {
        let body = ErrorBody {
            error: code.to_string(),
            message,
        };
        if let Ok(event) = Event::default().event("error").json_data(&body) {
            self.pending.push_back(event);
        }
        self.done = true;
    }
}

/// Follow a partition: each committed record is an SSE event `record` (id = offset,
/// data = the record as in a read). A stored batch too big to decompress within the
/// broker's bound is an event `skipped` (its offsets and why) where its records would be.
/// A failure is a last event `error` with the error body. A comment is sent every 15 s while idle.
#[utoipa::path(get, path = "/topics/{name}/partitions/{partition}/tail",
    params(
        ("name" = String, Path, description = "Topic name"),
        ("partition" = i32, Path, description = "Partition index"),
        TailQuery
    ),
    responses(
        (status = 200, description = "An event stream of `record` events", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 416, body = ErrorBody)
    ))]
pub async fn tail(
    State(state): State<AppState>,
    path: Result<Path<(String, i32)>, PathRejection>,
    query: Result<Query<TailQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Path((name, partition)) = path.map_err(path_rejection)?;
    let Query(query) = query.map_err(query_rejection)?;
    let topic = find_topic(&state, &name)?;
    let p = topic.partition(partition).map_err(broker_error)?.clone();
    let high_watermark = p.high_watermark();
    let log_start_offset = p.log_start_offset();
    let next = query.offset.unwrap_or(high_watermark);
    check_readable(next, log_start_offset, high_watermark)?;
    let tail = Tail {
        partition: p,
        next,
        pending: VecDeque::new(),
        changes: state.broker.data_changes(),
        shutdown: state.shutdown.subscribe(),
        read_bytes_max: state.limits.read_bytes_max,
        done: false,
    };
    let events = stream::unfold(tail, Tail::next_event);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(TAIL_KEEP_ALIVE_SECS))))
}

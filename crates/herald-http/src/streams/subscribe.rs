//! Catch-up subscriptions as Server-Sent Events: a stream's (or `$all`'s) events from a
//! point on, then live. Each event is an SSE event `event` whose `id:` is its revision
//! (a stream) or position (`$all`), so a client that reconnects with `Last-Event-ID`
//! resumes after the last event it got; one `caught_up` event marks the end of the
//! history.
//!
//! It waits on the broker's index progress (`Broker::stream_index_progress`, the
//! watch the gRPC subscriptions wait on), so an idle subscription costs nothing; when
//! it moves the subscription reads what became visible. Memory is bounded for a slow
//! reader: the next page is read only once the last one has been taken by the
//! connection, which takes it only as fast as the socket drains (and the server's send
//! timeout closes a reader that stops). It ends when the server shuts down, when the
//! client goes away, or after an error (sent as a last `error` event: a tombstoned
//! stream, a read failure).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::stream;
use herald_broker::Broker;
use herald_broker::streams::{AllFilter, ReadFrom, StreamError, StreamRead};
use serde::Deserialize;
use tokio::sync::watch;
use utoipa::IntoParams;

use super::{
    ALL_STREAM, Point, Refusal, event_json, largest_event, page_events, parse_from,
    read_event_json, read_revision, stream_path, who,
};
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::records::{bad_request, query_rejection};

/// Most events one step of a subscription reads and holds before the connection takes
/// them.
pub const SUBSCRIBE_PAGE_EVENTS: u64 = 100;
/// About how many bytes of event data one step reads and holds (at least one event):
/// what a reader that stops reading costs the broker, beyond the socket's buffers.
pub const SUBSCRIBE_PAGE_BYTES: usize = 1 << 20;
/// `$all` events one step of a filtered subscription looks at (so a filter that
/// matches little does not hold the thread scanning the whole log in one go).
const SUBSCRIBE_EXAMINE_PER_STEP: usize = 4_096;
/// A comment line this often keeps proxies from closing an idle subscription.
pub const SUBSCRIBE_KEEP_ALIVE_SECS: u64 = 15;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubscribeQuery {
    /// First revision to send: `start` (default), `end` (only events appended from
    /// now on) or a revision. A `Last-Event-ID` header wins: the events after it.
    pub from: Option<String>,
    /// As for reads (default true).
    pub resolve_links: Option<bool>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubscribeAllQuery {
    /// First position to send: `start` (default), `end` or a position. A
    /// `Last-Event-ID` header wins: the events after it.
    pub position: Option<String>,
    pub stream_prefix: Option<String>,
    pub stream_regex: Option<String>,
    pub type_prefix: Option<String>,
    pub type_regex: Option<String>,
}

enum Target {
    Stream { name: String, resolve_links: bool },
    All { filter: Option<AllFilter> },
}

struct Subscription {
    broker: Arc<Broker>,
    target: Target,
    /// The next revision (a stream) or position (`$all`) to send.
    next: u64,
    pending: VecDeque<Event>,
    progress: watch::Receiver<i64>,
    shutdown: watch::Receiver<bool>,
    caught_up: bool,
    done: bool,
    /// The largest event of the last page read (sizes the next, see `page_events`).
    largest: Option<usize>,
}

/// What one step read.
struct Step {
    /// Nothing more is visible now.
    at_end: bool,
}

impl Subscription {
    /// The next event, waiting for new events when there are none.
    async fn next_event(mut self) -> Option<(Result<Event, Infallible>, Subscription)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done || *self.shutdown.borrow() {
                return None;
            }
            // Mark the progress seen before reading, so an append indexed during the
            // read wakes the wait below instead of being missed.
            self.progress.borrow_and_update();
            let step = match self.step().await {
                Ok(step) => step,
                Err(e) => {
                    self.fail(e);
                    continue;
                }
            };
            if !step.at_end {
                // More to read (a filter that passed nothing yet): let others run.
                tokio::task::yield_now().await;
                continue;
            }
            if !self.caught_up {
                self.caught_up = true;
                let body = match &self.target {
                    Target::Stream { .. } => {
                        serde_json::json!({"revision": self.next.checked_sub(1)})
                    }
                    Target::All { .. } => serde_json::json!({"position": self.next}),
                };
                self.push(Event::default().event("caught_up"), &body);
            }
            if !self.pending.is_empty() {
                continue;
            }
            tokio::select! {
                changed = self.progress.changed() => if changed.is_err() { return None },
                _ = self.shutdown.wait_for(|stop| *stop) => return None,
            }
        }
    }

    /// Read one page into `pending`.
    async fn step(&mut self) -> Result<Step, StreamError> {
        match &self.target {
            Target::Stream {
                name,
                resolve_links,
            } => {
                // The head first: every revision up to it existed when the page was read.
                let (last, _) = self.broker.stream_revision(name).await?;
                let asked = page_events(SUBSCRIBE_PAGE_BYTES, self.largest, SUBSCRIBE_PAGE_EVENTS);
                let page = match self
                    .broker
                    .stream_read(
                        &who(),
                        name,
                        ReadFrom::Revision(self.next),
                        true,
                        asked,
                        *resolve_links,
                    )
                    .await?
                {
                    StreamRead::Events(events) => events,
                    // Not written yet (or soft-deleted): its next events come later.
                    StreamRead::NotFound => return Ok(Step { at_end: true }),
                };
                self.largest = largest_event(page.iter().map(|e| &e.event)).or(self.largest);
                if page.is_empty() {
                    // Revisions the metadata hides ($maxAge, $tb): step over them, never
                    // past the head (a revision after it may be appended any moment).
                    if let Some(last) = last {
                        self.next = self.next.saturating_add(asked).min(last + 1).max(self.next);
                    }
                }
                for e in &page {
                    let revision = read_revision(e);
                    self.next = self.next.max(revision + 1);
                    let event = Event::default().event("event").id(revision.to_string());
                    self.push(event, &read_event_json(e));
                }
                Ok(Step {
                    at_end: last.is_none_or(|l| self.next > l),
                })
            }
            Target::All { filter } => {
                let asked = page_events(SUBSCRIBE_PAGE_BYTES, self.largest, SUBSCRIBE_PAGE_EVENTS);
                let page = self
                    .broker
                    .read_all(
                        &who(),
                        self.next,
                        true,
                        asked as usize,
                        SUBSCRIBE_EXAMINE_PER_STEP,
                        filter.as_ref(),
                    )
                    .await?;
                self.largest = largest_event(page.events.iter()).or(self.largest);
                let mut events = Vec::with_capacity(page.events.len());
                for e in &page.events {
                    events.push((e.position, event_json(e, None)));
                }
                self.next = self.next.max(page.next);
                for (position, e) in events {
                    let event = Event::default().event("event").id(position.to_string());
                    self.push(event, &e);
                }
                Ok(Step { at_end: page.end })
            }
        }
    }

    fn push(&mut self, event: Event, data: &impl serde::Serialize) {
        match event.json_data(data) {
            Ok(event) => self.pending.push_back(event),
            Err(e) => self.fail_with("internal", e.to_string()),
        }
    }

    fn fail(&mut self, e: StreamError) {
        let (code, message) = match super::stream_error(e) {
            Refusal::Api(e) => (e.code.to_string(), e.message),
            Refusal::Conflict(c) => (c.error, c.message),
        };
        self.fail_with(&code, message);
    }

    fn fail_with(&mut self, code: &str, message: String) {
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

/// `Last-Event-ID` as the revision or position to resume after.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            bad_request(
                "invalid_last_event_id",
                "Last-Event-ID must be the id of an event this subscription sent (a number)",
            )
        })
}

fn events(
    state: &AppState,
    target: Target,
    next: u64,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    let subscription = Subscription {
        broker: state.broker.clone(),
        target,
        next,
        pending: VecDeque::new(),
        progress: state.broker.stream_index_progress(),
        shutdown: state.shutdown.subscribe(),
        caught_up: false,
        done: false,
        largest: None,
    };
    Sse::new(stream::unfold(subscription, Subscription::next_event))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(SUBSCRIBE_KEEP_ALIVE_SECS)))
}

/// Follow a stream: its events from `from` on, a `caught_up` event once the history
/// is sent (data `{"revision": <last sent or null>}`), then each new event as it is
/// appended. Each event is an SSE event `event` (id = its revision, data = the event
/// as reads give it). A failure is a last event `error`. A comment every 15 s while
/// idle. `GET /streams/$all/subscribe` follows `$all` instead.
#[utoipa::path(get, path = "/streams/{stream}/subscribe",
    params(("stream" = String, Path, description = "Stream name"), SubscribeQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this revision")),
    responses(
        (status = 200, description = "An event stream of `event` events", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody), (status = 410, body = ErrorBody)
    ))]
pub async fn subscribe(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, Refusal> {
    let stream = stream_path(path)?;
    if stream == ALL_STREAM {
        let Query(query) = Query::try_from_uri(&uri).map_err(query_rejection)?;
        let (target, next) = all_target(&state, query, &headers).await?;
        return Ok(events(&state, target, next));
    }
    let Query(query) = Query::<SubscribeQuery>::try_from_uri(&uri).map_err(query_rejection)?;
    let resume_after = last_event_id(&headers)?;
    let from = parse_from("from", query.from.as_deref())?;
    let broker = &state.broker;
    // A tombstoned stream is refused now, not as an event after a 200.
    let (last, _) = broker
        .stream_revision(&stream)
        .await
        .map_err(super::stream_error)?;
    if let Err(e) = broker
        .stream_read(&who(), &stream, ReadFrom::End, false, 1, false)
        .await
    {
        return Err(super::stream_error(e));
    }
    let next = match (resume_after, from) {
        (Some(id), _) => id.saturating_add(1),
        (None, None | Some(Point::Start)) => 0,
        (None, Some(Point::End)) => last.map_or(0, |l| l + 1),
        (None, Some(Point::At(r))) => r,
    };
    let target = Target::Stream {
        name: stream,
        resolve_links: query.resolve_links.unwrap_or(true),
    };
    Ok(events(&state, target, next))
}

/// Follow `$all` (optionally filtered as `$all` reads are): events from `position` on,
/// a `caught_up` event (data `{"position": <where it goes on from>}`), then live.
/// Event ids are positions.
#[utoipa::path(get, path = "/streams/$all/subscribe",
    params(SubscribeAllQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this position")),
    responses(
        (status = 200, description = "An event stream of `event` events", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody)
    ))]
pub async fn subscribe_all(
    State(state): State<AppState>,
    query: Result<Query<SubscribeAllQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, Refusal> {
    let Query(query) = query.map_err(query_rejection)?;
    let (target, next) = all_target(&state, query, &headers).await?;
    Ok(events(&state, target, next))
}

/// What a `$all` subscription follows, and the position it starts at.
async fn all_target(
    state: &AppState,
    query: SubscribeAllQuery,
    headers: &HeaderMap,
) -> Result<(Target, u64), Refusal> {
    let filter = super::all_filter(
        query.stream_prefix.as_deref(),
        query.stream_regex.as_deref(),
        query.type_prefix.as_deref(),
        query.type_regex.as_deref(),
    )?;
    let end = state
        .broker
        .stream_index_settled()
        .await
        .map_err(super::stream_error)? as u64
        + 1;
    let next = match (
        last_event_id(headers)?,
        parse_from("position", query.position.as_deref())?,
    ) {
        (Some(id), _) => id.saturating_add(1),
        (None, None | Some(Point::Start)) => 0,
        (None, Some(Point::End)) => end,
        (None, Some(Point::At(p))) => p,
    };
    Ok((Target::All { filter }, next))
}

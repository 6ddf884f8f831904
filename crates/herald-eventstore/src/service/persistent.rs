//! `PersistentSubscriptions` (competing consumers): each call translated into the
//! broker's persistent subscriptions (`herald_broker::streams::persistent`), which run
//! on its work-queue engine.

use std::sync::Arc;

use herald_broker::Broker;
use herald_broker::streams::persistent::{
    ALL_SOURCE, CONSUMER_BUFFER_MAX, Delivery, NackAction, PersistentEvent, PersistentInfo,
    PersistentSettings, SourceFilter, StartFrom, Strategy,
};
use herald_broker::streams::{FilterOn, RecordedEvent};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::streams::{event_metadata, identifier, status, stream_name, trailer};
use crate::proto::persistent_subscriptions::{
    CreateReq, CreateResp, DeleteReq, DeleteResp, GetInfoReq, GetInfoResp, ListReq, ListResp,
    ReadReq, ReadResp, ReplayParkedReq, ReplayParkedResp, SubscriptionInfo, UpdateReq, UpdateResp,
    persistent_subscriptions_server::PersistentSubscriptions, read_req, read_resp,
    subscription_info,
};
use crate::proto::shared::{Empty, StreamIdentifier};

/// Messages queued for a consumer's response stream before the sender waits.
const READ_QUEUE: usize = 64;
/// .NET ticks per millisecond (older clients give timeouts in ticks).
const TICKS_PER_MS: i64 = 10_000;

pub struct PersistentSubscriptionsService {
    broker: Arc<Broker>,
}

impl PersistentSubscriptionsService {
    pub fn new(broker: Arc<Broker>) -> Self {
        PersistentSubscriptionsService { broker }
    }
}

/// A stream option of Delete / GetInfo / Read / ReplayParked: a stream or `$all`.
fn source_of(stream: Option<&StreamIdentifier>, all: bool) -> Result<String, Status> {
    if all {
        return Ok(ALL_SOURCE.to_string());
    }
    stream_name(stream)
}

fn group_of(group: &str) -> Result<String, Status> {
    if group.is_empty() {
        return Err(Status::invalid_argument("group_name is missing"));
    }
    Ok(group.to_string())
}

fn positive(name: &str, v: i32) -> Result<u32, Status> {
    u32::try_from(v)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| Status::invalid_argument(format!("{name} must be positive, not {v}")))
}

fn non_negative(name: &str, v: i32) -> Result<u32, Status> {
    u32::try_from(v)
        .map_err(|_| Status::invalid_argument(format!("{name} must not be negative, not {v}")))
}

fn millis(name: &str, ms: Option<i64>) -> Result<Option<u64>, Status> {
    match ms {
        None => Ok(None),
        Some(ms) => u64::try_from(ms)
            .map(Some)
            .map_err(|_| Status::invalid_argument(format!("{name} must not be negative"))),
    }
}

/// The settings both Create and Update carry (two generated types with the same
/// fields), checked.
macro_rules! settings_from {
    ($s:expr, $module:ident, $strategy:expr) => {{
        use crate::proto::persistent_subscriptions::$module::settings::{
            CheckpointAfter, MessageTimeout,
        };
        let s = $s;
        let timeout = match s.message_timeout {
            Some(MessageTimeout::MessageTimeoutMs(ms)) => Some(i64::from(ms)),
            Some(MessageTimeout::MessageTimeoutTicks(t)) => Some(t / TICKS_PER_MS),
            None => None,
        };
        let checkpoint = match s.checkpoint_after {
            Some(CheckpointAfter::CheckpointAfterMs(ms)) => Some(i64::from(ms)),
            Some(CheckpointAfter::CheckpointAfterTicks(t)) => Some(t / TICKS_PER_MS),
            None => None,
        };
        let d = PersistentSettings::default();
        PersistentSettings {
            resolve_links: s.resolve_links,
            extra_statistics: s.extra_statistics,
            max_retry_count: non_negative("max_retry_count", s.max_retry_count)?,
            min_checkpoint_count: non_negative("min_checkpoint_count", s.min_checkpoint_count)?,
            max_checkpoint_count: non_negative("max_checkpoint_count", s.max_checkpoint_count)?,
            max_subscriber_count: non_negative("max_subscriber_count", s.max_subscriber_count)?,
            live_buffer_size: positive("live_buffer_size", s.live_buffer_size)?,
            read_batch_size: positive("read_batch_size", s.read_batch_size)?,
            history_buffer_size: positive("history_buffer_size", s.history_buffer_size)?,
            message_timeout_ms: millis("message_timeout", timeout)?.unwrap_or(d.message_timeout_ms),
            checkpoint_after_ms: millis("checkpoint_after", checkpoint)?
                .unwrap_or(d.checkpoint_after_ms),
            strategy: $strategy,
            start: d.start,
        }
    }};
}

/// The source a Delete / GetInfo / Read / ReplayParked names: the stream option (a
/// generated enum per message, all with `StreamIdentifier` and `All`), or a refusal.
macro_rules! source_option {
    ($option:expr, $enum:ident) => {
        match &$option {
            Some($enum::StreamIdentifier(id)) => source_of(Some(id), false)?,
            Some($enum::All(_)) => ALL_SOURCE.to_string(),
            None => return Err(Status::invalid_argument("stream_option is missing")),
        }
    };
}

/// The deprecated enum (0 DispatchToSingle, 1 RoundRobin, 2 Pinned).
fn strategy_number(n: i32) -> Result<Strategy, Status> {
    match n {
        0 => Ok(Strategy::DispatchToSingle),
        1 => Ok(Strategy::RoundRobin),
        2 => Ok(Strategy::Pinned),
        n => Err(Status::invalid_argument(format!(
            "unknown consumer strategy {n}"
        ))),
    }
}

fn strategy_named(name: &str, number: i32) -> Result<Strategy, Status> {
    if name.is_empty() {
        return strategy_number(number);
    }
    Strategy::parse(name).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown consumer strategy '{name}': use RoundRobin, DispatchToSingle, Pinned or \
             PinnedByCorrelation"
        ))
    })
}

fn filter_of(
    f: crate::proto::persistent_subscriptions::create_req::all_options::FilterOptions,
) -> Result<Option<SourceFilter>, Status> {
    use crate::proto::persistent_subscriptions::create_req::all_options::filter_options::Filter;
    let (on, e) = match f.filter {
        Some(Filter::StreamIdentifier(e)) => (FilterOn::StreamName, e),
        Some(Filter::EventType(e)) => (FilterOn::EventType, e),
        None => return Ok(None),
    };
    // Checked the way a `$all` read checks its filter.
    herald_broker::streams::AllFilter::new(on, e.prefix.clone(), &e.regex)
        .map_err(|err| status(&err, ALL_SOURCE))?;
    Ok(Some(SourceFilter {
        on,
        prefixes: e.prefix,
        regex: e.regex,
    }))
}

fn info(i: &PersistentInfo) -> SubscriptionInfo {
    let s = &i.def.settings;
    let clamp = |v: u64| i32::try_from(v).unwrap_or(i32::MAX);
    let start_from = match s.start {
        StartFrom::Start => {
            if i.def.source == ALL_SOURCE {
                "C:0/P:0".to_string()
            } else {
                "0".to_string()
            }
        }
        StartFrom::End => "-1".to_string(),
        StartFrom::Revision(r) => r.to_string(),
        StartFrom::Position(p) => format!("C:{p}/P:{p}"),
    };
    SubscriptionInfo {
        event_source: i.def.source.clone(),
        group_name: i.def.group.clone(),
        status: "Live".to_string(),
        connections: i
            .connections
            .iter()
            .map(|c| subscription_info::ConnectionInfo {
                from: c.name.clone(),
                username: c.user.clone(),
                average_items_per_second: 0,
                total_items: c.total_items as i64,
                count_since_last_measurement: 0,
                observed_measurements: Vec::new(),
                available_slots: clamp(c.available_slots),
                in_flight_messages: clamp(c.in_flight),
                connection_name: c.name.clone(),
            })
            .collect(),
        average_per_second: 0,
        total_items: i.total_items as i64,
        count_since_last_measurement: 0,
        last_checkpointed_event_position: i.last_checkpointed.clone(),
        last_known_event_position: i.last_known.clone(),
        resolve_link_tos: s.resolve_links,
        start_from,
        message_timeout_milliseconds: clamp(s.message_timeout_ms),
        extra_statistics: s.extra_statistics,
        max_retry_count: clamp(u64::from(s.max_retry_count)),
        live_buffer_size: clamp(u64::from(s.live_buffer_size)),
        buffer_size: clamp(u64::from(s.history_buffer_size)),
        read_batch_size: clamp(u64::from(s.read_batch_size)),
        check_point_after_milliseconds: clamp(s.checkpoint_after_ms),
        min_check_point_count: clamp(u64::from(s.min_checkpoint_count)),
        max_check_point_count: clamp(u64::from(s.max_checkpoint_count)),
        read_buffer_count: 0,
        live_buffer_count: i.outstanding as i64,
        retry_buffer_count: clamp(i.retry_buffer),
        total_in_flight_messages: clamp(i.in_flight),
        outstanding_messages_count: clamp(i.in_flight),
        named_consumer_strategy: s.strategy.name().to_string(),
        max_subscriber_count: clamp(u64::from(s.max_subscriber_count)),
        parked_message_count: i.parked as i64,
    }
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

fn event_message(e: &PersistentEvent, structured: bool) -> ReadResp {
    use read_resp::read_event::{Count, Position};
    let position = e.link.as_ref().map_or(e.event.position, |l| l.position);
    ReadResp {
        content: Some(read_resp::Content::Event(read_resp::ReadEvent {
            event: Some(proto_event(&e.event, structured)),
            link: e.link.as_ref().map(|l| proto_event(l, structured)),
            position: Some(Position::CommitPosition(position)),
            count: Some(Count::RetryCount(
                i32::try_from(e.retry_count).unwrap_or(i32::MAX),
            )),
        })),
    }
}

fn ids(ids: &[crate::proto::shared::Uuid]) -> Vec<uuid::Uuid> {
    ids.iter().filter_map(crate::uuid::from_proto).collect()
}

fn dropped(why: &str) -> Status {
    let mut st = Status::aborted(why.to_string());
    trailer(&mut st, "exception", "persistent-subscription-dropped");
    st
}

#[tonic::async_trait]
impl PersistentSubscriptions for PersistentSubscriptionsService {
    type ReadStream = BoxStream<ReadResp>;

    // Older clients send the deprecated stream identifier, revision and strategy enum.
    #[allow(deprecated)]
    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        use crate::proto::persistent_subscriptions::create_req::{
            all_options::{AllOption, FilterOption},
            options::StreamOption,
            stream_options::RevisionOption,
        };
        let who = crate::caller::principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("options are missing"))?;
        let group = group_of(&options.group_name)?;
        let s = options
            .settings
            .ok_or_else(|| Status::invalid_argument("settings are missing"))?;
        let strategy = strategy_named(&s.consumer_strategy, s.named_consumer_strategy)?;
        let revision = s.revision;
        let mut settings = settings_from!(s, create_req, strategy);
        let (source, filter) = match options.stream_option {
            Some(StreamOption::Stream(o)) => {
                settings.start = match o.revision_option {
                    Some(RevisionOption::Revision(r)) => StartFrom::Revision(r),
                    Some(RevisionOption::Start(_)) => StartFrom::Start,
                    Some(RevisionOption::End(_)) | None => StartFrom::End,
                };
                (stream_name(o.stream_identifier.as_ref())?, None)
            }
            Some(StreamOption::All(o)) => {
                settings.start = match o.all_option {
                    Some(AllOption::Position(p)) => StartFrom::Position(p.commit_position),
                    Some(AllOption::Start(_)) => StartFrom::Start,
                    Some(AllOption::End(_)) | None => StartFrom::End,
                };
                let filter = match o.filter_option {
                    Some(FilterOption::Filter(f)) => filter_of(f)?,
                    Some(FilterOption::NoFilter(_)) | None => None,
                };
                (ALL_SOURCE.to_string(), filter)
            }
            None => {
                // Older clients: the deprecated stream identifier and revision.
                settings.start = if revision == u64::MAX {
                    StartFrom::End
                } else {
                    StartFrom::Revision(revision)
                };
                (stream_name(options.stream_identifier.as_ref())?, None)
            }
        };
        self.broker
            .persistent_create(&who, &source, &group, filter, settings)
            .await
            .map_err(|e| status(&e, &source))?;
        Ok(Response::new(CreateResp {}))
    }

    #[allow(deprecated)]
    async fn update(&self, request: Request<UpdateReq>) -> Result<Response<UpdateResp>, Status> {
        use crate::proto::persistent_subscriptions::update_req::options::StreamOption;
        let who = crate::caller::principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("options are missing"))?;
        let group = group_of(&options.group_name)?;
        let s = options
            .settings
            .ok_or_else(|| Status::invalid_argument("settings are missing"))?;
        let strategy = strategy_number(s.named_consumer_strategy)?;
        let settings = settings_from!(s, update_req, strategy);
        let source = match options.stream_option {
            Some(StreamOption::Stream(o)) => stream_name(o.stream_identifier.as_ref())?,
            Some(StreamOption::All(_)) => ALL_SOURCE.to_string(),
            None => stream_name(options.stream_identifier.as_ref())?,
        };
        // Update carries the deprecated strategy enum only: keep the stored one unless
        // it names another.
        let current = self
            .broker
            .persistent_info(&who, &source, &group)
            .await
            .map_err(|e| status(&e, &source))?;
        let settings = PersistentSettings {
            strategy: if current.def.settings.strategy == Strategy::PinnedByCorrelation
                && strategy == Strategy::DispatchToSingle
            {
                current.def.settings.strategy
            } else {
                strategy
            },
            ..settings
        };
        self.broker
            .persistent_update(&who, &source, &group, settings)
            .await
            .map_err(|e| status(&e, &source))?;
        Ok(Response::new(UpdateResp {}))
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        use crate::proto::persistent_subscriptions::delete_req::options::StreamOption;
        let who = crate::caller::principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("options are missing"))?;
        let group = group_of(&options.group_name)?;
        let source = source_option!(options.stream_option, StreamOption);
        self.broker
            .persistent_delete(&who, &source, &group)
            .await
            .map_err(|e| status(&e, &source))?;
        Ok(Response::new(DeleteResp {}))
    }

    async fn read(
        &self,
        request: Request<Streaming<ReadReq>>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        use read_req::options::{StreamOption, uuid_option};
        let who = crate::caller::principal(&request)?;
        let peer = request
            .extensions()
            .get::<crate::caller::Caller>()
            .map(|c| c.peer.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no options were sent"))?;
        let Some(read_req::Content::Options(options)) = first.content else {
            return Err(Status::invalid_argument(
                "the first message of a persistent subscription read must be its options",
            ));
        };
        let source = source_option!(options.stream_option, StreamOption);
        let group = group_of(&options.group_name)?;
        let structured = matches!(
            options
                .uuid_option
                .as_ref()
                .and_then(|u| u.content.as_ref()),
            Some(uuid_option::Content::Structured(_))
        );
        let buffer = usize::try_from(options.buffer_size)
            .ok()
            .filter(|b| (1..=CONSUMER_BUFFER_MAX).contains(b))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "buffer_size {} must be 1 to {CONSUMER_BUFFER_MAX}",
                    options.buffer_size
                ))
            })?;
        let consumer = Arc::new(
            self.broker
                .persistent_connect(&who, &source, &group, buffer, &peer)
                .map_err(|e| status(&e, &source))?,
        );
        let (tx, rx) = mpsc::channel(READ_QUEUE);
        let confirmation = ReadResp {
            content: Some(read_resp::Content::SubscriptionConfirmation(
                read_resp::SubscriptionConfirmation {
                    subscription_id: consumer.subscription_id().to_string(),
                },
            )),
        };
        let _ = tx.send(Ok(confirmation)).await;
        // Events out and acks in run apart, so a client that is slow to read cannot
        // hold up its own acks (each direction is bounded: the consumer's buffer out,
        // HTTP/2 flow control in).
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        // Set when the client closed its side: the subscription ends for it.
        let (gone_tx, mut gone_rx) = tokio::sync::watch::channel(false);
        let acks = consumer.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => return,
                    m = inbound.message() => match m {
                        Ok(Some(req)) => handle(&acks, req).await,
                        // The client closed its side or the call broke.
                        Ok(None) | Err(_) => {
                            let _ = gone_tx.send(true);
                            return;
                        }
                    },
                }
            }
        });
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = gone_rx.changed() => break,
                    d = consumer.next() => match d {
                        Delivery::Event(e) => {
                            if tx.send(Ok(event_message(&e, structured))).await.is_err() {
                                break;
                            }
                        }
                        Delivery::End(why) => {
                            let _ = tx.send(Err(dropped(&why))).await;
                            break;
                        }
                    },
                }
            }
            let _ = stop_tx.send(true);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_info(
        &self,
        request: Request<GetInfoReq>,
    ) -> Result<Response<GetInfoResp>, Status> {
        use crate::proto::persistent_subscriptions::get_info_req::options::StreamOption;
        let who = crate::caller::principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("options are missing"))?;
        let group = group_of(&options.group_name)?;
        let source = source_option!(options.stream_option, StreamOption);
        let i = self
            .broker
            .persistent_info(&who, &source, &group)
            .await
            .map_err(|e| status(&e, &source))?;
        Ok(Response::new(GetInfoResp {
            subscription_info: Some(info(&i)),
        }))
    }

    async fn replay_parked(
        &self,
        request: Request<ReplayParkedReq>,
    ) -> Result<Response<ReplayParkedResp>, Status> {
        use crate::proto::persistent_subscriptions::replay_parked_req::options::{
            StopAtOption, StreamOption,
        };
        let who = crate::caller::principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("options are missing"))?;
        let group = group_of(&options.group_name)?;
        let source = source_option!(options.stream_option, StreamOption);
        let stop_at = match options.stop_at_option {
            Some(StopAtOption::StopAt(n)) => Some(
                u64::try_from(n)
                    .map_err(|_| Status::invalid_argument("stop_at must not be negative"))?,
            ),
            Some(StopAtOption::NoLimit(_)) | None => None,
        };
        self.broker
            .persistent_replay_parked(&who, &source, &group, stop_at)
            .await
            .map_err(|e| status(&e, &source))?;
        Ok(Response::new(ReplayParkedResp {}))
    }

    async fn list(&self, request: Request<ListReq>) -> Result<Response<ListResp>, Status> {
        use crate::proto::persistent_subscriptions::list_req::{
            options::ListOption, stream_option::StreamOption,
        };
        let who = crate::caller::principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("options are missing"))?;
        let source = match options.list_option {
            Some(ListOption::ListAllSubscriptions(_)) | None => None,
            Some(ListOption::ListForStream(s)) => Some(match s.stream_option {
                Some(StreamOption::Stream(id)) => source_of(Some(&id), false)?,
                Some(StreamOption::All(_)) | None => ALL_SOURCE.to_string(),
            }),
        };
        let infos = self
            .broker
            .persistent_list(&who, source.as_deref())
            .await
            .map_err(|e| status(&e, source.as_deref().unwrap_or(ALL_SOURCE)))?;
        if infos.is_empty() && source.is_some() {
            // KurrentDB answers a list for a stream without subscriptions so.
            return Err(Status::not_found(format!(
                "Subscription group for stream '{}' does not exist.",
                source.unwrap_or_default()
            )));
        }
        Ok(Response::new(ListResp {
            subscriptions: infos.iter().map(info).collect(),
        }))
    }

    async fn restart_subsystem(&self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
        // Nothing to restart: subscriptions live in the broker. Answered as done.
        crate::caller::principal(&request)?;
        Ok(Response::new(Empty {}))
    }
}

/// An ack or nack from a consumer.
async fn handle(consumer: &herald_broker::streams::persistent::PersistentConsumer, req: ReadReq) {
    use read_req::nack::Action;
    match req.content {
        Some(read_req::Content::Ack(a)) => consumer.ack(&ids(&a.ids)).await,
        Some(read_req::Content::Nack(n)) => {
            let action = match Action::try_from(n.action).unwrap_or(Action::Unknown) {
                Action::Park => NackAction::Park,
                Action::Skip => NackAction::Skip,
                Action::Stop => NackAction::Stop,
                Action::Retry | Action::Unknown => NackAction::Retry,
            };
            consumer.nack(&ids(&n.ids), action, &n.reason).await;
        }
        // Options again: nothing to do.
        Some(read_req::Content::Options(_)) | None => {}
    }
}

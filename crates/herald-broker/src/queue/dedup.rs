//! Dedup on publish by message id (header `herald-message-id`, or a front end's field):
//! a publish whose id was seen on the topic within the window is not appended again and
//! gets the first publish's partition and offset back. Ids live in the meta store, so
//! the window holds across restarts.

use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};
use crate::{Broker, now_ms};

/// The header front ends read a message id from.
pub const MESSAGE_ID_HEADER: &str = "herald-message-id";
/// The dedup window when the caller gives none: 5 minutes, as SQS FIFO queues.
pub const DEDUP_WINDOW_MS_DEFAULT: u64 = 5 * 60 * 1000;
/// The longest dedup window a caller may ask for: 7 days.
pub const DEDUP_WINDOW_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
/// Longest message id, in bytes.
pub const MESSAGE_ID_BYTES_MAX: usize = 256;

/// Where a publish landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishOutcome {
    pub partition: i32,
    pub offset: i64,
    /// True if the id was seen within the window: nothing was appended and
    /// `partition`/`offset` are the first publish's.
    pub duplicate: bool,
}

impl Broker {
    /// Append `batch` (record batches as a producer sends them) to `partition` unless
    /// `message_id` was published on `topic` within `window_ms` (default
    /// [`DEDUP_WINDOW_MS_DEFAULT`]). Answers once the append and the id are durable.
    /// Dedup publishes are serialised broker-wide so two racing copies of one id cannot
    /// both be appended.
    pub async fn publish_dedup(
        &self,
        topic: &str,
        partition: i32,
        batch: &[u8],
        message_id: &str,
        window_ms: Option<u64>,
    ) -> Result<PublishOutcome> {
        if message_id.is_empty() || message_id.len() > MESSAGE_ID_BYTES_MAX {
            return Err(BrokerError::InvalidRequest(format!(
                "message id must be 1 to {MESSAGE_ID_BYTES_MAX} bytes"
            )));
        }
        let window_ms = window_ms.unwrap_or(DEDUP_WINDOW_MS_DEFAULT);
        if window_ms > DEDUP_WINDOW_MS_MAX {
            return Err(BrokerError::InvalidRequest(format!(
                "dedup window must be at most {DEDUP_WINDOW_MS_MAX} ms"
            )));
        }
        let t = self
            .topic(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
        let _serial = self.queues.dedup.lock().await;
        let now = now_ms();
        if let Some((p, offset, at)) = self.meta.dedup_lookup(topic, message_id)?
            && now.saturating_sub(at) < window_ms as i64
        {
            return Ok(PublishOutcome {
                partition: p,
                offset,
                duplicate: true,
            });
        }
        let appended = t.append(partition, batch, now)?.durable().await?;
        self.meta.dedup_insert(
            topic,
            message_id,
            (partition, appended.base_offset, now),
            now.saturating_sub(DEDUP_WINDOW_MS_MAX as i64),
        )?;
        Ok(PublishOutcome {
            partition,
            offset: appended.base_offset,
            duplicate: false,
        })
    }
}

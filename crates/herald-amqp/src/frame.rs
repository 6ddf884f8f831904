//! AMQP 0-9-1 framing, Herald's own: a frame is `type:u8 channel:u16 size:u32 payload
//! 0xCE`. The size is checked against the negotiated `frame_max` before a byte of the
//! payload is buffered, and payloads are handed on as `Bytes` slices of the read buffer
//! (no per-frame copy). Method and content-header payloads are decoded and encoded by
//! the `amq-protocol` crate; body frames never go through it.

use amq_protocol::frame::{AMQPFrame, gen_frame};
use amq_protocol::protocol::{AMQPClass, basic::AMQPProperties, basic::gen_properties};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Type, channel and size.
pub const FRAME_HEADER_BYTES: usize = 7;
/// Header plus the end octet: what a frame costs besides its payload.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_BYTES + 1;
/// The smallest frame_max the protocol allows a peer to ask for.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// The protocol header a client opens with, and what a server answers a wrong one with.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
/// The class id of content headers (basic).
pub const BASIC_CLASS: u16 = 60;

/// One frame as read: its payload is a slice of the connection's read buffer.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Bytes,
}

/// Why a byte stream is not a valid frame sequence; each maps to the connection
/// exception the spec names (501 FRAME_ERROR).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {size} bytes is larger than the negotiated frame_max {max}")]
    TooLarge { size: usize, max: usize },
    #[error("frame does not end with 0xCE (got 0x{0:02X})")]
    BadEnd(u8),
    #[error("unknown frame type {0}")]
    BadType(u8),
}

/// What reading a frame gave.
#[derive(Debug)]
pub enum Read {
    Frame(RawFrame),
    /// The peer closed the stream between frames.
    Eof,
    /// The peer closed the stream inside a frame.
    Truncated,
    Invalid(FrameError),
}

/// Reads frames from a stream into one buffer that never holds more than one frame
/// beyond what the socket delivered in one read.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Bytes already read but not yet framed (the pipelined rest of a client's send).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Read until `n` bytes are buffered; false on end of stream first.
    async fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        while self.buf.len() < n {
            self.buf.reserve(n - self.buf.len());
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The 8-byte protocol header a connection starts with.
    pub async fn protocol_header(&mut self) -> std::io::Result<Option<[u8; 8]>> {
        if !self.fill(PROTOCOL_HEADER.len()).await? {
            return Ok(None);
        }
        let mut header = [0u8; 8];
        self.buf.copy_to_slice(&mut header);
        Ok(Some(header))
    }

    /// The next frame. `frame_max` bounds the whole frame (header and end octet
    /// included, as the spec counts it) and is checked before the payload is read.
    pub async fn next(&mut self, frame_max: usize) -> std::io::Result<Read> {
        if !self.fill(FRAME_HEADER_BYTES).await? {
            return Ok(if self.buf.is_empty() {
                Read::Eof
            } else {
                Read::Truncated
            });
        }
        let kind = self.buf[0];
        let channel = u16::from_be_bytes([self.buf[1], self.buf[2]]);
        let size =
            u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]) as usize;
        if !matches!(
            kind,
            FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
        ) {
            return Ok(Read::Invalid(FrameError::BadType(kind)));
        }
        let total = size.saturating_add(FRAME_OVERHEAD);
        if total > frame_max {
            return Ok(Read::Invalid(FrameError::TooLarge {
                size: total,
                max: frame_max,
            }));
        }
        if !self.fill(total).await? {
            return Ok(Read::Truncated);
        }
        let mut frame = self.buf.split_to(total);
        let end = frame[total - 1];
        if end != FRAME_END {
            return Ok(Read::Invalid(FrameError::BadEnd(end)));
        }
        frame.advance(FRAME_HEADER_BYTES);
        frame.truncate(size);
        Ok(Read::Frame(RawFrame {
            kind,
            channel,
            payload: frame.freeze(),
        }))
    }
}

/// Decode a method frame's payload.
pub fn decode_method(payload: &[u8]) -> Result<AMQPClass, String> {
    match amq_protocol::protocol::parse_class(payload) {
        Ok((_, class)) => Ok(class),
        Err(error) => Err(format!("cannot decode method: {error}")),
    }
}

/// A content header as received: the body size, the decoded properties, and the
/// properties' raw bytes (kept as sent: re-encoding a field table re-sorts its keys and
/// may change value types).
#[derive(Debug, Clone)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    pub properties: AMQPProperties,
    pub raw_properties: Bytes,
}

/// Class id, weight and body size precede the properties.
const CONTENT_HEADER_PREFIX: usize = 12;

pub fn decode_content_header(payload: &Bytes) -> Result<ContentHeader, String> {
    let (_, header) = amq_protocol::frame::parsing::parse_content_header(&payload[..])
        .map_err(|error| format!("cannot decode content header: {error}"))?;
    Ok(ContentHeader {
        class_id: header.class_id,
        body_size: header.body_size,
        properties: header.properties,
        raw_properties: payload.slice(CONTENT_HEADER_PREFIX.min(payload.len())..),
    })
}

/// Encode a method frame.
pub fn method(channel: u16, class: AMQPClass) -> Bytes {
    let frame = AMQPFrame::Method(channel, class);
    match cookie_factory::r#gen(gen_frame(&frame), Vec::with_capacity(64)) {
        Ok((out, _)) => Bytes::from(out),
        Err(error) => {
            // Callers truncate what could not be represented, so this is a bug.
            tracing::error!(?error, "cannot encode an AMQP method");
            Bytes::new()
        }
    }
}

/// Encode properties into their wire form (flags and values).
pub fn encode_properties(properties: &AMQPProperties) -> Bytes {
    let out = Vec::with_capacity(64);
    match cookie_factory::r#gen(gen_properties(properties), out) {
        Ok((out, _)) => Bytes::from(out),
        Err(error) => {
            tracing::error!(?error, "cannot encode AMQP properties");
            // No property flags: an empty property list.
            Bytes::from_static(&[0, 0])
        }
    }
}

/// Append a content header frame (with raw property bytes) and the body frames, each
/// at most `frame_max` long, to `out`.
pub fn content(
    out: &mut BytesMut,
    channel: u16,
    raw_properties: &[u8],
    body: &Bytes,
    frame_max: usize,
) {
    let header_size = CONTENT_HEADER_PREFIX + raw_properties.len();
    out.reserve(FRAME_OVERHEAD + header_size);
    out.put_u8(FRAME_HEADER);
    out.put_u16(channel);
    out.put_u32(header_size as u32);
    out.put_u16(BASIC_CLASS);
    out.put_u16(0);
    out.put_u64(body.len() as u64);
    out.put_slice(raw_properties);
    out.put_u8(FRAME_END);
    let chunk = frame_max.saturating_sub(FRAME_OVERHEAD).max(1);
    for piece in body.chunks(chunk) {
        out.reserve(FRAME_OVERHEAD + piece.len());
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(piece.len() as u32);
        out.put_slice(piece);
        out.put_u8(FRAME_END);
    }
}

/// A heartbeat frame.
pub const HEARTBEAT: [u8; 8] = [FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END];

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::channel;

    fn frame_bytes(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(end);
        out
    }

    #[tokio::test]
    async fn a_method_frame_round_trips_and_frames_are_split_at_their_boundaries() {
        let open = method(
            7,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
        let mut bytes = open.to_vec();
        bytes.extend_from_slice(&HEARTBEAT);
        let mut reader = FrameReader::new(&bytes[..]);
        let Read::Frame(raw) = reader.next(4096).await.unwrap() else {
            panic!("no frame");
        };
        assert_eq!((raw.kind, raw.channel), (FRAME_METHOD, 7));
        assert!(matches!(
            decode_method(&raw.payload),
            Ok(AMQPClass::Channel(channel::AMQPMethod::Open(_)))
        ));
        let Read::Frame(raw) = reader.next(4096).await.unwrap() else {
            panic!("no heartbeat");
        };
        assert_eq!(raw.kind, FRAME_HEARTBEAT);
        assert!(matches!(reader.next(4096).await.unwrap(), Read::Eof));
    }

    #[tokio::test]
    async fn a_frame_larger_than_frame_max_is_refused_before_its_payload_is_read() {
        // The header claims 1 GiB; nothing of it follows. Reading must not wait for
        // (or buffer) the payload.
        let mut bytes = vec![FRAME_BODY, 0, 1];
        bytes.extend_from_slice(&(1u32 << 30).to_be_bytes());
        let mut reader = FrameReader::new(&bytes[..]);
        match reader.next(4096).await.unwrap() {
            Read::Invalid(FrameError::TooLarge { size, max }) => {
                assert_eq!(max, 4096);
                assert_eq!(size, (1usize << 30) + FRAME_OVERHEAD);
            }
            other => panic!("{other:?}"),
        }
        assert!(reader.buffered() <= FRAME_HEADER_BYTES);
        // Exactly frame_max is allowed.
        let payload = vec![0u8; 4096 - FRAME_OVERHEAD];
        let bytes = frame_bytes(FRAME_BODY, 1, &payload, FRAME_END);
        let mut reader = FrameReader::new(&bytes[..]);
        assert!(matches!(reader.next(4096).await.unwrap(), Read::Frame(_)));
    }

    #[tokio::test]
    async fn bad_end_octets_types_and_truncation_are_told_apart() {
        let bytes = frame_bytes(FRAME_BODY, 1, b"abc", 0x00);
        let mut reader = FrameReader::new(&bytes[..]);
        assert!(matches!(
            reader.next(4096).await.unwrap(),
            Read::Invalid(FrameError::BadEnd(0))
        ));
        let bytes = frame_bytes(9, 1, b"abc", FRAME_END);
        let mut reader = FrameReader::new(&bytes[..]);
        assert!(matches!(
            reader.next(4096).await.unwrap(),
            Read::Invalid(FrameError::BadType(9))
        ));
        let bytes = frame_bytes(FRAME_BODY, 1, b"abcdef", FRAME_END);
        let mut reader = FrameReader::new(&bytes[..bytes.len() - 3]);
        assert!(matches!(reader.next(4096).await.unwrap(), Read::Truncated));
        let mut reader = FrameReader::new(&b"\x01\x00"[..]);
        assert!(matches!(reader.next(4096).await.unwrap(), Read::Truncated));
    }

    #[test]
    fn content_is_cut_into_body_frames_of_at_most_frame_max() {
        let body = Bytes::from(vec![7u8; 10_000]);
        let mut out = BytesMut::new();
        content(&mut out, 3, &[0, 0], &body, 4096);
        let mut rest = &out[..];
        let mut bodies = 0;
        let mut total = 0;
        while !rest.is_empty() {
            let size = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
            assert!(size + FRAME_OVERHEAD <= 4096);
            assert_eq!(rest[FRAME_HEADER_BYTES + size], FRAME_END);
            if rest[0] == FRAME_BODY {
                bodies += 1;
                total += size;
            }
            rest = &rest[FRAME_OVERHEAD + size..];
        }
        assert_eq!((bodies, total), (3, 10_000));
    }
}

//! Wrong-protocol clients on the HTTP port, told apart by a connection's first bytes
//! (the mirror image of the Kafka listener's check for HTTP, AMQP and TLS).
//!
//! At most `SNIFF_BYTES_MAX` bytes are read before the connection is handed to hyper,
//! and only while they could still be the start of a TLS ClientHello, an AMQP protocol
//! header or a Kafka request: a byte that no longer fits ends the look, so an HTTP
//! request (whose method starts with a letter) is handed on after its first byte. The
//! bytes read are kept in `Prefixed` and read again by hyper first, so nothing is lost.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The most bytes looked at: a Kafka request's length, api key and api version.
pub const SNIFF_BYTES_MAX: usize = 8;

/// A Kafka request is at least its header's api key, api version and correlation id.
const KAFKA_REQUEST_BYTES_MIN: u32 = 8;
/// Longer Kafka requests are not plausible (Kafka's and Herald's default cap is
/// 100 MiB), so a first byte of 0x40 or more is not a Kafka length.
const KAFKA_REQUEST_BYTES_PLAUSIBLE: u32 = 1 << 30;

/// What a connection's first bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The bytes so far could still start another protocol: read more.
    Undecided,
    /// HTTP, or bytes no protocol here knows: hyper answers (400 for garbage).
    Http,
    /// A TLS handshake record (type 22, version 3.x): a ClientHello.
    Tls,
    /// The AMQP protocol header.
    Amqp,
    /// A 4-byte request length that fits a request, then an api key and version.
    Kafka { api_key: i16, api_version: i16 },
}

pub fn classify(prefix: &[u8]) -> Verdict {
    let Some(&first) = prefix.first() else {
        return Verdict::Undecided;
    };
    if first == 0x16 {
        // TLS record header: content type 22 (handshake), protocol version 3.0 to 3.4.
        return match prefix {
            [_] | [_, 0x03] => Verdict::Undecided,
            [_, 0x03, minor, ..] if *minor <= 0x04 => Verdict::Tls,
            _ => Verdict::Http,
        };
    }
    if prefix.starts_with(b"AMQP") {
        return Verdict::Amqp;
    }
    if b"AMQP".starts_with(prefix) {
        return Verdict::Undecided;
    }
    if first.is_ascii_alphabetic() {
        // An HTTP method (or a word that is not one: hyper answers 400).
        return Verdict::Http;
    }
    kafka(prefix)
}

/// A Kafka request header so far: the length's first byte bounds it, the whole length
/// must fit a header, and api key and version are below 256 (their high bytes are 0).
fn kafka(prefix: &[u8]) -> Verdict {
    let plausible_byte = |i: usize, byte: u8| match i {
        0 => u32::from(byte) < KAFKA_REQUEST_BYTES_PLAUSIBLE >> 24,
        4 | 6 => byte == 0,
        _ => true,
    };
    if !prefix
        .iter()
        .take(SNIFF_BYTES_MAX)
        .enumerate()
        .all(|(i, &b)| plausible_byte(i, b))
    {
        return Verdict::Http;
    }
    if let Some(length) = prefix.get(0..4) {
        let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]);
        if length < KAFKA_REQUEST_BYTES_MIN {
            return Verdict::Http;
        }
    }
    match prefix.get(4..8) {
        Some(&[k0, k1, v0, v1]) => Verdict::Kafka {
            api_key: i16::from_be_bytes([k0, k1]),
            api_version: i16::from_be_bytes([v0, v1]),
        },
        _ => Verdict::Undecided,
    }
}

/// The first bytes of a connection, read while deciding what it speaks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prefix {
    bytes: [u8; SNIFF_BYTES_MAX],
    len: u8,
}

impl Prefix {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// How the first bytes ended.
#[derive(Debug)]
pub enum Sniffed {
    /// Decided; `verdict` is never `Undecided`.
    Decided { verdict: Verdict, prefix: Prefix },
    /// The client closed the connection (or it failed) before a decision.
    Closed,
}

/// Read until the first bytes decide what the connection speaks (at most
/// `SNIFF_BYTES_MAX`; an HTTP client is decided by its first read). Waits for as long
/// as the client takes: the caller bounds it with the header timeout.
pub async fn read_prefix<S: AsyncRead + Unpin>(stream: &mut S) -> Sniffed {
    let mut prefix = Prefix::default();
    loop {
        let filled = usize::from(prefix.len);
        match stream.read(&mut prefix.bytes[filled..]).await {
            Ok(0) | Err(_) => return Sniffed::Closed,
            Ok(n) => prefix.len += u8::try_from(n).unwrap_or(u8::MAX),
        }
        let verdict = match classify(prefix.as_slice()) {
            // Cannot happen at SNIFF_BYTES_MAX bytes; hyper decides then.
            Verdict::Undecided if usize::from(prefix.len) >= SNIFF_BYTES_MAX => Verdict::Http,
            Verdict::Undecided => continue,
            decided => decided,
        };
        return Sniffed::Decided { verdict, prefix };
    }
}

/// A stream whose reads return `prefix` first (bytes already taken from `inner`).
pub struct Prefixed<S> {
    prefix: Prefix,
    /// How much of `prefix` has been read again.
    consumed: u8,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S, prefix: Prefix) -> Prefixed<S> {
        Prefixed {
            prefix,
            consumed: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rest = &this.prefix.as_slice()[usize::from(this.consumed)..];
        if rest.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.consumed += u8::try_from(n).unwrap_or(u8::MAX);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The log line for a client of another protocol (None: hand it to hyper).
pub fn wrong_protocol(verdict: Verdict, kafka_address: Option<&str>) -> Option<String> {
    Some(match verdict {
        Verdict::Undecided | Verdict::Http => return None,
        Verdict::Tls => {
            "a TLS ClientHello on the HTTP port: TLS is not enabled on this HTTP listener \
             (use http://); closed"
                .to_string()
        }
        Verdict::Amqp => {
            "an AMQP client connected to the HTTP port; AMQP is not served on this port \
             (work queues are served by this HTTP API); closed"
                .to_string()
        }
        Verdict::Kafka { .. } => match kafka_address {
            Some(kafka) => format!(
                "a Kafka client connected to the HTTP port; Kafka is served at {kafka}; answered 400 and closed"
            ),
            None => "a Kafka client connected to the HTTP port; Kafka is served on the \
                     broker's Kafka listener, not here; answered 400 and closed"
                .to_string(),
        },
    })
}

/// What a Kafka client on the HTTP port is sent before the close: an HTTP 400, whose
/// first four bytes a Kafka client reads as an absurd frame length, and which Herald's
/// CLI recognises ("that port speaks HTTP, not Kafka"); a person with a capture tool
/// reads where to go.
pub fn kafka_answer(kafka_address: Option<&str>) -> String {
    let text = match kafka_address {
        Some(kafka) => format!("This is Herald's HTTP port; Kafka is served at {kafka}.\n"),
        None => "This is Herald's HTTP port; Kafka is served on its Kafka listener.\n".to_string(),
    };
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{text}",
        text.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Every prefix of `bytes` short of `decided_at` is undecided; from there on, `want`.
    fn decides(bytes: &[u8], decided_at: usize, want: Verdict) {
        for n in 0..decided_at {
            assert_eq!(
                classify(&bytes[..n]),
                Verdict::Undecided,
                "{:?}",
                &bytes[..n]
            );
        }
        for n in decided_at..=bytes.len().min(SNIFF_BYTES_MAX) {
            assert_eq!(classify(&bytes[..n]), want, "{:?}", &bytes[..n]);
        }
    }

    #[test]
    fn first_bytes_tell_protocols_apart_as_early_as_they_can() {
        for method in [
            &b"GET / HTTP/1.1"[..],
            b"POST /topics",
            b"PUT /x",
            b"DELETE /x",
            b"HEAD /",
            b"OPTIONS *",
            b"PRI * HTTP/2.0",
            b"get /",
        ] {
            decides(method, 1, Verdict::Http);
        }
        // "A" could begin AMQP; a method that starts with A is decided at its second
        // letter that differs.
        decides(b"ACL /", 2, Verdict::Http);
        decides(b"AMQP\x00\x00\x09\x01", 4, Verdict::Amqp);
        decides(b"AMQX", 4, Verdict::Http);
        decides(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], 3, Verdict::Tls);
        decides(&[0x16, 0x03, 0x04, 0x00], 3, Verdict::Tls);
        decides(&[0x16, 0x03, 0x05], 3, Verdict::Http);
        decides(&[0x16, 0x04], 2, Verdict::Http);
        // ApiVersions v3: length 20, api key 18, version 3.
        let api_versions = [0, 0, 0, 20, 0, 18, 0, 3, 0, 0, 0, 1];
        decides(
            &api_versions,
            8,
            Verdict::Kafka {
                api_key: 18,
                api_version: 3,
            },
        );
        // Lengths and header fields no Kafka client sends go to hyper (a 400).
        decides(&[0x7f, 0, 0, 0], 1, Verdict::Http);
        decides(&[0, 0, 0, 4, 0, 18, 0, 3], 4, Verdict::Http);
        decides(&[0, 0, 0, 20, 1, 18, 0, 3], 5, Verdict::Http);
        decides(&[0, 0, 0, 20, 0, 18, 9, 3], 7, Verdict::Http);
        decides(b"\r\nGET / HTTP/1.1", 5, Verdict::Http);
        decides(b"{\"json\": 1}", 1, Verdict::Http);
    }

    #[test]
    fn wrong_protocols_are_named_with_where_to_go() {
        let kafka = Verdict::Kafka {
            api_key: 18,
            api_version: 3,
        };
        let line = wrong_protocol(kafka, Some("127.0.0.1:9092")).unwrap();
        assert!(
            line.contains("Kafka client connected to the HTTP port")
                && line.contains("127.0.0.1:9092"),
            "{line}"
        );
        let line = wrong_protocol(kafka, None).unwrap();
        assert!(line.contains("Kafka listener"), "{line}");
        let line = wrong_protocol(Verdict::Tls, Some("127.0.0.1:9092")).unwrap();
        assert!(
            line.contains("TLS is not enabled on this HTTP listener"),
            "{line}"
        );
        let line = wrong_protocol(Verdict::Amqp, None).unwrap();
        assert!(line.contains("AMQP is not served on this port"), "{line}");
        assert_eq!(wrong_protocol(Verdict::Http, Some("x")), None);
    }

    #[tokio::test]
    async fn the_bytes_looked_at_are_read_again_first() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let request = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n";
        // One byte at a time: decided by the first, so only that one is held back.
        let writer = tokio::spawn(async move {
            for byte in request {
                client.write_all(&[*byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let Sniffed::Decided { verdict, prefix } = read_prefix(&mut server).await else {
            panic!("closed");
        };
        assert_eq!(verdict, Verdict::Http);
        assert!(!prefix.as_slice().is_empty() && prefix.as_slice().len() <= SNIFF_BYTES_MAX);
        let _client = writer.await.unwrap();
        let mut stream = Prefixed::new(server, prefix);
        let mut got = vec![0u8; request.len()];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], &request[..]);

        // A reader with less room than the prefix gets it in pieces.
        let (mut client, mut server) = tokio::io::duplex(64);
        client
            .write_all(&[0, 0, 0, 20, 0, 18, 0, 3, 9])
            .await
            .unwrap();
        let Sniffed::Decided { verdict, prefix } = read_prefix(&mut server).await else {
            panic!("closed");
        };
        assert!(matches!(verdict, Verdict::Kafka { api_key: 18, .. }));
        assert_eq!(prefix.as_slice(), &[0, 0, 0, 20, 0, 18, 0, 3]);
        let mut stream = Prefixed::new(server, prefix);
        let mut three = [0u8; 3];
        let mut all = Vec::new();
        while all.len() < 9 {
            let n = stream.read(&mut three).await.unwrap();
            all.extend_from_slice(&three[..n]);
        }
        assert_eq!(all, [0, 0, 0, 20, 0, 18, 0, 3, 9]);

        // A client that goes away before a decision.
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert!(matches!(read_prefix(&mut server).await, Sniffed::Closed));
    }
}

//! Framing over one socket: a 4-byte big-endian length, then the request. Requests are
//! read and handled in order; each produces an `Outgoing` that the writer task sends in
//! that same order. A produce request appends before the next request is read (so an
//! idempotent producer's batches keep their order) but waits for its fsync in the
//! writer's queue, so a pipelining producer's requests share fsyncs.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use herald_broker::Broker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::KafkaConfig;
use crate::dispatch::{self, Context, REQUEST_HEADER_BYTES_MIN};
use crate::metrics::KafkaMetrics;

const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// A response in the making, in request order.
pub enum Outgoing {
    Ready(Bytes),
    /// Resolves to the response, or to None when none is sent (acks=0).
    Later(Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>),
    /// Close the connection after everything before it is written.
    Close,
}

pub struct Connection {
    socket: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: Arc<KafkaConfig>,
    metrics: KafkaMetrics,
}

/// A response on its way to the writer, with what its latency is measured from.
struct Timed {
    outgoing: Outgoing,
    api_key: i16,
    arrived: Instant,
}

impl Connection {
    pub fn new(
        socket: TcpStream,
        peer: SocketAddr,
        broker: Arc<Broker>,
        config: Arc<KafkaConfig>,
        metrics: KafkaMetrics,
    ) -> Connection {
        Connection {
            socket,
            peer,
            broker,
            config,
            metrics,
        }
    }

    pub async fn run(self) {
        let peer = self.peer;
        let (mut reader, writer) = self.socket.into_split();
        let (tx, rx) = mpsc::channel::<Timed>(self.config.in_flight_requests_max.max(1));
        let writer_task = tokio::spawn(write_responses(writer, rx, peer, self.metrics));
        let context = Context {
            broker: self.broker,
            config: self.config.clone(),
            peer,
        };
        loop {
            let mut length = [0u8; 4];
            if let Err(e) = reader.read_exact(&mut length).await {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::debug!(%peer, error = %e, "read failed");
                }
                break;
            }
            let length = i32::from_be_bytes(length);
            let Ok(length) = usize::try_from(length) else {
                tracing::warn!(%peer, length, "closing connection: negative request length");
                break;
            };
            if length < REQUEST_HEADER_BYTES_MIN || length > self.config.request_bytes_max {
                tracing::warn!(%peer, length, max = self.config.request_bytes_max, "closing connection: request length out of bounds");
                break;
            }
            let frame = match read_frame(&mut reader, length).await {
                Ok(frame) => frame,
                Err(e) => {
                    tracing::warn!(%peer, length, error = %e, "closing connection: truncated request");
                    break;
                }
            };
            let arrived = Instant::now();
            // The frame holds at least a request header (checked above): api key first.
            let api_key = match frame.get(0..2) {
                Some(&[hi, lo]) => i16::from_be_bytes([hi, lo]),
                _ => -1,
            };
            let outgoing = dispatch::handle_frame(&context, frame.freeze()).await;
            let close = matches!(outgoing, Outgoing::Close);
            let timed = Timed {
                outgoing,
                api_key,
                arrived,
            };
            if tx.send(timed).await.is_err() || close {
                break;
            }
        }
        drop(tx);
        let _ = writer_task.await;
    }
}

async fn write_responses<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::Receiver<Timed>,
    peer: SocketAddr,
    metrics: KafkaMetrics,
) {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    while let Some(Timed {
        outgoing,
        api_key,
        arrived,
    }) = rx.recv().await
    {
        let bytes = match outgoing {
            Outgoing::Ready(bytes) => Some(bytes),
            Outgoing::Later(mut future) => match poll_once(future.as_mut()) {
                Some(ready) => ready,
                None => {
                    // Not ready (a produce waiting for its fsync): send what is already
                    // written first, or those responses would wait for this fsync too.
                    if let Err(e) = writer.flush().await {
                        tracing::debug!(%peer, error = %e, "flush failed");
                        return;
                    }
                    future.await
                }
            },
            Outgoing::Close => break,
        };
        metrics.observe(api_key, arrived);
        if let Some(bytes) = bytes
            && let Err(e) = writer.write_all(&bytes).await
        {
            tracing::debug!(%peer, error = %e, "write failed");
            return;
        }
        // Batch small responses into one write; flush when nothing else is queued.
        if rx.is_empty()
            && let Err(e) = writer.flush().await
        {
            tracing::debug!(%peer, error = %e, "flush failed");
            return;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

/// Read exactly `length` bytes into a new buffer (not zeroed first: the socket fills it).
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    length: usize,
) -> std::io::Result<BytesMut> {
    let mut frame = BytesMut::with_capacity(length);
    while frame.len() < length {
        let wanted = (length - frame.len()) as u64;
        if reader.take(wanted).read_buf(&mut frame).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(frame)
}

/// Poll a future once without registering interest; `None` if it is not ready yet.
/// Awaiting it afterwards polls it again with the task's real waker.
fn poll_once<T>(future: Pin<&mut (dyn Future<Output = T> + Send)>) -> Option<T> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut cx) {
        std::task::Poll::Ready(value) => Some(value),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response that is ready must reach the client even while the next one waits
    /// (for an fsync, say): otherwise pipelined acks stall behind each other.
    #[tokio::test]
    async fn ready_responses_are_sent_before_waiting_on_a_later_one() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = mpsc::channel(8);
        let timed = |outgoing| Timed {
            outgoing,
            api_key: 0,
            arrived: Instant::now(),
        };
        tx.send(timed(Outgoing::Ready(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        tx.send(timed(Outgoing::Later(Box::pin(std::future::pending()))))
            .await
            .unwrap();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let writer = tokio::spawn(write_responses(server, rx, peer, KafkaMetrics::default()));
        let mut client = client;
        let mut got = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got))
            .await
            .expect("the ready response was held back behind the pending one")
            .unwrap();
        assert_eq!(&got, b"first");
        writer.abort();
    }

    #[tokio::test]
    async fn frames_arrive_whole_across_partial_reads_and_truncation_is_an_error() {
        let (mut client, mut server) = tokio::io::duplex(4);
        let sender = tokio::spawn(async move {
            client.write_all(b"0123456789abc").await.unwrap();
        });
        assert_eq!(
            &read_frame(&mut server, 10).await.unwrap()[..],
            b"0123456789"
        );
        sender.await.unwrap();
        let err = read_frame(&mut server, 10).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}

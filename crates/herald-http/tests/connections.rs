//! The HTTP listener on a real socket against slow and hostile clients: connection limits,
//! header, body and keep-alive timeouts, graceful shutdown, and clients of other
//! protocols (TLS, AMQP, Kafka) on the HTTP port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_broker::{Broker, BrokerConfig};
use herald_http::{HttpConfig, HttpServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the server did not shut down")
            .unwrap()
    }
}

/// A server on an ephemeral port over a fresh broker; `tune` sets the limits under test.
async fn start(tune: impl FnOnce(&mut HttpConfig)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig::new(dir.path().to_path_buf())).unwrap();
    let mut config = HttpConfig::new("127.0.0.1:0".parse().unwrap());
    tune(&mut config);
    let server = HttpServer::bind(&config, broker, Vec::new()).await.unwrap();
    server.set_ready();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: herald\r\n\r\n")
}

/// One response (Content-Length framed): its status and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("no response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(bytes[..head_end].to_vec()).unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    while bytes.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed inside a response body");
        bytes.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8(bytes[head_end..head_end + length].to_vec()).unwrap();
    (status, body)
}

async fn request(stream: &mut TcpStream, path: &str) -> (u16, String) {
    stream.write_all(get(path).as_bytes()).await.unwrap();
    read_response(stream).await
}

/// How long until the server closes `stream` (EOF or reset), if it does within `within`.
/// Anything the server sends first is an error.
async fn closed_after(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(within, stream.read(&mut chunk)).await {
        Err(_) => None,
        Ok(Ok(0)) | Ok(Err(_)) => Some(start.elapsed()),
        Ok(Ok(n)) => panic!(
            "expected a close, got {:?}",
            String::from_utf8_lossy(&chunk[..n])
        ),
    }
}

/// The value of an unlabelled metric line in `/metrics`.
async fn metric(addr: SocketAddr, name: &str) -> i64 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (status, text) = request(&mut stream, "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[tokio::test]
async fn half_a_request_head_is_closed_after_the_header_timeout() {
    let server = start(|c| {
        c.header_read_timeout_ms = 300;
        c.keep_alive_idle_ms = 60_000;
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: herald\r\nx-slow: ")
        .await
        .unwrap();
    let closed = closed_after(&mut stream, Duration::from_secs(5))
        .await
        .expect("a half-sent head kept the connection open");
    assert!(
        closed >= Duration::from_millis(250) && closed < Duration::from_secs(3),
        "{closed:?}"
    );
    assert_eq!(
        metric(
            server.addr,
            "herald_http_connections_closed_header_timeout_total"
        )
        .await,
        1
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_body_that_does_not_arrive_gets_408_and_a_close() {
    let server = start(|c| c.body_read_timeout_ms = 300).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let start = Instant::now();
    stream
        .write_all(
            b"POST /topics HTTP/1.1\r\nhost: herald\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"name\": ",
        )
        .await
        .unwrap();
    let (status, body) = read_response(&mut stream).await;
    let took = start.elapsed();
    assert_eq!(status, 408, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "body_read_timeout", "{body}");
    assert!(
        json["message"].as_str().unwrap().contains("300 ms"),
        "{body}"
    );
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(
        closed_after(&mut stream, Duration::from_secs(2))
            .await
            .is_some(),
        "the connection with a half-read body stayed open"
    );
    assert_eq!(
        metric(server.addr, "herald_http_requests_body_timeout_total").await,
        1
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_keep_alive_idle_ms() {
    let server = start(|c| {
        c.header_read_timeout_ms = 10_000;
        c.keep_alive_idle_ms = 300;
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(request(&mut stream, "/health").await.0, 200);
    let closed = closed_after(&mut stream, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection stayed open");
    assert!(
        closed >= Duration::from_millis(250) && closed < Duration::from_secs(3),
        "{closed:?}"
    );
    assert_eq!(
        metric(server.addr, "herald_http_connections_closed_idle_total").await,
        1
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn keep_alive_outlasts_the_header_timeout_while_idle() {
    // hyper's own header timer also runs between keep-alive requests; ours does not.
    let server = start(|c| {
        c.header_read_timeout_ms = 200;
        c.keep_alive_idle_ms = 5_000;
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(request(&mut stream, "/health").await.0, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(request(&mut stream, "/health").await.0, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_connection_past_connections_max_is_refused_and_the_others_are_served() {
    let server = start(|c| c.connections_max = 3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        assert_eq!(request(&mut stream, "/health").await.0, 200);
        open.push(stream);
    }
    let mut fourth = TcpStream::connect(server.addr).await.unwrap();
    let _ = fourth.write_all(get("/health").as_bytes()).await;
    assert!(
        closed_after(&mut fourth, Duration::from_secs(2))
            .await
            .is_some(),
        "the fourth connection was served"
    );
    for stream in &mut open[..2] {
        assert_eq!(request(stream, "/health").await.0, 200);
    }
    let (status, text) = request(&mut open[2], "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.lines()
            .any(|l| l == "herald_http_connections_refused_total 1"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "herald_http_connections_open 3"),
        "{text}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_address_is_held_to_connections_max_per_ip() {
    let server = start(|c| {
        c.connections_max = 100;
        c.connections_max_per_ip = 2;
    })
    .await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let _second = TcpStream::connect(server.addr).await.unwrap();
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_after(&mut third, Duration::from_secs(2))
            .await
            .is_some(),
        "a third connection from one address was kept"
    );
    assert_eq!(request(&mut first, "/health").await.0, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn fifty_slowloris_connections_neither_block_others_nor_stay_open() {
    let server = start(|c| c.header_read_timeout_ms = 1_500).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: herald\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // They trickle a header byte at a time: the head's timeout is for all of it, not
    // for each byte.
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            for stream in &mut slow {
                if stream.write_all(b"x").await.is_err() {
                    continue;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slow
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(request(&mut stream, "/health").await.0, 200);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    drop(stream);

    let mut slow = trickle.await.unwrap();
    for stream in &mut slow {
        assert!(
            closed_after(stream, Duration::from_secs(3)).await.is_some(),
            "a slowloris connection outlived the header timeout"
        );
    }
    assert_eq!(
        metric(
            server.addr,
            "herald_http_connections_closed_header_timeout_total"
        )
        .await,
        50
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_finishes_requests_in_progress_and_closes_idle_connections() {
    let server = start(|c| c.keep_alive_idle_ms = 60_000).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(request(&mut idle, "/health").await.0, 200);
    // A request whose body is still coming when the shutdown begins.
    let mut busy = TcpStream::connect(server.addr).await.unwrap();
    let body = br#"{"name": "orders"}"#;
    busy.write_all(
        format!(
            "POST /topics HTTP/1.1\r\nhost: herald\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    busy.write_all(&body[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    busy.write_all(&body[5..]).await.unwrap();
    let (status, text) = read_response(&mut busy).await;
    assert!(status == 201 || status == 200, "{status} {text}");
    assert!(
        closed_after(&mut idle, Duration::from_secs(2))
            .await
            .is_some()
    );
    stopping.await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

/// A client that pipelines requests and never reads its responses: once the socket is
/// full, the response write makes no progress and the connection is closed after
/// `send_timeout_ms` (its responses dropped), while other clients are served.
#[tokio::test]
async fn a_client_that_never_reads_is_closed_after_the_send_timeout() {
    let server = start(|c| c.send_timeout_ms = 300).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut hog = socket.connect(server.addr).await.unwrap();
    // Each OpenAPI document is tens of KB: a few hundred fill any socket buffers.
    let pipelined = get("/openapi.json").repeat(400);
    let _ = tokio::time::timeout(Duration::from_secs(2), hog.write_all(pipelined.as_bytes())).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let closed = metric(
            server.addr,
            "herald_http_connections_closed_send_timeout_total",
        )
        .await;
        if closed == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the connection that does not read was not closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut other = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(request(&mut other, "/health").await.0, 200);
    drop(hog);
    server.shutdown().await.unwrap();
}

/// Log lines (level, message, fields) of INFO and above written while the guard lives,
/// by tasks on this thread (`#[tokio::test]` runs the server's tasks on its own thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        (logs.clone(), tracing::subscriber::set_default(logs))
    }

    /// The one line that mentions `needle` (there must be exactly one).
    fn line(&self, needle: &str) -> String {
        let lines = self.0.lock().unwrap();
        let found: Vec<&String> = lines.iter().filter(|l| l.contains(needle)).collect();
        assert_eq!(found.len(), 1, "{needle:?} in:\n{}", lines.join("\n"));
        found[0].clone()
    }
}

/// One event as text: `WARN message peer=... api_key=...`.
struct Line<'a>(&'a mut String);

impl tracing::field::Visit for Line<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = match field.name() {
            "message" => write!(self.0, " {value:?}"),
            name => write!(self.0, " {name}={value:?}"),
        };
    }
}

impl tracing::Subscriber for Logs {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::INFO
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = event.metadata().level().to_string();
        event.record(&mut Line(&mut line));
        self.0.lock().unwrap().push(line);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// The start of a TLS 1.2/1.3 ClientHello as clients send it: a handshake record
/// (type 22, version 3.1), then the ClientHello (type 1) and its version 3.3.
fn tls_client_hello() -> Vec<u8> {
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
    ];
    hello.extend_from_slice(&[0xab; 32]); // client random
    hello.extend_from_slice(&[0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    hello
}

/// An ApiVersions v3 request, the first thing every modern Kafka client sends.
fn kafka_api_versions() -> Vec<u8> {
    let mut body = vec![0x00, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01]; // key 18, v3, id 1
    body.extend_from_slice(&[0x00, 0x07]);
    body.extend_from_slice(b"rdkafka");
    body.push(0x00); // header tagged fields
    body.push(0x0d);
    body.extend_from_slice(b"librdkafka-c");
    body.push(0x04);
    body.extend_from_slice(b"2.6");
    body.push(0x00);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Send `greeting` and expect the server to close the connection soon, without a byte
/// of answer (hyper, had it seen these bytes, would have answered 400).
async fn closed_without_an_answer(addr: SocketAddr, greeting: &[u8]) -> SocketAddr {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream.write_all(greeting).await.unwrap();
    let closed = closed_after(&mut stream, Duration::from_secs(3))
        .await
        .expect("the connection stayed open");
    assert!(closed < Duration::from_secs(2), "{closed:?}");
    local
}

#[tokio::test]
async fn a_tls_client_hello_is_closed_without_an_http_answer_and_logged() {
    let (logs, _guard) = Logs::capture();
    let server = start(|c| c.header_read_timeout_ms = 10_000).await;
    let client = closed_without_an_answer(server.addr, &tls_client_hello()).await;
    let line = logs.line("TLS ClientHello on the HTTP port");
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("TLS is not enabled on this HTTP listener"),
        "{line}"
    );
    assert!(line.contains(&client.to_string()), "{line}");
    // Not a header timeout, and the listener still serves HTTP.
    assert_eq!(
        metric(
            server.addr,
            "herald_http_connections_closed_header_timeout_total"
        )
        .await,
        0
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_kafka_client_is_answered_400_and_the_log_names_the_kafka_listener() {
    let (logs, _guard) = Logs::capture();
    let server = start(|c| c.kafka_address = Some("127.0.0.1:9092".to_string())).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let client = stream.local_addr().unwrap();
    stream.write_all(&kafka_api_versions()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_to_string(&mut answer))
        .await
        .expect("the connection stayed open")
        .unwrap();
    // A Kafka client reads "HTTP" as a frame length; Herald's CLI recognises it.
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.ends_with("Kafka is served at 127.0.0.1:9092.\n"),
        "{answer}"
    );
    let line = logs.line("Kafka client connected to the HTTP port");
    assert!(line.contains("Kafka is served at 127.0.0.1:9092"), "{line}");
    assert!(line.contains(&client.to_string()), "{line}");
    assert!(line.contains("api_key=18"), "{line}");
    server.shutdown().await.unwrap();

    // A server that was not told where Kafka is says so in general terms.
    let (logs, _guard) = Logs::capture();
    let server = start(|_| {}).await;
    let mut frame = kafka_api_versions();
    // One byte at a time: the decision waits for the length, api key and version.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for byte in frame.drain(..8) {
        stream.write_all(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut answer))
        .await
        .expect("the connection stayed open")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let line = logs.line("Kafka client connected to the HTTP port");
    assert!(line.contains("the broker's Kafka listener"), "{line}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_amqp_client_is_closed_and_logged() {
    let (logs, _guard) = Logs::capture();
    let server = start(|_| {}).await;
    closed_without_an_answer(server.addr, b"AMQP\x00\x00\x09\x01").await;
    let line = logs.line("AMQP client connected to the HTTP port");
    assert!(line.contains("AMQP is not served on this port"), "{line}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_that_arrives_a_byte_at_a_time_is_served() {
    let server = start(|c| c.header_read_timeout_ms = 10_000).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for byte in get("/health").bytes() {
        stream.write_all(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 200, "{body}");
    // The same connection keeps serving; a method that begins like "AMQP" is still HTTP.
    let (status, _) = request(&mut stream, "/health").await;
    assert_eq!(status, 200);
    stream
        .write_all(b"AMQ /health HTTP/1.1\r\nhost: herald\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = read_response(&mut stream).await;
    assert_eq!(status, 405, "an unknown method is HTTP's to answer");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn binary_bytes_of_no_known_protocol_still_get_hyper_s_400() {
    let server = start(|_| {}).await;
    for garbage in [
        &b"\x00\x00\x00\x04garbage\r\n\r\n"[..],
        b"\x7f\x45\x4c\x46garbage\r\n\r\n",
        b"\x16\x09garbage\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let (status, _) = read_response(&mut stream).await;
        assert_eq!(status, 400, "{garbage:?}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_sends_nothing_or_too_little_to_tell_is_closed_after_the_header_timeout() {
    let server = start(|c| {
        c.header_read_timeout_ms = 300;
        c.keep_alive_idle_ms = 60_000;
    })
    .await;
    let start = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Three bytes that may begin a Kafka length, and then nothing.
    let mut undecided = TcpStream::connect(server.addr).await.unwrap();
    undecided.write_all(&[0x00, 0x00, 0x00]).await.unwrap();
    for stream in [&mut silent, &mut undecided] {
        closed_after(stream, Duration::from_secs(5))
            .await
            .expect("a connection that sent too little stayed open");
        let closed = start.elapsed();
        assert!(
            closed >= Duration::from_millis(250) && closed < Duration::from_secs(3),
            "{closed:?}"
        );
    }
    assert_eq!(
        metric(
            server.addr,
            "herald_http_connections_closed_header_timeout_total"
        )
        .await,
        2
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_a_connection_that_has_sent_nothing() {
    let server = start(|c| c.header_read_timeout_ms = 60_000).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Accepted (a request on another connection is served after it).
    let mut other = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(request(&mut other, "/health").await.0, 200);
    drop(other);
    let start = Instant::now();
    server.shutdown().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(
        closed_after(&mut silent, Duration::from_secs(2))
            .await
            .is_some()
    );
}

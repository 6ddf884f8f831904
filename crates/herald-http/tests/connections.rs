//! The HTTP listener on a real socket against slow and hostile clients: connection limits,
//! header, body and keep-alive timeouts, and graceful shutdown.

use std::net::SocketAddr;
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

//! lapin (a Rust RabbitMQ client) against a real in-process broker: connect,
//! confirm-publish, consume with prefetch and manual acks, topic and headers routing,
//! nack with requeue, basic.get on an empty queue.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald_amqp::{AmqpConfig, AmqpServer};
use herald_broker::{Broker, BrokerConfig};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

/// Any single wait in these tests; the whole file runs in a few seconds.
const STEP: Duration = Duration::from_secs(10);

struct Running {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    _broker: Arc<Broker>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig::new(dir.path().to_path_buf())).unwrap();
    let server = AmqpServer::bind(
        AmqpConfig::new("127.0.0.1:0".parse().unwrap()),
        broker.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let task = tokio::spawn(server.run());
    Running {
        addr,
        task,
        _broker: broker,
        _dir: dir,
    }
}

async fn connect(running: &Running) -> Connection {
    let uri = format!("amqp://guest:guest@{}/%2F", running.addr);
    tokio::time::timeout(
        STEP,
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
    .expect("connect timed out")
    .expect("connect")
}

async fn confirmed_channel(connection: &Connection) -> Channel {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

async fn declare(channel: &Channel, queue: &str) {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(declared.name().as_str(), queue);
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert((*key).into(), value.clone());
    }
    table
}

/// Publish on a confirm channel and wait for the broker's answer, which must be an ack.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap();
    let confirmation = tokio::time::timeout(STEP, confirm)
        .await
        .expect("confirm timed out")
        .unwrap();
    assert_eq!(confirmation, Confirmation::Ack(None), "{routing_key}");
}

/// Everything `basic.get` gives from `queue` (acking each) until it answers get-empty.
async fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let got = tokio::time::timeout(
            STEP,
            channel.basic_get(queue.into(), BasicGetOptions::default()),
        )
        .await
        .expect("basic.get timed out")
        .unwrap();
        let Some(message) = got else {
            return bodies;
        };
        assert!(!message.delivery.redelivered);
        bodies.push(String::from_utf8(message.delivery.data.clone()).unwrap());
        assert!(message.ack(BasicAckOptions::default()).await.unwrap());
        assert!(bodies.len() <= 100, "{queue} does not empty: {bodies:?}");
    }
}

/// Delivery `i` of the ordered test, exactly as it was published.
fn check_order(delivery: &lapin::message::Delivery, i: u32) {
    assert_eq!(
        String::from_utf8(delivery.data.clone()).unwrap(),
        format!("{{\"order\":{i}}}"),
        "out of order or duplicated"
    );
    assert!(!delivery.redelivered, "delivery {i} redelivered");
    assert_eq!(delivery.exchange.as_str(), "");
    assert_eq!(delivery.routing_key.as_str(), "lapin-orders");
    assert_eq!(delivery.properties, properties_of(i), "properties of {i}");
}

fn properties_of(i: u32) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(format!("m-{i}").into())
        .with_headers(table(&[
            ("seq", AMQPValue::LongLongInt(i64::from(i))),
            ("small", AMQPValue::LongInt(-7)),
            ("source", long_string("lapin")),
        ]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_publish_and_consume_with_prefetch_and_acks() {
    const COUNT: u32 = 1_000;
    const PREFETCH: u16 = 50;
    let running = start().await;
    let connection = connect(&running).await;
    let publisher = confirmed_channel(&connection).await;
    declare(&publisher, "lapin-orders").await;

    // Every publish first, then every confirm: lapin resolves them as acks arrive.
    let mut confirms = Vec::with_capacity(COUNT as usize);
    for i in 0..COUNT {
        let body = format!("{{\"order\":{i}}}");
        let confirm = publisher
            .basic_publish(
                "".into(),
                "lapin-orders".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties_of(i),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for (i, confirm) in confirms.into_iter().enumerate() {
        let confirmation = tokio::time::timeout(STEP, confirm)
            .await
            .unwrap_or_else(|_| panic!("confirm {i} timed out"))
            .unwrap();
        assert_eq!(confirmation, Confirmation::Ack(None), "confirm {i}");
    }

    let consumer_channel = connection.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            "lapin-orders".into(),
            "lapin-worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let mut held = Vec::new();
    let mut next_expected = 0u32;

    // The prefetch window: 50 arrive unacked, then nothing more until an ack.
    for _ in 0..PREFETCH {
        let delivery = tokio::time::timeout(STEP, consumer.next())
            .await
            .expect("delivery within the prefetch window timed out")
            .expect("consumer ended")
            .unwrap();
        check_order(&delivery, next_expected);
        next_expected += 1;
        held.push(delivery);
    }
    let more = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(
        more.is_err(),
        "a delivery beyond prefetch {PREFETCH} arrived: {more:?}"
    );
    for delivery in held.drain(..) {
        assert!(delivery.ack(BasicAckOptions::default()).await.unwrap());
    }

    while next_expected < COUNT {
        let delivery = tokio::time::timeout(STEP, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("delivery {next_expected} timed out"))
            .expect("consumer ended")
            .unwrap();
        check_order(&delivery, next_expected);
        next_expected += 1;
        assert!(delivery.ack(BasicAckOptions::default()).await.unwrap());
    }

    // Exactly once: nothing after the thousandth, and nothing left once acked.
    let extra = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(extra.is_err(), "a delivery after the last: {extra:?}");
    consumer_channel
        .basic_cancel("lapin-worker".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    consumer_channel.close(200, "done".into()).await.unwrap();

    let checker = connection.create_channel().await.unwrap();
    let left = checker
        .basic_get("lapin-orders".into(), BasicGetOptions::default())
        .await
        .unwrap();
    assert!(
        left.is_none(),
        "acknowledged message came back: {:?}",
        left.map(|m| String::from_utf8_lossy(&m.delivery.data).into_owned())
    );
    connection.close(200, "bye".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topic_and_headers_exchanges_route() {
    let running = start().await;
    let connection = connect(&running).await;
    let channel = confirmed_channel(&connection).await;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };

    // Topic: `*` is exactly one word, `#` zero or more.
    channel
        .exchange_declare(
            "lapin.topic".into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    for (queue, pattern) in [
        ("t-star", "stock.*.nyse"),
        ("t-hash", "stock.#"),
        ("t-errors", "#.error"),
        ("t-exact", "audit"),
    ] {
        declare(&channel, queue).await;
        channel
            .queue_bind(
                queue.into(),
                "lapin.topic".into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    for key in [
        "stock.ibm.nyse",
        "stock.nyse",
        "stock",
        "stock.ibm.lse.nyse",
        "stock.ibm.error",
        "audit.error",
        "audit",
        "audit.log",
        "stocks.ibm.nyse",
        "error",
    ] {
        publish_confirmed(
            &channel,
            "lapin.topic",
            key,
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    assert_eq!(drain(&channel, "t-star").await, ["stock.ibm.nyse"]);
    assert_eq!(
        drain(&channel, "t-hash").await,
        [
            "stock.ibm.nyse",
            "stock.nyse",
            "stock",
            "stock.ibm.lse.nyse",
            "stock.ibm.error"
        ]
    );
    assert_eq!(
        drain(&channel, "t-errors").await,
        ["stock.ibm.error", "audit.error", "error"]
    );
    assert_eq!(drain(&channel, "t-exact").await, ["audit"]);

    // Headers: x-match=all needs every bound header (extra message headers are fine);
    // x-match=any needs one.
    channel
        .exchange_declare(
            "lapin.headers".into(),
            ExchangeKind::Headers,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    for (queue, mode) in [("h-all", "all"), ("h-any", "any")] {
        declare(&channel, queue).await;
        channel
            .queue_bind(
                queue.into(),
                "lapin.headers".into(),
                "".into(),
                QueueBindOptions::default(),
                table(&[
                    ("x-match", long_string(mode)),
                    ("format", long_string("pdf")),
                    ("type", long_string("report")),
                ]),
            )
            .await
            .unwrap();
    }
    let sends: [(&str, FieldTable); 5] = [
        (
            "both",
            table(&[
                ("format", long_string("pdf")),
                ("type", long_string("report")),
            ]),
        ),
        ("format-only", table(&[("format", long_string("pdf"))])),
        (
            "both-and-more",
            table(&[
                ("format", long_string("pdf")),
                ("type", long_string("report")),
                ("pages", AMQPValue::LongInt(3)),
            ]),
        ),
        (
            "wrong-values",
            table(&[("format", long_string("zip")), ("type", long_string("log"))]),
        ),
        ("no-headers", FieldTable::default()),
    ];
    for (name, headers) in sends {
        publish_confirmed(
            &channel,
            "lapin.headers",
            "ignored.by.headers",
            name.as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await;
    }
    assert_eq!(drain(&channel, "h-all").await, ["both", "both-and-more"]);
    assert_eq!(
        drain(&channel, "h-any").await,
        ["both", "format-only", "both-and-more"]
    );

    // Every queue is now empty.
    let queues: BTreeSet<&str> = ["t-star", "t-hash", "t-errors", "t-exact", "h-all", "h-any"]
        .into_iter()
        .collect();
    for queue in queues {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap();
        assert!(got.is_none(), "{queue} not empty after draining");
    }
    connection.close(200, "bye".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nack_requeue_redelivers_and_empty_get_is_none() {
    let running = start().await;
    let connection = connect(&running).await;
    let channel = confirmed_channel(&connection).await;
    declare(&channel, "lapin-retry").await;

    let empty = channel
        .basic_get("lapin-retry".into(), BasicGetOptions::default())
        .await
        .unwrap();
    assert!(empty.is_none(), "a fresh queue gave a message");

    // basic.get, nack with requeue, basic.get again: the same message, redelivered.
    publish_confirmed(
        &channel,
        "",
        "lapin-retry",
        b"try again",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    let first = channel
        .basic_get("lapin-retry".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the published message");
    assert_eq!(first.delivery.data, b"try again");
    assert!(!first.delivery.redelivered);
    assert_eq!(first.message_count, 0);
    assert!(
        first
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap()
    );
    // Ordered on the channel, as in RabbitMQ: the nack is applied before the next get.
    let again = channel
        .basic_get("lapin-retry".into(), BasicGetOptions::default())
        .await
        .unwrap();
    let again = again.expect("the nacked message did not come back");
    assert_eq!(again.delivery.data, b"try again");
    assert!(
        again.delivery.redelivered,
        "requeued message not redelivered"
    );
    assert_eq!(again.delivery.properties.delivery_mode(), &Some(2));
    assert!(again.ack(BasicAckOptions::default()).await.unwrap());
    let empty = channel
        .basic_get("lapin-retry".into(), BasicGetOptions::default())
        .await
        .unwrap();
    assert!(empty.is_none(), "the acked message is still there");

    // The same through a consumer: the nacked delivery comes back redelivered.
    publish_confirmed(
        &channel,
        "",
        "lapin-retry",
        b"consumed twice",
        BasicProperties::default(),
    )
    .await;
    let consumer_channel = connection.create_channel().await.unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            "lapin-retry".into(),
            "lapin-retrier".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(STEP, consumer.next())
        .await
        .expect("first delivery timed out")
        .unwrap()
        .unwrap();
    assert_eq!(delivery.data, b"consumed twice");
    assert!(!delivery.redelivered);
    assert!(
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap()
    );
    let delivery = tokio::time::timeout(STEP, consumer.next())
        .await
        .expect("redelivery timed out")
        .unwrap()
        .unwrap();
    assert_eq!(delivery.data, b"consumed twice");
    assert!(delivery.redelivered, "requeued delivery not redelivered");
    assert!(delivery.ack(BasicAckOptions::default()).await.unwrap());
    consumer_channel
        .basic_cancel("lapin-retrier".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    let empty = channel
        .basic_get("lapin-retry".into(), BasicGetOptions::default())
        .await
        .unwrap();
    assert!(empty.is_none(), "the acked delivery is still there");
    connection.close(200, "bye".into()).await.unwrap();
}

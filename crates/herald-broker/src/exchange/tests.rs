//! Scenarios on `Exchanges`, one rule each, with RabbitMQ's reply texts. Every test
//! checks the state's invariants after its changes.

use super::*;

fn s(text: &str) -> Value {
    Value::from(text)
}

fn table(pairs: &[(&str, Value)]) -> Table {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn def(name: &str, kind: ExchangeKind) -> ExchangeDef {
    ExchangeDef::new(name, kind)
}

fn with_alternate(name: &str, kind: ExchangeKind, alternate: &str) -> ExchangeDef {
    ExchangeDef {
        arguments: table(&[(ALTERNATE_EXCHANGE, s(alternate))]),
        ..def(name, kind)
    }
}

fn to_queue(source: &str, queue: &str, key: &str) -> Binding {
    Binding {
        source: source.into(),
        destination: Destination::Queue(queue.into()),
        routing_key: key.into(),
        arguments: Table::new(),
    }
}

fn to_exchange(source: &str, destination: &str, key: &str) -> Binding {
    Binding {
        destination: Destination::Exchange(destination.into()),
        ..to_queue(source, "", key)
    }
}

fn headers_binding(source: &str, queue: &str, args: &[(&str, Value)]) -> Binding {
    Binding {
        arguments: table(args),
        ..to_queue(source, queue, "")
    }
}

/// A state with these queues.
fn with_queues(queues: &[&str]) -> Exchanges {
    let mut x = Exchanges::new();
    for q in queues {
        assert!(x.add_queue(q));
    }
    x
}

fn declare(x: &mut Exchanges, def: ExchangeDef) {
    assert_eq!(x.declare(def), Ok(true));
    x.assert_consistent();
}

fn bind(x: &mut Exchanges, binding: Binding) {
    assert_eq!(x.bind(&binding), Ok(true), "{binding:?}");
    x.assert_consistent();
}

fn route(x: &Exchanges, exchange: &str, key: &str) -> Vec<String> {
    route_headers(x, exchange, key, &Table::new())
}

fn route_headers(x: &Exchanges, exchange: &str, key: &str, headers: &Table) -> Vec<String> {
    let routed = x.route(exchange, key, headers).unwrap();
    routed.queues.into_iter().collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| (*n).to_owned()).collect()
}

fn error(result: Result<impl std::fmt::Debug, ExchangeError>) -> (u16, String) {
    let e = result.unwrap_err();
    (e.code(), e.to_string())
}

#[test]
fn a_new_vhost_has_rabbitmqs_predeclared_exchanges() {
    let x = Exchanges::new();
    x.assert_consistent();
    let listed: Vec<(&str, ExchangeKind, bool, bool)> = x
        .exchanges()
        .map(|d| (d.name.as_str(), d.kind, d.durable, d.internal))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("", ExchangeKind::Direct, true, false),
            ("amq.direct", ExchangeKind::Direct, true, false),
            ("amq.fanout", ExchangeKind::Fanout, true, false),
            ("amq.headers", ExchangeKind::Headers, true, false),
            ("amq.match", ExchangeKind::Headers, true, false),
            ("amq.rabbitmq.trace", ExchangeKind::Topic, true, true),
            ("amq.topic", ExchangeKind::Topic, true, false),
        ]
    );
    assert_eq!(x.declared_count(), 0);
    assert!(x.bindings().is_empty());
    assert!(is_predeclared("amq.match") && is_predeclared("") && !is_predeclared("amq.x"));
}

#[test]
fn the_default_exchange_routes_a_key_to_the_queue_of_that_name_if_it_exists() {
    let mut x = with_queues(&["orders"]);
    assert_eq!(route(&x, "", "orders"), names(&["orders"]));
    assert!(route(&x, "", "payments").is_empty());
    assert!(route(&x, "", "").is_empty());
    x.remove_queue("orders");
    assert!(route(&x, "", "orders").is_empty());
    assert!(!x.has_queue("orders"));
}

#[test]
fn exchange_types_parse_by_their_amqp_names() {
    for kind in [
        ExchangeKind::Direct,
        ExchangeKind::Fanout,
        ExchangeKind::Topic,
        ExchangeKind::Headers,
    ] {
        assert_eq!(ExchangeKind::parse(kind.as_str()), Ok(kind));
        assert_eq!(kind.to_string().parse::<ExchangeKind>(), Ok(kind));
    }
    for unknown in ["x-delayed-message", "Direct", "", "queue"] {
        let e = ExchangeKind::parse(unknown).unwrap_err();
        assert_eq!(e, ExchangeError::UnknownType(unknown.into()));
        assert_eq!(e.code(), 406);
        assert_eq!(
            e.to_string(),
            format!("PRECONDITION_FAILED - unknown exchange type '{unknown}'")
        );
    }
}

#[test]
fn declare_creates_once_and_redeclaring_the_same_is_fine() {
    let mut x = Exchanges::new();
    let orders = ExchangeDef {
        durable: true,
        ..with_alternate("orders", ExchangeKind::Topic, "unrouted")
    };
    assert_eq!(x.declare(orders.clone()), Ok(true));
    assert_eq!(x.declare(orders.clone()), Ok(false));
    assert_eq!(x.exchange("orders"), Some(&orders));
    assert_eq!(x.declared_count(), 1);
    // The alternate exchange need not exist.
    assert!(x.exchange("unrouted").is_none());
    x.assert_consistent();
}

#[test]
fn redeclaring_differently_names_the_first_difference_as_rabbitmq_does() {
    let mut x = Exchanges::new();
    declare(&mut x, def("orders", ExchangeKind::Direct));
    let cases = [
        (
            def("orders", ExchangeKind::Fanout),
            "received 'fanout' but current is 'direct'",
            "type",
        ),
        (
            ExchangeDef {
                durable: true,
                ..def("orders", ExchangeKind::Direct)
            },
            "received 'true' but current is 'false'",
            "durable",
        ),
        (
            ExchangeDef {
                auto_delete: true,
                ..def("orders", ExchangeKind::Direct)
            },
            "received 'true' but current is 'false'",
            "auto_delete",
        ),
        (
            ExchangeDef {
                internal: true,
                ..def("orders", ExchangeKind::Direct)
            },
            "received 'true' but current is 'false'",
            "internal",
        ),
        (
            with_alternate("orders", ExchangeKind::Direct, "ae"),
            "received the value 'ae' of type 'longstr' but current is none",
            "alternate-exchange",
        ),
        (
            // Type first: a declaration that differs in everything names the type.
            ExchangeDef {
                durable: true,
                internal: true,
                ..with_alternate("orders", ExchangeKind::Headers, "ae")
            },
            "received 'headers' but current is 'direct'",
            "type",
        ),
    ];
    for (redeclared, difference, arg) in cases {
        let e = x.declare(redeclared).unwrap_err();
        assert_eq!(e.code(), 406);
        assert_eq!(
            e.to_string(),
            format!(
                "PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange 'orders' in vhost '/': {difference}"
            )
        );
    }
    // Nothing changed.
    assert_eq!(
        x.exchange("orders"),
        Some(&def("orders", ExchangeKind::Direct))
    );
    x.assert_consistent();
}

#[test]
fn only_the_alternate_exchange_argument_is_compared() {
    let mut x = Exchanges::new();
    declare(&mut x, with_alternate("orders", ExchangeKind::Direct, "ae"));
    // Other arguments are neither compared nor updated.
    let mut other = with_alternate("orders", ExchangeKind::Direct, "ae");
    other.arguments.insert("x-custom".into(), Value::I32(1));
    assert_eq!(x.declare(other), Ok(false));
    assert!(
        !x.exchange("orders")
            .unwrap()
            .arguments
            .contains_key("x-custom")
    );

    let e = x
        .declare(with_alternate("orders", ExchangeKind::Direct, "ae2"))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'orders' in vhost '/': received 'ae2' but current is 'ae'"
    );
    let e = x.declare(def("orders", ExchangeKind::Direct)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'orders' in vhost '/': received none but current is the value 'ae' of type 'longstr'"
    );
    let mut typed = def("orders", ExchangeKind::Direct);
    typed
        .arguments
        .insert(ALTERNATE_EXCHANGE.into(), Value::I32(5));
    let e = x.declare(typed).unwrap_err();
    assert_eq!(
        e.to_string(),
        "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'orders' in vhost '/': received '5' but current is 'ae'"
    );
    x.assert_consistent();
}

#[test]
fn the_alternate_exchange_argument_must_be_a_string_on_creation() {
    let mut x = Exchanges::new();
    let mut bad = def("orders", ExchangeKind::Direct);
    bad.arguments
        .insert(ALTERNATE_EXCHANGE.into(), Value::I32(1));
    assert_eq!(
        error(x.declare(bad)),
        (
            406,
            "PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in exchange 'orders' in vhost '/'"
                .into()
        )
    );
    assert!(x.exchange("orders").is_none());
}

#[test]
fn amq_names_are_reserved_for_creation_only() {
    let mut x = Exchanges::new();
    assert_eq!(
        error(x.declare(def("amq.custom", ExchangeKind::Direct))),
        (
            403,
            "ACCESS_REFUSED - exchange name 'amq.custom' contains reserved prefix 'amq.*'".into()
        )
    );
    // Redeclaring a predeclared exchange as it is: fine (clients do).
    let amq_topic = ExchangeDef {
        durable: true,
        ..def("amq.topic", ExchangeKind::Topic)
    };
    assert_eq!(x.declare(amq_topic), Ok(false));
    // As something else: inequivalent, not reserved.
    assert_eq!(
        error(x.declare(def("amq.direct", ExchangeKind::Fanout))),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'amq.direct' in vhost '/': received 'fanout' but current is 'direct'"
                .into()
        )
    );
    // "amq" without the dot is an ordinary name.
    declare(&mut x, def("amqp-events", ExchangeKind::Fanout));
}

#[test]
fn the_default_exchange_cannot_be_declared_deleted_or_bound() {
    let mut x = with_queues(&["q"]);
    declare(&mut x, def("orders", ExchangeKind::Direct));
    let refused = (
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange".to_owned(),
    );
    assert_eq!(error(x.declare(def("", ExchangeKind::Direct))), refused);
    assert_eq!(error(x.declare_passive("")), refused);
    assert_eq!(error(x.delete("", false)), refused);
    assert_eq!(error(x.bind(&to_queue("", "q", "q"))), refused);
    assert_eq!(error(x.bind(&to_exchange("orders", "", "k"))), refused);
    assert_eq!(error(x.unbind(&to_queue("", "q", "q"))), refused);
    assert_eq!(error(x.unbind(&to_exchange("orders", "", "k"))), refused);
    x.assert_consistent();
}

#[test]
fn passive_declare_finds_or_answers_404() {
    let mut x = Exchanges::new();
    declare(&mut x, def("orders", ExchangeKind::Topic));
    assert_eq!(
        x.declare_passive("orders").unwrap().kind,
        ExchangeKind::Topic
    );
    assert!(x.declare_passive("amq.fanout").is_ok());
    assert_eq!(
        error(x.declare_passive("missing")),
        (404, "NOT_FOUND - no exchange 'missing' in vhost '/'".into())
    );
}

#[test]
fn declared_exchanges_are_limited() {
    let mut x = Exchanges::new();
    x.set_limits(Limits {
        exchanges_max: 2,
        bindings_max: 10,
    });
    declare(&mut x, def("a", ExchangeKind::Direct));
    declare(&mut x, def("b", ExchangeKind::Direct));
    assert_eq!(
        error(x.declare(def("c", ExchangeKind::Direct))),
        (
            406,
            "PRECONDITION_FAILED - cannot declare exchange 'c' in vhost '/': exchange limit of 2 is reached"
                .into()
        )
    );
    // Redeclaring at the limit is fine; deleting makes room.
    assert_eq!(x.declare(def("a", ExchangeKind::Direct)), Ok(false));
    x.delete("b", false).unwrap();
    declare(&mut x, def("c", ExchangeKind::Direct));
}

#[test]
fn delete_refuses_system_exchanges_and_forgives_missing_ones() {
    let mut x = Exchanges::new();
    assert_eq!(
        error(x.delete("amq.direct", false)),
        (
            403,
            "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
                .into()
        )
    );
    // Even one that does not exist, as RabbitMQ checks the name first.
    assert_eq!(error(x.delete("amq.nothing", false)).0, 403);
    assert_eq!(x.delete("missing", false), Ok(Removed::default()));
    assert_eq!(x.delete("missing", true), Ok(Removed::default()));
    x.assert_consistent();
}

#[test]
fn delete_if_unused_refuses_a_source_of_bindings_only() {
    let mut x = with_queues(&["q"]);
    declare(&mut x, def("orders", ExchangeKind::Direct));
    declare(&mut x, def("audit", ExchangeKind::Fanout));
    bind(&mut x, to_queue("orders", "q", "k"));
    bind(&mut x, to_exchange("orders", "audit", "k"));
    assert_eq!(
        error(x.delete("orders", true)),
        (
            406,
            "PRECONDITION_FAILED - exchange 'orders' in vhost '/' in use".into()
        )
    );
    // Being a destination is not "in use": audit goes, and the binding to it with it.
    let removed = x.delete("audit", true).unwrap();
    assert_eq!(removed.exchanges, names(&["audit"]));
    assert_eq!(removed.bindings, vec![to_exchange("orders", "audit", "k")]);
    x.assert_consistent();
    // Without if_unused, bindings both ways go.
    let removed = x.delete("orders", false).unwrap();
    assert_eq!(removed.exchanges, names(&["orders"]));
    assert_eq!(removed.bindings, vec![to_queue("orders", "q", "k")]);
    assert!(x.bindings().is_empty());
    x.assert_consistent();
}

#[test]
fn deleting_an_exchange_removes_the_bindings_to_it() {
    let mut x = with_queues(&["q"]);
    declare(&mut x, def("a", ExchangeKind::Fanout));
    declare(&mut x, def("b", ExchangeKind::Fanout));
    bind(&mut x, to_exchange("a", "b", ""));
    bind(&mut x, to_exchange("amq.fanout", "b", ""));
    bind(&mut x, to_queue("b", "q", ""));
    bind(&mut x, to_exchange("b", "b", "self"));
    let mut removed = x.delete("b", false).unwrap();
    removed.bindings.sort();
    assert_eq!(removed.exchanges, names(&["b"]));
    assert_eq!(
        removed.bindings,
        vec![
            to_exchange("a", "b", ""),
            to_exchange("amq.fanout", "b", ""),
            to_queue("b", "q", ""),
            to_exchange("b", "b", "self"),
        ]
    );
    assert!(x.bindings().is_empty());
    // "a" is not auto-delete: it stays, now without bindings.
    assert!(x.exchange("a").is_some());
    x.assert_consistent();
}

#[test]
fn binding_needs_both_ends_and_names_the_source_first() {
    let mut x = with_queues(&["q"]);
    declare(&mut x, def("orders", ExchangeKind::Direct));
    assert_eq!(
        error(x.bind(&to_queue("missing", "q", "k"))),
        (404, "NOT_FOUND - no exchange 'missing' in vhost '/'".into())
    );
    assert_eq!(
        error(x.bind(&to_queue("orders", "nope", "k"))),
        (404, "NOT_FOUND - no queue 'nope' in vhost '/'".into())
    );
    assert_eq!(
        error(x.bind(&to_exchange("orders", "nowhere", "k"))),
        (404, "NOT_FOUND - no exchange 'nowhere' in vhost '/'".into())
    );
    assert_eq!(
        error(x.bind(&to_queue("missing", "nope", "k"))),
        (404, "NOT_FOUND - no exchange 'missing' in vhost '/'".into())
    );
    assert!(x.bindings().is_empty());
    x.assert_consistent();
}

#[test]
fn binding_twice_is_one_binding_but_other_arguments_make_another() {
    let mut x = with_queues(&["q"]);
    declare(&mut x, def("orders", ExchangeKind::Direct));
    bind(&mut x, to_queue("orders", "q", "k"));
    assert_eq!(x.bind(&to_queue("orders", "q", "k")), Ok(false));
    assert_eq!(x.binding_count(), 1);
    let with_args = Binding {
        arguments: table(&[("x-note", s("1"))]),
        ..to_queue("orders", "q", "k")
    };
    bind(&mut x, with_args.clone());
    assert_eq!(x.binding_count(), 2);
    // Routed once all the same.
    assert_eq!(route(&x, "orders", "k"), names(&["q"]));
    // Unbinding names the arguments exactly: another width of the same number is
    // another binding.
    let other_width = Binding {
        arguments: table(&[("x-note", Value::Bytes(b"1".to_vec()))]),
        ..to_queue("orders", "q", "k")
    };
    assert!(x.unbind(&other_width).unwrap().is_empty());
    assert_eq!(x.unbind(&with_args).unwrap().bindings, vec![with_args]);
    assert_eq!(x.binding_count(), 1);
    x.assert_consistent();
}

#[test]
fn bindings_are_limited() {
    let mut x = with_queues(&["q"]);
    x.set_limits(Limits {
        exchanges_max: 10,
        bindings_max: 2,
    });
    bind(&mut x, to_queue("amq.direct", "q", "a"));
    bind(&mut x, to_queue("amq.direct", "q", "b"));
    assert_eq!(
        error(x.bind(&to_queue("amq.direct", "q", "c"))),
        (
            406,
            "PRECONDITION_FAILED - cannot bind to exchange 'amq.direct' in vhost '/': binding limit of 2 is reached"
                .into()
        )
    );
    // Binding again what exists is still fine at the limit.
    assert_eq!(x.bind(&to_queue("amq.direct", "q", "a")), Ok(false));
    x.assert_consistent();
}

#[test]
fn unbinding_what_is_not_there_succeeds() {
    let mut x = with_queues(&["q"]);
    declare(&mut x, def("orders", ExchangeKind::Direct));
    assert!(x.unbind(&to_queue("orders", "q", "k")).unwrap().is_empty());
    assert!(x.unbind(&to_queue("missing", "q", "k")).unwrap().is_empty());
    assert!(
        x.unbind(&to_queue("orders", "nope", "k"))
            .unwrap()
            .is_empty()
    );
    bind(&mut x, to_queue("orders", "q", "k"));
    assert!(
        x.unbind(&to_queue("orders", "q", "other"))
            .unwrap()
            .is_empty()
    );
    let removed = x.unbind(&to_queue("orders", "q", "k")).unwrap();
    assert_eq!(removed.bindings, vec![to_queue("orders", "q", "k")]);
    assert!(removed.exchanges.is_empty());
    x.assert_consistent();
}

#[test]
fn headers_bindings_check_x_match() {
    let mut x = with_queues(&["q"]);
    let bad = headers_binding("amq.headers", "q", &[("x-match", s("most"))]);
    assert_eq!(
        error(x.bind(&bad)),
        (
            406,
            "PRECONDITION_FAILED - Invalid x-match field value <<\"most\">>; expected all, any, all-with-x, or any-with-x"
                .into()
        )
    );
    // Only headers exchanges look at it.
    bind(
        &mut x,
        headers_binding("amq.direct", "q", &[("x-match", s("most"))]),
    );
    bind(
        &mut x,
        headers_binding("amq.headers", "q", &[("x-match", s("any"))]),
    );
}

#[test]
fn an_auto_delete_exchange_goes_with_its_last_binding() {
    let mut x = with_queues(&["q1", "q2"]);
    let temp = ExchangeDef {
        auto_delete: true,
        ..def("temp", ExchangeKind::Fanout)
    };
    declare(&mut x, temp);
    // Never bound: it stays.
    assert!(x.exchange("temp").is_some());
    bind(&mut x, to_queue("temp", "q1", ""));
    bind(&mut x, to_queue("temp", "q2", ""));
    let removed = x.unbind(&to_queue("temp", "q1", "")).unwrap();
    assert!(removed.exchanges.is_empty());
    assert!(x.exchange("temp").is_some());
    let removed = x.unbind(&to_queue("temp", "q2", "")).unwrap();
    assert_eq!(removed.exchanges, names(&["temp"]));
    assert_eq!(removed.bindings, vec![to_queue("temp", "q2", "")]);
    assert!(x.exchange("temp").is_none());
    x.assert_consistent();
}

#[test]
fn deleting_a_queue_auto_deletes_exchanges_in_a_chain() {
    // a (auto) -> b (auto) -> q, and c (not auto) -> b.
    let mut x = with_queues(&["q", "other"]);
    for name in ["a", "b"] {
        declare(
            &mut x,
            ExchangeDef {
                auto_delete: true,
                ..def(name, ExchangeKind::Fanout)
            },
        );
    }
    declare(&mut x, def("c", ExchangeKind::Fanout));
    bind(&mut x, to_exchange("a", "b", ""));
    bind(&mut x, to_queue("b", "q", ""));
    bind(&mut x, to_exchange("c", "b", ""));
    bind(&mut x, to_queue("amq.fanout", "q", ""));
    bind(&mut x, to_queue("c", "other", ""));

    let mut removed = x.remove_queue("q");
    removed.exchanges.sort();
    removed.bindings.sort();
    assert_eq!(removed.exchanges, names(&["a", "b"]));
    assert_eq!(
        removed.bindings,
        vec![
            to_exchange("a", "b", ""),
            to_queue("amq.fanout", "q", ""),
            to_queue("b", "q", ""),
            to_exchange("c", "b", ""),
        ]
    );
    assert!(x.exchange("c").is_some());
    assert_eq!(x.bindings(), vec![to_queue("c", "other", "")]);
    assert!(x.remove_queue("q").is_empty());
    x.assert_consistent();
}

#[test]
fn a_long_auto_delete_chain_goes_without_recursion() {
    let mut x = with_queues(&["q"]);
    let length = 10_000;
    for i in 0..length {
        let name = format!("x{i}");
        x.declare(ExchangeDef {
            auto_delete: true,
            ..def(&name, ExchangeKind::Fanout)
        })
        .unwrap();
        let binding = if i == 0 {
            to_queue(&name, "q", "")
        } else {
            to_exchange(&name, &format!("x{}", i - 1), "")
        };
        x.bind(&binding).unwrap();
    }
    assert_eq!(route(&x, &format!("x{}", length - 1), ""), names(&["q"]));
    let removed = x.remove_queue("q");
    assert_eq!(removed.exchanges.len(), length);
    assert_eq!(removed.bindings.len(), length);
    assert_eq!(x.declared_count(), 0);
    x.assert_consistent();
}

#[test]
fn direct_exchanges_compare_the_key_literally() {
    let mut x = with_queues(&["exact", "star", "empty"]);
    bind(&mut x, to_queue("amq.direct", "exact", "a.b"));
    bind(&mut x, to_queue("amq.direct", "star", "a.*"));
    bind(&mut x, to_queue("amq.direct", "empty", ""));
    assert_eq!(route(&x, "amq.direct", "a.b"), names(&["exact"]));
    assert_eq!(route(&x, "amq.direct", "a.*"), names(&["star"]));
    assert_eq!(route(&x, "amq.direct", ""), names(&["empty"]));
    assert!(route(&x, "amq.direct", "A.B").is_empty());
}

#[test]
fn fanout_exchanges_ignore_key_and_headers() {
    let mut x = with_queues(&["a", "b"]);
    bind(&mut x, to_queue("amq.fanout", "a", "whatever"));
    bind(&mut x, to_queue("amq.fanout", "b", ""));
    assert_eq!(route(&x, "amq.fanout", "any.key"), names(&["a", "b"]));
}

#[test]
fn topic_exchanges_match_words() {
    let mut x = with_queues(&["all", "eu", "created", "empty"]);
    bind(&mut x, to_queue("amq.topic", "all", "#"));
    bind(&mut x, to_queue("amq.topic", "eu", "orders.eu.*"));
    bind(&mut x, to_queue("amq.topic", "created", "*.*.created"));
    bind(&mut x, to_queue("amq.topic", "empty", "orders..*"));
    assert_eq!(
        route(&x, "amq.topic", "orders.eu.created"),
        names(&["all", "created", "eu"])
    );
    assert_eq!(route(&x, "amq.topic", "orders.us"), names(&["all"]));
    assert_eq!(
        route(&x, "amq.topic", "orders..x"),
        names(&["all", "empty"])
    );
    assert_eq!(route(&x, "amq.topic", ""), names(&["all"]));
}

#[test]
fn headers_exchanges_match_arguments_against_headers() {
    let mut x = with_queues(&["pdf", "any", "traced"]);
    bind(
        &mut x,
        headers_binding(
            "amq.match",
            "pdf",
            &[("format", s("pdf")), ("type", s("report"))],
        ),
    );
    bind(
        &mut x,
        headers_binding(
            "amq.match",
            "any",
            &[("x-match", s("any")), ("format", s("zip"))],
        ),
    );
    bind(
        &mut x,
        headers_binding("amq.match", "traced", &[("trace", Value::Void)]),
    );
    let headers = table(&[
        ("format", s("pdf")),
        ("type", s("report")),
        ("trace", Value::Bool(false)),
    ]);
    assert_eq!(
        route_headers(&x, "amq.match", "ignored", &headers),
        names(&["pdf", "traced"])
    );
    let headers = table(&[("format", s("zip"))]);
    assert_eq!(
        route_headers(&x, "amq.match", "", &headers),
        names(&["any"])
    );
    assert!(route_headers(&x, "amq.match", "", &Table::new()).is_empty());
}

#[test]
fn exchange_to_exchange_bindings_are_followed() {
    let mut x = with_queues(&["q1", "q2"]);
    declare(&mut x, def("ingress", ExchangeKind::Topic));
    declare(&mut x, def("orders", ExchangeKind::Direct));
    bind(&mut x, to_exchange("ingress", "orders", "orders.#"));
    bind(&mut x, to_queue("orders", "q1", "orders.created"));
    bind(
        &mut x,
        to_exchange("orders", "amq.fanout", "orders.created"),
    );
    bind(&mut x, to_queue("amq.fanout", "q2", ""));
    // The key travels unchanged; each exchange applies its own type.
    assert_eq!(route(&x, "ingress", "orders.created"), names(&["q1", "q2"]));
    assert!(route(&x, "ingress", "orders.paid").is_empty());
    assert!(route(&x, "ingress", "payments.created").is_empty());
}

#[test]
fn exchange_cycles_visit_each_exchange_once() {
    let mut x = with_queues(&["qa", "qb"]);
    declare(&mut x, def("a", ExchangeKind::Fanout));
    declare(&mut x, def("b", ExchangeKind::Fanout));
    bind(&mut x, to_exchange("a", "b", ""));
    bind(&mut x, to_exchange("b", "a", ""));
    bind(&mut x, to_exchange("a", "a", "self"));
    bind(&mut x, to_queue("a", "qa", ""));
    bind(&mut x, to_queue("b", "qb", ""));
    assert_eq!(route(&x, "a", "k"), names(&["qa", "qb"]));
    assert_eq!(route(&x, "b", "k"), names(&["qa", "qb"]));
}

#[test]
fn the_alternate_exchange_takes_what_no_binding_matched() {
    let mut x = with_queues(&["orders", "unrouted"]);
    declare(&mut x, def("ae", ExchangeKind::Fanout));
    declare(&mut x, with_alternate("events", ExchangeKind::Direct, "ae"));
    bind(&mut x, to_queue("ae", "unrouted", ""));
    bind(&mut x, to_queue("events", "orders", "orders"));
    assert_eq!(route(&x, "events", "orders"), names(&["orders"]));
    assert_eq!(route(&x, "events", "payments"), names(&["unrouted"]));
    // An alternate exchange that does not exist: nothing.
    declare(
        &mut x,
        with_alternate("lost", ExchangeKind::Direct, "missing"),
    );
    assert!(route(&x, "lost", "k").is_empty());
}

#[test]
fn an_exchange_binding_counts_as_a_match_for_the_alternate_exchange() {
    // events -> inner (which matches nothing); events' alternate is not used, since
    // one of its bindings matched, but inner's own alternate is.
    let mut x = with_queues(&["events-ae", "inner-ae"]);
    declare(&mut x, def("events-alt", ExchangeKind::Fanout));
    declare(&mut x, def("inner-alt", ExchangeKind::Fanout));
    bind(&mut x, to_queue("events-alt", "events-ae", ""));
    bind(&mut x, to_queue("inner-alt", "inner-ae", ""));
    declare(
        &mut x,
        with_alternate("events", ExchangeKind::Fanout, "events-alt"),
    );
    declare(&mut x, def("inner", ExchangeKind::Direct));
    bind(&mut x, to_exchange("events", "inner", ""));
    assert!(route(&x, "events", "k").is_empty());
    x.delete("inner", false).unwrap();
    declare(
        &mut x,
        with_alternate("inner", ExchangeKind::Direct, "inner-alt"),
    );
    bind(&mut x, to_exchange("events", "inner", ""));
    assert_eq!(route(&x, "events", "k"), names(&["inner-ae"]));
}

#[test]
fn alternate_exchanges_chain_and_cycles_end() {
    let mut x = with_queues(&["last"]);
    declare(&mut x, with_alternate("a", ExchangeKind::Direct, "b"));
    declare(&mut x, with_alternate("b", ExchangeKind::Topic, "c"));
    declare(&mut x, def("c", ExchangeKind::Direct));
    bind(&mut x, to_queue("c", "last", "k"));
    bind(&mut x, to_queue("b", "last", "never"));
    assert_eq!(route(&x, "a", "k"), names(&["last"]));
    assert!(route(&x, "a", "other").is_empty());

    // a -> b -> a as alternates, nothing bound: ends with nothing.
    let mut x = with_queues(&[]);
    declare(&mut x, with_alternate("a", ExchangeKind::Direct, "b"));
    declare(&mut x, with_alternate("b", ExchangeKind::Direct, "a"));
    declare(&mut x, with_alternate("self", ExchangeKind::Direct, "self"));
    assert!(route(&x, "a", "k").is_empty());
    assert!(route(&x, "self", "k").is_empty());

    // An alternate already visited through a binding is not visited again.
    let mut x = with_queues(&["q"]);
    declare(&mut x, def("hub", ExchangeKind::Direct));
    declare(&mut x, with_alternate("spoke", ExchangeKind::Direct, "hub"));
    bind(&mut x, to_exchange("hub", "spoke", "k"));
    bind(&mut x, to_queue("hub", "q", "direct"));
    assert!(route(&x, "hub", "k").is_empty());
}

#[test]
fn internal_exchanges_refuse_publishes_but_route_for_others() {
    let mut x = with_queues(&["q", "ae-q"]);
    let internal = |name: &str, kind| ExchangeDef {
        internal: true,
        ..def(name, kind)
    };
    declare(&mut x, internal("inner", ExchangeKind::Fanout));
    declare(&mut x, internal("inner-ae", ExchangeKind::Fanout));
    declare(
        &mut x,
        with_alternate("front", ExchangeKind::Direct, "inner-ae"),
    );
    bind(&mut x, to_exchange("front", "inner", "k"));
    bind(&mut x, to_queue("inner", "q", ""));
    bind(&mut x, to_queue("inner-ae", "ae-q", ""));
    assert_eq!(
        error(x.route("inner", "k", &Table::new())),
        (
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'inner' in vhost '/'".into()
        )
    );
    assert_eq!(
        error(x.route("amq.rabbitmq.trace", "k", &Table::new())).0,
        403
    );
    assert_eq!(route(&x, "front", "k"), names(&["q"]));
    assert_eq!(route(&x, "front", "other"), names(&["ae-q"]));
}

#[test]
fn publishing_to_a_missing_exchange_is_404() {
    let x = Exchanges::new();
    assert_eq!(
        error(x.route("missing", "k", &Table::new())),
        (404, "NOT_FOUND - no exchange 'missing' in vhost '/'".into())
    );
}

#[test]
fn removing_a_queue_removes_its_bindings_from_routing() {
    let mut x = with_queues(&["a", "b"]);
    bind(&mut x, to_queue("amq.fanout", "a", ""));
    bind(&mut x, to_queue("amq.fanout", "b", ""));
    bind(&mut x, to_queue("amq.topic", "a", "#"));
    let removed = x.remove_queue("a");
    assert!(removed.exchanges.is_empty());
    assert_eq!(removed.bindings.len(), 2);
    assert_eq!(route(&x, "amq.fanout", ""), names(&["b"]));
    assert!(route(&x, "amq.topic", "x").is_empty());
    // A queue declared again starts without bindings.
    assert!(x.add_queue("a"));
    assert!(!x.add_queue("a"));
    assert_eq!(route(&x, "amq.fanout", ""), names(&["b"]));
    x.assert_consistent();
}

#[test]
fn listings_are_sorted() {
    let mut x = with_queues(&["q2", "q1"]);
    declare(&mut x, def("zeta", ExchangeKind::Direct));
    declare(&mut x, def("alpha", ExchangeKind::Direct));
    bind(&mut x, to_queue("zeta", "q1", "b"));
    bind(&mut x, to_queue("zeta", "q1", "a"));
    bind(&mut x, to_exchange("zeta", "alpha", "a"));
    bind(&mut x, to_queue("alpha", "q2", "k"));
    bind(&mut x, to_queue("alpha", "q1", "k"));
    let listed: Vec<&str> = x.exchanges().map(|d| d.name.as_str()).collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    assert_eq!(listed, sorted);
    assert_eq!(
        x.bindings(),
        vec![
            to_queue("alpha", "q1", "k"),
            to_queue("alpha", "q2", "k"),
            to_queue("zeta", "q1", "a"),
            to_queue("zeta", "q1", "b"),
            to_exchange("zeta", "alpha", "a"),
        ]
    );
}

#[test]
fn definitions_and_bindings_survive_postcard_and_restore() {
    let mut x = with_queues(&["q"]);
    let every_value = table(&[
        ("bool", Value::Bool(true)),
        ("i8", Value::I8(-8)),
        ("u8", Value::U8(8)),
        ("i16", Value::I16(-16)),
        ("u16", Value::U16(16)),
        ("i32", Value::I32(-32)),
        ("u32", Value::U32(32)),
        ("i64", Value::I64(-64)),
        ("f32", Value::F32(1.5)),
        ("f64", Value::F64(-2.25)),
        (
            "decimal",
            Value::Decimal {
                scale: 2,
                value: 314,
            },
        ),
        ("str", s("text")),
        ("bytes", Value::Bytes(vec![0, 255])),
        ("array", Value::Array(vec![Value::I32(1), s("two")])),
        ("timestamp", Value::Timestamp(1_700_000_000)),
        ("table", Value::Table(table(&[("inner", Value::Void)]))),
        ("void", Value::Void),
    ]);
    let mut events = with_alternate("events", ExchangeKind::Headers, "ae");
    events.durable = true;
    events
        .arguments
        .insert("x-extra".into(), Value::Table(every_value.clone()));
    declare(&mut x, events.clone());
    declare(&mut x, def("ae", ExchangeKind::Fanout));
    let headers = Binding {
        arguments: every_value,
        ..to_queue("events", "q", "")
    };
    bind(&mut x, headers.clone());
    bind(&mut x, to_exchange("events", "ae", "k"));

    let defs: Vec<Vec<u8>> = x
        .exchanges()
        .map(|d| postcard::to_stdvec(d).unwrap())
        .collect();
    let bindings: Vec<Vec<u8>> = x
        .bindings()
        .iter()
        .map(|b| postcard::to_stdvec(b).unwrap())
        .collect();
    let defs: Vec<ExchangeDef> = defs
        .iter()
        .map(|bytes| postcard::from_bytes(bytes).unwrap())
        .collect();
    let bindings: Vec<Binding> = bindings
        .iter()
        .map(|bytes| postcard::from_bytes(bytes).unwrap())
        .collect();
    assert!(defs.contains(&events));
    assert!(bindings.contains(&headers));

    let restored = Exchanges::restore(defs, ["q".to_owned()], bindings);
    assert!(restored.dropped.is_empty());
    let y = restored.exchanges;
    y.assert_consistent();
    assert_eq!(
        y.exchanges().collect::<Vec<_>>(),
        x.exchanges().collect::<Vec<_>>()
    );
    assert_eq!(y.bindings(), x.bindings());
    assert_eq!(y.binding_count(), 2);
}

#[test]
fn restore_drops_dangling_bindings_and_keeps_predeclared_exchanges() {
    let defs = vec![
        def("orders", ExchangeKind::Direct),
        // A stored predeclared exchange does not replace the real one.
        def("amq.direct", ExchangeKind::Fanout),
        def("", ExchangeKind::Topic),
    ];
    let bindings = vec![
        to_queue("orders", "q", "k"),
        to_queue("orders", "gone", "k"),
        to_queue("vanished", "q", "k"),
        to_exchange("orders", "vanished", "k"),
        to_queue("", "q", "q"),
    ];
    let restored = Exchanges::restore(defs, ["q".to_owned()], bindings);
    let x = restored.exchanges;
    x.assert_consistent();
    assert_eq!(x.exchange("amq.direct").unwrap().kind, ExchangeKind::Direct);
    assert_eq!(x.exchange("").unwrap().kind, ExchangeKind::Direct);
    assert_eq!(x.bindings(), vec![to_queue("orders", "q", "k")]);
    assert_eq!(
        restored.dropped,
        vec![
            to_queue("orders", "gone", "k"),
            to_queue("vanished", "q", "k"),
            to_exchange("orders", "vanished", "k"),
            to_queue("", "q", "q"),
        ]
    );
    assert_eq!(route(&x, "orders", "k"), names(&["q"]));
}

#[test]
fn exact_value_equality_is_a_total_order() {
    assert_ne!(Value::I32(1), Value::I64(1));
    assert_ne!(s("a"), Value::Bytes(b"a".to_vec()));
    assert_eq!(Value::F64(f64::NAN), Value::F64(f64::NAN));
    assert_ne!(Value::F64(0.0), Value::F64(-0.0));
    assert!(Value::I8(5) < Value::I8(6));
    assert!(Value::Bool(true) < Value::I8(0), "by type first");
    let mut sorted = vec![s("b"), Value::Void, Value::I32(2), s("a"), Value::I32(-1)];
    sorted.sort();
    assert_eq!(
        sorted,
        vec![Value::I32(-1), Value::I32(2), s("a"), s("b"), Value::Void]
    );
}

#[test]
fn definitions_and_bindings_survive_json_too() {
    let mut arguments = table(&[
        ("bool", Value::Bool(false)),
        ("i8", Value::I8(i8::MIN)),
        ("u32", Value::U32(u32::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f32", Value::F32(0.1)),
        ("f64", Value::F64(1e300)),
        ("decimal", Value::Decimal { scale: 9, value: 1 }),
        ("bytes", Value::Bytes(vec![0, 1, 255])),
        ("timestamp", Value::Timestamp(u64::MAX)),
        ("void", Value::Void),
    ]);
    arguments.insert("nested".into(), Value::Table(arguments.clone()));
    arguments.insert(
        "array".into(),
        Value::Array(arguments.values().cloned().collect()),
    );
    let def = ExchangeDef {
        arguments: arguments.clone(),
        ..def("events", ExchangeKind::Headers)
    };
    let json = serde_json::to_vec(&def).unwrap();
    assert_eq!(serde_json::from_slice::<ExchangeDef>(&json).unwrap(), def);
    let binding = Binding {
        arguments,
        ..to_exchange("events", "other", "k")
    };
    let json = serde_json::to_vec(&binding).unwrap();
    assert_eq!(serde_json::from_slice::<Binding>(&json).unwrap(), binding);
}

/// Random sequences of changes: the invariants hold after each, every change reports
/// exactly what it created or removed, and routing agrees with a plain walk over the
/// listed bindings.
mod sequences {
    use super::*;
    use proptest::prelude::*;

    const EXCHANGES: [&str; 7] = ["e0", "e1", "e2", "amq.fanout", "amq.topic", "", "amq.x"];
    const QUEUES: [&str; 3] = ["q0", "q1", "q2"];
    const BINDING_KEYS: [&str; 7] = ["a", "b", "a.b", "#", "*", "a.#", ""];
    const ROUTING_KEYS: [&str; 5] = ["a", "b", "a.b", "", "c.a"];
    const KINDS: [ExchangeKind; 4] = [
        ExchangeKind::Direct,
        ExchangeKind::Fanout,
        ExchangeKind::Topic,
        ExchangeKind::Headers,
    ];

    #[derive(Debug, Clone)]
    enum Op {
        Declare(ExchangeDef),
        Delete(&'static str, bool),
        Bind(Binding),
        Unbind(Binding),
        AddQueue(&'static str),
        RemoveQueue(&'static str),
    }

    fn header_tables() -> Vec<Table> {
        vec![
            Table::new(),
            table(&[("k", s("a"))]),
            table(&[("x-match", s("any")), ("k", s("a")), ("n", Value::I32(1))]),
            table(&[("n", Value::I64(1)), ("x-k", s("b"))]),
            table(&[("x-match", s("all-with-x")), ("x-k", s("b"))]),
            table(&[("k", Value::Void)]),
        ]
    }

    fn binding() -> impl Strategy<Value = Binding> {
        (
            prop::sample::select(EXCHANGES.to_vec()),
            any::<bool>(),
            prop::sample::select(EXCHANGES.to_vec()),
            prop::sample::select(QUEUES.to_vec()),
            prop::sample::select(BINDING_KEYS.to_vec()),
            prop::sample::select(header_tables()),
        )
            .prop_map(
                |(source, to_queue, exchange, queue, key, arguments)| Binding {
                    source: source.into(),
                    destination: if to_queue {
                        Destination::Queue(queue.into())
                    } else {
                        Destination::Exchange(exchange.into())
                    },
                    routing_key: key.into(),
                    arguments,
                },
            )
    }

    fn op() -> impl Strategy<Value = Op> {
        let declare = (
            prop::sample::select(EXCHANGES.to_vec()),
            prop::sample::select(KINDS.to_vec()),
            any::<bool>(),
            prop::bool::weighted(0.2),
            prop::option::weighted(0.5, prop::sample::select(EXCHANGES.to_vec())),
        )
            .prop_map(|(name, kind, auto_delete, internal, alternate)| {
                let mut def = ExchangeDef {
                    auto_delete,
                    internal,
                    ..ExchangeDef::new(name, kind)
                };
                if let Some(alternate) = alternate {
                    def.arguments
                        .insert(ALTERNATE_EXCHANGE.into(), s(alternate));
                }
                Op::Declare(def)
            });
        prop_oneof![
            3 => declare,
            1 => (prop::sample::select(EXCHANGES.to_vec()), any::<bool>())
                .prop_map(|(name, if_unused)| Op::Delete(name, if_unused)),
            5 => binding().prop_map(Op::Bind),
            2 => binding().prop_map(Op::Unbind),
            2 => prop::sample::select(QUEUES.to_vec()).prop_map(Op::AddQueue),
            1 => prop::sample::select(QUEUES.to_vec()).prop_map(Op::RemoveQueue),
        ]
    }

    /// RabbitMQ's `route1` over the flat listing.
    fn reference_route(x: &Exchanges, start: &str, key: &str, headers: &Table) -> BTreeSet<String> {
        let defs: BTreeMap<&str, &ExchangeDef> =
            x.exchanges().map(|d| (d.name.as_str(), d)).collect();
        let bindings = x.bindings();
        let key_words: Vec<&str> = topic::words(key).collect();
        let mut seen = BTreeSet::from([start.to_owned()]);
        let mut work = vec![start.to_owned()];
        let mut queues = BTreeSet::new();
        while let Some(name) = work.pop() {
            if name.is_empty() {
                if x.has_queue(key) {
                    queues.insert(key.to_owned());
                }
                continue;
            }
            let def = defs[name.as_str()];
            let matching: Vec<&Binding> = bindings
                .iter()
                .filter(|b| b.source == name)
                .filter(|b| match def.kind {
                    ExchangeKind::Direct => b.routing_key == key,
                    ExchangeKind::Fanout => true,
                    ExchangeKind::Topic => topic::matches(&b.routing_key, &key_words),
                    ExchangeKind::Headers => headers::matches(&b.arguments, headers),
                })
                .collect();
            for b in &matching {
                match &b.destination {
                    Destination::Queue(q) => {
                        queues.insert(q.clone());
                    }
                    Destination::Exchange(e) => {
                        if defs.contains_key(e.as_str()) && seen.insert(e.clone()) {
                            work.push(e.clone());
                        }
                    }
                }
            }
            if matching.is_empty()
                && let Some(alternate) = def.alternate_exchange()
                && defs.contains_key(alternate)
                && seen.insert(alternate.to_owned())
            {
                work.push(alternate.to_owned());
            }
        }
        queues
    }

    type Snapshot = (BTreeSet<String>, BTreeSet<Binding>);

    fn snapshot(x: &Exchanges) -> Snapshot {
        (
            x.exchanges().map(|d| d.name.clone()).collect(),
            x.bindings().into_iter().collect(),
        )
    }

    fn check_removed(
        before: &Snapshot,
        after: &Snapshot,
        removed: &Removed,
    ) -> Result<(), TestCaseError> {
        let exchanges: BTreeSet<String> = removed.exchanges.iter().cloned().collect();
        let bindings: BTreeSet<Binding> = removed.bindings.iter().cloned().collect();
        prop_assert_eq!(exchanges.len(), removed.exchanges.len(), "reported twice");
        prop_assert_eq!(bindings.len(), removed.bindings.len(), "reported twice");
        prop_assert!(after.0.is_subset(&before.0) && after.1.is_subset(&before.1));
        prop_assert_eq!(
            &exchanges,
            &before.0.difference(&after.0).cloned().collect()
        );
        prop_assert_eq!(&bindings, &before.1.difference(&after.1).cloned().collect());
        Ok(())
    }

    proptest! {
        // Each case routes 210 messages after each of up to 40 changes.
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn changes_report_what_they_did_and_routing_follows_the_listing(
            ops in prop::collection::vec(op(), 1..40),
        ) {
            // Queues from the start, so that early bindings to them hold.
            let mut x = with_queues(&QUEUES);
            x.set_limits(Limits { exchanges_max: 100, bindings_max: 1_000 });
            for op in ops {
                let before = snapshot(&x);
                match &op {
                    Op::Declare(def) => {
                        let created = x.declare(def.clone());
                        let mut expected = before.clone();
                        if created == Ok(true) {
                            prop_assert!(!before.0.contains(&def.name));
                            expected.0.insert(def.name.clone());
                        }
                        prop_assert_eq!(snapshot(&x), expected);
                    }
                    Op::Bind(binding) => {
                        let created = x.bind(binding);
                        let mut expected = before.clone();
                        match created {
                            Ok(true) => {
                                prop_assert!(expected.1.insert(binding.clone()));
                            }
                            Ok(false) => prop_assert!(before.1.contains(binding)),
                            Err(_) => {}
                        }
                        prop_assert_eq!(snapshot(&x), expected);
                    }
                    Op::Delete(name, if_unused) => match x.delete(name, *if_unused) {
                        Ok(removed) => check_removed(&before, &snapshot(&x), &removed)?,
                        Err(_) => prop_assert_eq!(snapshot(&x), before),
                    },
                    Op::Unbind(binding) => match x.unbind(binding) {
                        Ok(removed) => check_removed(&before, &snapshot(&x), &removed)?,
                        Err(_) => prop_assert_eq!(snapshot(&x), before),
                    },
                    Op::AddQueue(name) => {
                        x.add_queue(name);
                        prop_assert_eq!(snapshot(&x), before);
                    }
                    Op::RemoveQueue(name) => {
                        let removed = x.remove_queue(name);
                        check_removed(&before, &snapshot(&x), &removed)?;
                    }
                }
                x.assert_consistent();
                for exchange in EXCHANGES {
                    for key in ROUTING_KEYS {
                        for headers in header_tables() {
                            match x.exchange(exchange) {
                                None => prop_assert!(x.route(exchange, key, &headers).is_err()),
                                Some(def) if def.internal => {
                                    prop_assert_eq!(
                                        x.route(exchange, key, &headers),
                                        Err(ExchangeError::InternalExchange(exchange.into()))
                                    );
                                }
                                Some(_) => {
                                    let routed = x.route(exchange, key, &headers).unwrap();
                                    prop_assert_eq!(
                                        routed.queues,
                                        reference_route(&x, exchange, key, &headers)
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

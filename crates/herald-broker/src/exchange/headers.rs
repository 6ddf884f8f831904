//! Headers matching: a binding's arguments against a message's headers, as RabbitMQ's
//! headers exchange does it (`rabbit_exchange_type_headers`, 4.x).
//!
//! `x-match` (a long string) picks the rule: `all` (also when absent or not a string,
//! RabbitMQ's legacy default) needs every other argument to match, `any` one of them.
//! Both skip arguments whose name starts with `x-`; `all-with-x` and `any-with-x` count
//! them too. `x-match` itself never counts. An argument of type void matches when the
//! header is present, whatever its value; any other argument when the header is
//! present and [`Value::routing_eq`] to it. So `all` with nothing to compare matches
//! every message and `any` with nothing to compare matches none.

use super::error::ExchangeError;
use super::value::{Table, Value};

const X_MATCH: &str = "x-match";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

fn mode(arguments: &Table) -> Mode {
    match arguments.get(X_MATCH).and_then(Value::as_str) {
        Some("any") => Mode::Any,
        Some("all-with-x") => Mode::AllWithX,
        Some("any-with-x") => Mode::AnyWithX,
        _ => Mode::All,
    }
}

/// Whether a binding with `arguments` takes a message with `headers`.
pub(crate) fn matches(arguments: &Table, headers: &Table) -> bool {
    let mode = mode(arguments);
    let with_x = matches!(mode, Mode::AllWithX | Mode::AnyWithX);
    let mut compared = arguments
        .iter()
        .filter(|(name, _)| name.as_str() != X_MATCH && (with_x || !name.starts_with("x-")));
    let one = |(name, expected): (&String, &Value)| match (expected, headers.get(name)) {
        (_, None) => false,
        (Value::Void, Some(_)) => true,
        (expected, Some(header)) => header.routing_eq(expected),
    };
    match mode {
        Mode::All | Mode::AllWithX => compared.all(one),
        Mode::Any | Mode::AnyWithX => compared.any(one),
    }
}

/// RabbitMQ's `validate_binding` for a headers exchange: `x-match`, when present,
/// must be one of the four strings.
pub(crate) fn validate(arguments: &Table) -> Result<(), ExchangeError> {
    match arguments.get(X_MATCH) {
        None => Ok(()),
        Some(Value::Str(s))
            if matches!(s.as_str(), "all" | "any" | "all-with-x" | "any-with-x") =>
        {
            Ok(())
        }
        Some(value) => Err(ExchangeError::InvalidXMatch {
            type_name: value.type_name(),
            value: value.erlang_text(false),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, Value)]) -> Table {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn s(text: &str) -> Value {
        Value::from(text)
    }

    #[test]
    fn all_needs_every_argument_and_is_the_default() {
        let headers = table(&[("format", s("pdf")), ("type", s("report"))]);
        for x_match in [None, Some(s("all")), Some(Value::I32(1))] {
            let mut args = table(&[("format", s("pdf")), ("type", s("report"))]);
            if let Some(x) = &x_match {
                args.insert(X_MATCH.into(), x.clone());
            }
            assert!(matches(&args, &headers), "{x_match:?}");
            args.insert("lang".into(), s("en"));
            assert!(!matches(&args, &headers), "{x_match:?}");
        }
        let wrong = table(&[("x-match", s("all")), ("format", s("zip"))]);
        assert!(!matches(&wrong, &headers));
        // Extra headers do not matter.
        let fewer = table(&[("x-match", s("all")), ("format", s("pdf"))]);
        assert!(matches(&fewer, &headers));
    }

    #[test]
    fn any_needs_one_argument() {
        let args = table(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("lang", s("en")),
        ]);
        assert!(matches(&args, &table(&[("lang", s("en"))])));
        assert!(matches(&args, &table(&[("format", s("pdf"))])));
        assert!(!matches(&args, &table(&[("format", s("zip"))])));
        assert!(!matches(&args, &Table::new()));
    }

    #[test]
    fn nothing_to_compare_matches_all_and_never_any() {
        let headers = table(&[("a", s("1"))]);
        assert!(matches(&Table::new(), &headers));
        assert!(matches(&Table::new(), &Table::new()));
        assert!(matches(&table(&[("x-match", s("all"))]), &Table::new()));
        assert!(!matches(&table(&[("x-match", s("any"))]), &headers));
        // Only x- arguments: skipped by all/any, so the same as none.
        let x_only = table(&[("x-match", s("any")), ("x-tenant", s("7"))]);
        assert!(!matches(&x_only, &table(&[("x-tenant", s("7"))])));
        let x_only = table(&[("x-tenant", s("7"))]);
        assert!(matches(&x_only, &Table::new()));
    }

    #[test]
    fn x_arguments_count_only_with_x() {
        let headers = table(&[("x-tenant", s("7")), ("kind", s("order"))]);
        let other_tenant = Table::from([
            ("x-tenant".to_owned(), s("8")),
            ("kind".to_owned(), s("order")),
        ]);
        let mut args = table(&[
            ("x-match", s("all")),
            ("x-tenant", s("8")),
            ("kind", s("order")),
        ]);
        assert!(matches(&args, &headers), "all ignores x- arguments");
        args.insert("x-match".into(), s("all-with-x"));
        assert!(!matches(&args, &headers), "all-with-x compares them");
        assert!(matches(&args, &other_tenant));

        let mut args = table(&[("x-match", s("any")), ("x-tenant", s("7"))]);
        assert!(!matches(&args, &headers), "any ignores x- arguments");
        args.insert("x-match".into(), s("any-with-x"));
        assert!(matches(&args, &headers), "any-with-x compares them");
        assert!(!matches(&args, &other_tenant));
    }

    #[test]
    fn void_arguments_match_presence_only() {
        let args = table(&[("trace", Value::Void)]);
        assert!(matches(&args, &table(&[("trace", s("yes"))])));
        assert!(matches(&args, &table(&[("trace", Value::Void)])));
        assert!(matches(&args, &table(&[("trace", Value::I64(0))])));
        assert!(!matches(&args, &table(&[("other", s("yes"))])));
        // A void header does not equal a valued argument.
        let valued = table(&[("trace", s("yes"))]);
        assert!(!matches(&valued, &table(&[("trace", Value::Void)])));
        let any = table(&[("x-match", s("any")), ("trace", Value::Void), ("a", s("1"))]);
        assert!(matches(&any, &table(&[("trace", Value::Bool(false))])));
    }

    #[test]
    fn values_compare_as_rabbitmq_decodes_them() {
        let one = |v: Value, header: Value| matches(&table(&[("n", v)]), &table(&[("n", header)]));
        // Integer widths are erased, and timestamps are integers.
        assert!(one(Value::I32(7), Value::I64(7)));
        assert!(one(Value::U8(7), Value::I16(7)));
        assert!(one(Value::Timestamp(7), Value::U32(7)));
        assert!(!one(Value::I32(7), Value::I32(8)));
        assert!(!one(Value::I32(-1), Value::U32(u32::MAX)));
        // Integers are not floats; float widths are erased.
        assert!(!one(Value::I32(1), Value::F64(1.0)));
        assert!(one(Value::F32(1.5), Value::F64(1.5)));
        // Strings and byte arrays are binaries; not numbers, not booleans.
        assert!(one(s("abc"), Value::Bytes(b"abc".to_vec())));
        assert!(!one(s("7"), Value::I32(7)));
        assert!(!one(s("true"), Value::Bool(true)));
        assert!(one(Value::Bool(true), Value::Bool(true)));
        assert!(!one(Value::Bool(true), Value::Bool(false)));
        let decimal = Value::Decimal {
            scale: 2,
            value: 314,
        };
        assert!(one(decimal.clone(), decimal.clone()));
        assert!(!one(decimal, Value::I32(314)));
        // Inside arrays and tables the types stay.
        let array = |v: Value| Value::Array(vec![s("a"), v]);
        assert!(one(array(Value::I32(1)), array(Value::I32(1))));
        assert!(!one(array(Value::I32(1)), array(Value::I64(1))));
        let nested = |v: Value| Value::Table(table(&[("k", v)]));
        assert!(one(nested(s("v")), nested(s("v"))));
        assert!(!one(nested(s("v")), nested(Value::Bytes(b"v".to_vec()))));
    }

    #[test]
    fn x_match_must_be_one_of_four_strings() {
        for ok in ["all", "any", "all-with-x", "any-with-x"] {
            assert_eq!(validate(&table(&[("x-match", s(ok))])), Ok(()));
        }
        assert_eq!(validate(&Table::new()), Ok(()));
        let bad = validate(&table(&[("x-match", s("some"))])).unwrap_err();
        assert_eq!(bad.code(), 406);
        assert_eq!(
            bad.to_string(),
            "PRECONDITION_FAILED - Invalid x-match field value <<\"some\">>; expected all, any, all-with-x, or any-with-x"
        );
        let bad = validate(&table(&[("x-match", Value::I32(1))])).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); expected longstr"
        );
    }
}

//! KurrentDB's `UUID` message has two forms: a string, or two signed 64-bit halves
//! (Java's `UUID` layout: most significant bits first). A server answers in the form
//! the client asked for in `uuid_option`, and reads either.

use crate::proto::shared::{Uuid as ProtoUuid, uuid};

/// `id` in the string form (lower-case, hyphenated) or the structured one.
pub fn to_proto(id: ::uuid::Uuid, structured: bool) -> ProtoUuid {
    let value = if structured {
        let (most, least) = id.as_u64_pair();
        uuid::Value::Structured(uuid::Structured {
            most_significant_bits: most as i64,
            least_significant_bits: least as i64,
        })
    } else {
        uuid::Value::String(id.hyphenated().to_string())
    };
    ProtoUuid { value: Some(value) }
}

/// The UUID a client sent, in either form; `None` for a missing or malformed one.
pub fn from_proto(id: &ProtoUuid) -> Option<::uuid::Uuid> {
    match id.value.as_ref()? {
        uuid::Value::String(s) => ::uuid::Uuid::parse_str(s).ok(),
        uuid::Value::Structured(s) => Some(::uuid::Uuid::from_u64_pair(
            s.most_significant_bits as u64,
            s.least_significant_bits as u64,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_round_trip_and_bad_strings_are_none() {
        let id = ::uuid::Uuid::parse_str("f47ac10b-58cc-4372-a567-0e02b2c3d479").unwrap();
        for structured in [false, true] {
            assert_eq!(from_proto(&to_proto(id, structured)), Some(id));
        }
        // The halves are Java's: most significant bits first, as signed integers.
        let uuid::Value::Structured(s) = to_proto(id, true).value.unwrap() else {
            panic!("structured form expected");
        };
        assert_eq!(s.most_significant_bits, 0xf47a_c10b_58cc_4372_u64 as i64);
        assert_eq!(s.least_significant_bits, 0xa567_0e02_b2c3_d479_u64 as i64);
        let bad = ProtoUuid {
            value: Some(uuid::Value::String("not-a-uuid".into())),
        };
        assert_eq!(from_proto(&bad), None);
        assert_eq!(from_proto(&ProtoUuid { value: None }), None);
    }
}

//! What Herald implements of KurrentDB's gRPC API: one table, which
//! `ServerFeatures.GetSupportedMethods` answers from. Clients decide on it whether to
//! use a method (the Node client checks `BatchAppend` and the `$all` filter features
//! before it calls them), so a row goes in only when its method really works.

/// One implemented method, named as in the protos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// The protobuf service's full name, e.g. `event_store.client.streams.Streams`.
    pub service: &'static str,
    /// The method as declared, e.g. `BatchAppend`.
    pub method: &'static str,
    /// Feature flags KurrentDB lists for the method (`stream`, `all`, `position`,
    /// `events`, `filtered`, ... for Streams.Read; `deadline_duration` for
    /// BatchAppend).
    pub features: &'static [&'static str],
}

/// Everything Herald serves for real. Streams, persistent subscriptions and the rest
/// add their rows here as they land.
pub const SUPPORTED: &[Method] = &[
    Method {
        service: "event_store.client.server_features.ServerFeatures",
        method: "GetSupportedMethods",
        features: &[],
    },
    Method {
        service: "event_store.client.gossip.Gossip",
        method: "Read",
        features: &[],
    },
    Method {
        service: "event_store.client.streams.Streams",
        method: "Read",
        features: &["stream", "all", "position", "events", "filtered"],
    },
    Method {
        service: "event_store.client.streams.Streams",
        method: "Append",
        features: &[],
    },
    Method {
        service: "event_store.client.streams.Streams",
        method: "BatchAppend",
        features: &["deadline_duration"],
    },
    Method {
        service: "event_store.client.streams.Streams",
        method: "Delete",
        features: &[],
    },
    Method {
        service: "event_store.client.streams.Streams",
        method: "Tombstone",
        features: &[],
    },
    Method {
        service: PERSISTENT,
        method: "Create",
        features: &["stream", "all"],
    },
    Method {
        service: PERSISTENT,
        method: "Update",
        features: &["stream", "all"],
    },
    Method {
        service: PERSISTENT,
        method: "Delete",
        features: &["stream", "all"],
    },
    Method {
        service: PERSISTENT,
        method: "Read",
        features: &["stream", "all"],
    },
    Method {
        service: PERSISTENT,
        method: "GetInfo",
        features: &["stream", "all"],
    },
    Method {
        service: PERSISTENT,
        method: "ReplayParked",
        features: &["stream", "all"],
    },
    Method {
        service: PERSISTENT,
        method: "List",
        features: &["stream", "all"],
    },
    Method {
        service: PERSISTENT,
        method: "RestartSubsystem",
        features: &[],
    },
];

const PERSISTENT: &str = "event_store.client.persistent_subscriptions.PersistentSubscriptions";

/// The KurrentDB server version Herald reports. Clients compare it to decide on
/// behaviour that differs between server versions; it names the release whose
/// protocol `vendor/kurrentdb-protos` describes. (See the client notes for what each
/// client reads from it.)
pub const SERVER_VERSION: &str = "24.10.0";

/// Whether `service`/`method` is in the table (names compared as clients do:
/// case-insensitively).
pub fn is_supported(service: &str, method: &str) -> bool {
    SUPPORTED
        .iter()
        .any(|m| m.service.eq_ignore_ascii_case(service) && m.method.eq_ignore_ascii_case(method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_real_services_and_is_case_insensitive() {
        assert!(is_supported("event_store.client.gossip.gossip", "read"));
        assert!(is_supported(
            "event_store.client.streams.streams",
            "batchappend"
        ));
        assert!(is_supported(
            "event_store.client.persistent_subscriptions.PersistentSubscriptions",
            "read"
        ));
        assert!(!is_supported(
            "event_store.client.projections.Projections",
            "Create"
        ));
        // Every row names a service that is compiled in, by its generated name.
        for m in SUPPORTED {
            assert!(
                [
                    crate::proto::gossip::gossip_server::SERVICE_NAME,
                    crate::proto::server_features::server_features_server::SERVICE_NAME,
                    crate::proto::streams::streams_server::SERVICE_NAME,
                    crate::proto::persistent_subscriptions::persistent_subscriptions_server::SERVICE_NAME,
                ]
                .contains(&m.service),
                "{m:?}"
            );
        }
    }
}

//! `ServerFeatures.GetSupportedMethods`: the rows of `features::SUPPORTED`, named as
//! KurrentDB names them (service and method in lower case), and the server version.

use tonic::{Request, Response, Status};

use crate::features::{SERVER_VERSION, SUPPORTED};
use crate::proto::server_features::{
    SupportedMethod, SupportedMethods, server_features_server::ServerFeatures,
};
use crate::proto::shared::Empty;

pub struct ServerFeaturesService;

/// The answer, built from the table alone.
pub fn supported_methods() -> SupportedMethods {
    SupportedMethods {
        methods: SUPPORTED
            .iter()
            .map(|m| SupportedMethod {
                method_name: m.method.to_ascii_lowercase(),
                service_name: m.service.to_ascii_lowercase(),
                features: m.features.iter().map(|f| f.to_string()).collect(),
            })
            .collect(),
        event_store_server_version: SERVER_VERSION.to_string(),
    }
}

#[tonic::async_trait]
impl ServerFeatures for ServerFeaturesService {
    async fn get_supported_methods(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<SupportedMethods>, Status> {
        crate::caller::principal(&request)?;
        Ok(Response::new(supported_methods()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_exactly_the_table_in_lower_case() {
        let answer = supported_methods();
        assert_eq!(answer.methods.len(), SUPPORTED.len());
        assert!(answer.methods.iter().any(|m| {
            m.service_name == "event_store.client.gossip.gossip" && m.method_name == "read"
        }));
        assert!(answer.methods.iter().any(|m| {
            m.service_name == "event_store.client.streams.streams" && m.method_name == "batchappend"
        }));
        assert!(answer.methods.iter().any(|m| {
            m.service_name.ends_with(".persistentsubscriptions") && m.method_name == "replayparked"
        }));
        assert!(
            !answer
                .methods
                .iter()
                .any(|m| m.service_name.ends_with(".projections"))
        );
        assert_eq!(answer.event_store_server_version, SERVER_VERSION);
    }
}

//! The gRPC statuses Herald answers with. KurrentDB's clients decide on the status
//! code and, for some errors, on trailers (`exception: ...`) or `grpc-status-details-bin`;
//! the Streams work maps broker errors onto those here.

use tonic::Status;

/// A service or method Herald does not implement: the clients turn `UNIMPLEMENTED`
/// into an error at once (never a retry or a hang).
pub fn not_implemented(what: &str) -> Status {
    Status::unimplemented(format!("Herald does not implement {what}"))
}

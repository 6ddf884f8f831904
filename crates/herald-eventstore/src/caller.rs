//! Who makes a request. The connection layer (`server.rs`) attaches a `Caller` to
//! every request before any service sees it, and every handler starts with
//! `caller::principal(&request)?`, so authentication (the `authorization: Basic` header
//! KurrentDB's clients send with credentials, or a TLS client certificate) and
//! authorisation land here, once, with the security work.

use std::net::SocketAddr;

use herald_broker::Principal;
use tonic::codegen::http;

/// Attached to each request's extensions by the connection that read it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub peer: SocketAddr,
    /// The host part of the request's `:authority`, as the client addressed us.
    pub authority_host: Option<String>,
}

impl Caller {
    /// The caller of a request with these headers from `peer`. Insecure mode, as
    /// KurrentDB's `--insecure`: everyone is anonymous and credentials are not read
    /// (the clients do not send them without TLS).
    pub fn of<B>(request: &http::Request<B>, peer: SocketAddr) -> Caller {
        Caller {
            principal: Principal::anonymous(),
            peer,
            authority_host: request
                .uri()
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string()),
        }
    }
}

/// The principal of a request. A request that did not come through a connection of
/// this crate has none: refused rather than taken as anonymous.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| c.principal.clone())
        .ok_or_else(|| tonic::Status::unauthenticated("no caller attached to this request"))
}

//! The bodies of the responses the relay makes itself: the body type every
//! front response has, JSON, and Docker-style errors.

use bytes::Bytes;
use http::header;
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// The response body type of every front response.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A response with a whole body of `content_type`.
pub fn whole(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body).map_err(|never| match never {}).boxed())
        .expect("static response parts are valid")
}

/// A JSON response.
pub fn json(status: StatusCode, body: String) -> Response<Body> {
    whole(status, "application/json", Bytes::from(body))
}

/// A Docker-style error: the `docker` CLI prints `message`.
pub fn docker_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, tunnelgate_proto::docker_api::error_body(message))
}

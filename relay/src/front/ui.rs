//! The dashboard's static files at `/ui/`: built into the binary, served
//! to anyone (they hold no data), with a policy that lets the page load
//! nothing but itself. The data it shows comes from the API with the
//! caller's own credentials ([`super::nodes`], the Docker path,
//! `/v1/tokens`), so a tenant sees only its nodes. No CDN, works offline.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::respond::{whole, Body};

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// The dashboard's answer to `path`, if it is one of its.
pub fn serve(path: &str) -> Option<Response<Body>> {
    let (content_type, text) = match path {
        "/" | "/ui" => {
            let mut resp = whole(StatusCode::FOUND, "text/plain", Bytes::from("see /ui/\n"));
            resp.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
            return Some(resp);
        }
        "/ui/" | "/ui/index.html" => ("text/html; charset=utf-8", INDEX),
        "/ui/app.js" => ("text/javascript; charset=utf-8", APP),
        "/ui/style.css" => ("text/css; charset=utf-8", STYLE),
        _ => return None,
    };
    let mut resp = whole(
        StatusCode::OK,
        content_type,
        Bytes::from_static(text.as_bytes()),
    );
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(resp)
}

//! The API request path below hyper: the route table (`api::router::resolve`), the body parsers
//! and validators (`Route::build`), and the config-file parser, from raw HTTP/1.1 bytes (parsed
//! with `httparse`, the parser hyper uses) or from a (method, path, body) triple.
//!
//! Input: byte 0 bit 0 clear = a raw request (request line and headers, then the body); set =
//! method, path and body separated by the first two NUL bytes. Any other bytes of byte 0 are
//! ignored.
//!
//! Checks: no 5xx (every route has a handler, nothing is an internal error); an error is one of
//! the documented 400/404/405; an accepted body re-validates and survives a JSON round trip; an
//! accepted config file survives one too.

use api::router::{resolve, Endpoint};
use api::types::parse_body;
use api::{parse_config_file, ApiError, ApiRequest, Validate};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Input;

/// Runs one input.
pub fn run(data: &[u8]) {
    outcome(data);
}

/// Runs one input; what it did, in a few words (the stable harness counts these).
pub fn outcome(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let structured = input.u8() & 1 != 0;
    let rest = input.rest();
    let (method, path, body): (String, String, &[u8]) = if structured {
        let mut parts = rest.splitn(3, |b| *b == 0);
        let method = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        (method, path, parts.next().unwrap_or_default())
    } else {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(rest) {
            Ok(httparse::Status::Complete(n)) => {
                let method = req.method.unwrap_or_default().to_string();
                // hyper routes on the URI's path: the target without its query string.
                let target = req.path.unwrap_or_default();
                let path = target
                    .split(['?', '#'])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                (method, path, &rest[n..])
            }
            _ => return "not a complete HTTP request".into(),
        }
    };

    let label = match resolve(&method, &path).and_then(|r| r.build(body)) {
        Ok(Endpoint::Vmm(req)) => {
            revalidate(&req);
            let name = format!("{req:?}");
            format!("ok {}", name.split(['(', ' ']).next().unwrap_or_default())
        }
        Ok(e @ (Endpoint::Version | Endpoint::OpenApi)) => format!("ok {e:?}"),
        Err(e) => {
            assert!(
                matches!(e.status(), 400 | 404 | 405),
                "{method} {path}: {} {e}",
                e.status()
            );
            assert!(!matches!(e, ApiError::Internal(_)), "{method} {path}: {e}");
            format!("error {}", e.status())
        }
    };

    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(config) = parse_config_file(text) {
            assert!(config.validate().is_ok());
            // `GET /vm/config` answers with the configuration "as a config file".
            let json = serde_json::to_string(&config).unwrap();
            let again = parse_config_file(&json);
            assert_eq!(again.as_ref().ok(), Some(&config), "{json} -> {again:?}");
            let _ = config.into_requests();
            return format!("{label}, config file ok");
        }
    }
    label
}

/// A body that was accepted validates again, and its JSON (as `GET`s answer it) is accepted as
/// the same value.
fn revalidate(req: &ApiRequest) {
    match req {
        ApiRequest::PutMachineConfig(c) => round_trip(c),
        ApiRequest::PutBootSource(b) => round_trip(b),
        ApiRequest::PutDsa(_, d) => round_trip(d),
        ApiRequest::Action(a) => round_trip(a),
        ApiRequest::PutLogger(l) => round_trip(l),
        _ => {}
    }
}

fn round_trip<T>(value: &T)
where
    T: Validate + Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    assert!(value.validate().is_ok(), "{value:?}");
    let json = serde_json::to_vec(value).unwrap();
    let again = parse_body::<T>(&json);
    assert_eq!(again.as_ref().ok(), Some(value), "{value:?} -> {again:?}");
}

//! The route table and the mapping from (method, path, body) to an [`Endpoint`].
//!
//! [`ROUTES`] is the single list of paths and methods; the router is driven by it and a
//! unit test in `openapi.rs` checks that it and `api/openapi.json` describe the same API.
//! Resolution happens in two steps so that 404 and 405 are answered before a body is read:
//! [`resolve`] (method + path) and [`Route::build`] (body).

use crate::request::ApiRequest;
use crate::types::{
    parse_body, validate_id, Action, BootSource, DsaDeviceConfig, LoggerConfig, MachineConfig,
};
use crate::ApiError;

/// A path template and the methods it accepts. `{id}` matches one non-empty segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// Path template, as in the OpenAPI document.
    pub path: &'static str,
    /// Accepted methods (upper case).
    pub methods: &'static [&'static str],
}

/// Every route the server answers.
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        path: "/",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/version",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/openapi.json",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/vm/config",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/machine-config",
        methods: &["GET", "PUT"],
    },
    RouteSpec {
        path: "/boot-source",
        methods: &["PUT"],
    },
    RouteSpec {
        path: "/dsa/{id}",
        methods: &["GET", "PUT", "DELETE"],
    },
    RouteSpec {
        path: "/actions",
        methods: &["PUT"],
    },
    RouteSpec {
        path: "/metrics",
        methods: &["GET"],
    },
    RouteSpec {
        path: "/logger",
        methods: &["PUT"],
    },
];

/// What a request resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /version`, answered by the API thread.
    Version,
    /// `GET /openapi.json`, answered by the API thread.
    OpenApi,
    /// Everything else goes to the VMM.
    Vmm(ApiRequest),
}

/// A matched route (method and path known to exist), before its body is parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The template that matched.
    pub path: &'static str,
    /// The method (one of the template's).
    pub method: &'static str,
    /// The `{id}` segment, if the template has one (already validated).
    pub id: Option<String>,
}

fn match_template(template: &str, path: &str) -> Option<Option<String>> {
    let mut id = None;
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg.to_string()),
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return None,
        }
    }
}

/// Finds the route for `method` and `path` (no query string). 404 when no template
/// matches, 405 (with the allowed methods) when the path exists without this method,
/// 400 when the `{id}` segment is not a valid id.
pub fn resolve(method: &str, path: &str) -> Result<Route, ApiError> {
    let (spec, id) = ROUTES
        .iter()
        .find_map(|spec| match_template(spec.path, path).map(|id| (spec, id)))
        .ok_or_else(|| ApiError::NotFound(format!("no such path: {path}")))?;
    let method =
        spec.methods
            .iter()
            .find(|m| **m == method)
            .ok_or_else(|| ApiError::MethodNotAllowed {
                method: method.to_string(),
                path: path.to_string(),
                allow: spec.methods.join(", "),
            })?;
    if let Some(id) = &id {
        validate_id(id)?;
    }
    Ok(Route {
        path: spec.path,
        method,
        id,
    })
}

impl Route {
    /// Parses the body (for PUTs) and builds the endpoint. Bodies of GET and DELETE are
    /// ignored.
    pub fn build(self, body: &[u8]) -> Result<Endpoint, ApiError> {
        let id = || {
            self.id
                .clone()
                .ok_or_else(|| ApiError::Internal("route without id".into()))
        };
        let req = match (self.method, self.path) {
            ("GET", "/version") => return Ok(Endpoint::Version),
            ("GET", "/openapi.json") => return Ok(Endpoint::OpenApi),
            ("GET", "/") => ApiRequest::GetInstanceInfo,
            ("GET", "/vm/config") => ApiRequest::GetVmConfig,
            ("GET", "/machine-config") => ApiRequest::GetMachineConfig,
            ("PUT", "/machine-config") => {
                ApiRequest::PutMachineConfig(parse_body::<MachineConfig>(body)?)
            }
            ("PUT", "/boot-source") => ApiRequest::PutBootSource(parse_body::<BootSource>(body)?),
            ("GET", "/dsa/{id}") => ApiRequest::GetDsa(id()?),
            ("PUT", "/dsa/{id}") => ApiRequest::PutDsa(id()?, parse_body::<DsaDeviceConfig>(body)?),
            ("DELETE", "/dsa/{id}") => ApiRequest::DeleteDsa(id()?),
            ("PUT", "/actions") => ApiRequest::Action(parse_body::<Action>(body)?),
            ("GET", "/metrics") => ApiRequest::GetMetrics,
            ("PUT", "/logger") => ApiRequest::PutLogger(parse_body::<LoggerConfig>(body)?),
            (m, p) => {
                return Err(ApiError::Internal(format!(
                    "route {m} {p} is in ROUTES but has no handler"
                )))
            }
        };
        Ok(Endpoint::Vmm(req))
    }

    /// Whether this route reads a request body.
    pub fn has_body(&self) -> bool {
        self.method == "PUT"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ActionType;

    fn status(method: &str, path: &str, body: &str) -> u16 {
        match resolve(method, path).and_then(|r| r.build(body.as_bytes())) {
            Ok(_) => 200,
            Err(e) => e.status(),
        }
    }

    #[test]
    fn every_route_has_a_handler() {
        for spec in ROUTES {
            let path = spec.path.replace("{id}", "0");
            for m in spec.methods {
                let r = resolve(m, &path).unwrap();
                // PUTs with an empty body fail with 400, never with a 500 "no handler".
                let err = r.build(b"").err().map(|e| e.status());
                assert!(matches!(err, None | Some(400)), "{m} {path}: {err:?}");
            }
        }
    }

    #[test]
    fn errors() {
        assert_eq!(status("GET", "/nope", ""), 404);
        assert_eq!(status("GET", "/dsa", ""), 404);
        assert_eq!(status("GET", "/dsa/", ""), 404);
        assert_eq!(status("GET", "/dsa/0/x", ""), 404);
        assert_eq!(status("GET", "//", ""), 404);
        assert_eq!(status("GET", "/machine-config/", ""), 404);
        assert_eq!(status("GET", "/dsa/a.b", ""), 400);
        assert_eq!(status("POST", "/actions", ""), 405);
        assert_eq!(status("PUT", "/actions", "{}"), 400);
        match resolve("POST", "/dsa/0") {
            Err(ApiError::MethodNotAllowed { allow, .. }) => assert_eq!(allow, "GET, PUT, DELETE"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn builds_requests() {
        let e = resolve("PUT", "/actions")
            .unwrap()
            .build(br#"{"action_type":"InstanceStart"}"#)
            .unwrap();
        assert_eq!(
            e,
            Endpoint::Vmm(ApiRequest::Action(Action {
                action_type: ActionType::InstanceStart
            }))
        );
        let e = resolve("DELETE", "/dsa/x-1")
            .unwrap()
            .build(b"ignored")
            .unwrap();
        assert_eq!(e, Endpoint::Vmm(ApiRequest::DeleteDsa("x-1".into())));
        assert_eq!(
            resolve("GET", "/version").unwrap().build(b"").unwrap(),
            Endpoint::Version
        );
    }
}

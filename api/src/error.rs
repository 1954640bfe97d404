//! The one error type of the API crate.
//!
//! Every variant maps to exactly one HTTP status code ([`ApiError::status`]); the
//! message becomes the `fault_message` of the error body. The VMM answers a request
//! it refuses with one of the client-error variants (400, 404, 409); `Internal` is
//! reserved for VMM bugs and must never be produced for bad input.

use serde::{Deserialize, Serialize};

/// An API failure, with its HTTP status class.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed JSON, an unknown field, a value out of range, a bad file path.
    #[error("{0}")]
    BadRequest(String),
    /// 404: unknown path, or unknown resource id (e.g. `GET /dsa/7` with no such device).
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists but not with this method; `allow` lists the methods it has.
    #[error("method {method} is not allowed on {path} (allowed: {allow})")]
    MethodNotAllowed {
        /// The method the client used.
        method: String,
        /// The request path.
        path: String,
        /// The methods the path accepts, comma separated (the `Allow` header).
        allow: String,
    },
    /// 408: the client did not send its request body in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: the request is well formed but the VM's current state forbids it
    /// (e.g. `PUT /machine-config` after boot, `Pause` while not running).
    #[error("{0}")]
    Conflict(String),
    /// 413: the request body is larger than the server accepts.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The body limit in bytes.
        limit: usize,
    },
    /// 500: a VMM bug (it dropped a request, answered with the wrong kind of reply...).
    #[error("{0}")]
    Internal(String),
    /// 503: the VMM is not (or no longer) taking requests, e.g. while it exits.
    #[error("{0}")]
    Unavailable(String),
    /// A local I/O failure: creating the socket, connecting to it (server start / client).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed on the client side (connection reset, bad response...).
    #[error("HTTP transport error: {0}")]
    Transport(String),
    /// The server's thread-start hook failed (e.g. its seccomp filter could not be installed).
    #[error("API thread: {0}")]
    ThreadStart(String),
}

impl ApiError {
    /// The HTTP status code this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::RequestTimeout(_) => 408,
            ApiError::Conflict(_) => 409,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::Internal(_)
            | ApiError::Io { .. }
            | ApiError::Transport(_)
            | ApiError::ThreadStart(_) => 500,
            ApiError::Unavailable(_) => 503,
        }
    }

    /// Shorthand for an [`ApiError::Io`] with a context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ApiError::Io {
            context: context.into(),
            source,
        }
    }

    /// Rebuilds an error from an HTTP status and a response body on the client side.
    /// The body's `fault_message` is used when it is a [`Fault`], the raw body otherwise.
    pub fn from_response(status: u16, body: &str) -> Self {
        let message = serde_json::from_str::<Fault>(body)
            .map(|f| f.fault_message)
            .unwrap_or_else(|_| body.trim().to_string());
        match status {
            400 => ApiError::BadRequest(message),
            404 => ApiError::NotFound(message),
            405 => ApiError::MethodNotAllowed {
                method: String::new(),
                path: String::new(),
                allow: message,
            },
            408 => ApiError::RequestTimeout(message),
            409 => ApiError::Conflict(message),
            413 => ApiError::PayloadTooLarge { limit: 0 },
            503 => ApiError::Unavailable(message),
            _ => ApiError::Internal(format!("HTTP {status}: {message}")),
        }
    }

    /// The JSON error body, `{"fault_message": "..."}`.
    pub fn to_fault(&self) -> Fault {
        Fault {
            fault_message: self.to_string(),
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// A human-readable explanation of what was wrong.
    pub fault_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_fault_roundtrip() {
        let cases = [
            (ApiError::BadRequest("b".into()), 400),
            (ApiError::NotFound("n".into()), 404),
            (ApiError::Conflict("c".into()), 409),
            (ApiError::PayloadTooLarge { limit: 1 }, 413),
            (ApiError::Internal("i".into()), 500),
            (ApiError::Unavailable("u".into()), 503),
        ];
        for (err, status) in cases {
            assert_eq!(err.status(), status);
            let body = serde_json::to_string(&err.to_fault()).unwrap();
            let back = ApiError::from_response(status, &body);
            assert_eq!(back.status(), status);
        }
        let e = ApiError::from_response(409, r#"{"fault_message":"VM is running"}"#);
        assert_eq!(e.to_string(), "VM is running");
        let e = ApiError::from_response(502, "gateway");
        assert_eq!(e.status(), 500);
        assert!(e.to_string().contains("502"));
    }
}

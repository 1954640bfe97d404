//! The soak's API load: raw HTTP/1.1 over the UNIX socket (std only, so malformed requests can be
//! sent too), a fixed mix of good and bad requests on one keep-alive connection plus short-lived
//! connections, each answer's status (and, for the good ones, a piece of its body) checked.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one request may wait for its answer before it counts as unanswered.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One request of the mix.
struct Probe {
    /// The request bytes.
    raw: &'static str,
    /// The status it must get.
    status: u16,
    /// Text the body must contain (for the good requests).
    body_has: &'static str,
    /// Sent on a connection of its own (opened, used once, closed) instead of the keep-alive one.
    fresh: bool,
}

/// The mix, repeated: 6 good keep-alive requests, 1 good short-lived one, and 3 bad ones (an
/// unknown path, a wrong method, a malformed JSON body, and a request line that is not HTTP on a
/// connection of its own, which the server answers with 400 and closes).
const MIX: [Probe; 10] = [
    Probe {
        raw: "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
        status: 200,
        body_has: "dsavmm_dsa_descriptors_total",
        fresh: false,
    },
    Probe {
        raw: "GET /dsa/0 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        status: 200,
        body_has: "\"counters\"",
        fresh: false,
    },
    Probe {
        raw: "GET /machine-config HTTP/1.1\r\nHost: localhost\r\n\r\n",
        status: 200,
        body_has: "\"vcpus\"",
        fresh: false,
    },
    Probe {
        raw: "GET /no-such-path HTTP/1.1\r\nHost: localhost\r\n\r\n",
        status: 404,
        body_has: "",
        fresh: false,
    },
    Probe {
        raw: "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
        status: 200,
        body_has: "dsavmm_vcpu_direct_stores_total",
        fresh: false,
    },
    Probe {
        raw: "DELETE /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
        status: 405,
        body_has: "",
        fresh: false,
    },
    Probe {
        raw: "GET /dsa/0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        status: 200,
        body_has: "\"counters\"",
        fresh: true,
    },
    Probe {
        raw:
            "PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 9\r\n\r\n{\"vcpus\":",
        status: 400,
        body_has: "",
        fresh: false,
    },
    Probe {
        raw: "GET /machine-config HTTP/1.1\r\nHost: localhost\r\n\r\n",
        status: 200,
        body_has: "\"memory_mib\"",
        fresh: false,
    },
    Probe {
        raw: "NOT-HTTP\r\n\r\n",
        status: 400,
        body_has: "",
        fresh: true,
    },
];

/// What the load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiCounts {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered with the expected status (and body).
    pub answered: u64,
    /// Requests with no (complete) answer.
    pub unanswered: u64,
    /// Requests answered with another status or body.
    pub unexpected: u64,
    /// Of the sent requests, those on a short-lived connection.
    pub short_lived: u64,
    /// Of the sent requests, those that must be refused (4xx).
    pub bad: u64,
    /// The first problem, for the report.
    pub first_problem: Option<String>,
}

/// A parsed answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The server closes the connection after it (`Connection: close`).
    pub close: bool,
    /// The body (lossily decoded).
    pub body: String,
}

/// Reads one HTTP/1.1 response with a `Content-Length` (the server sends no chunked bodies).
pub fn read_answer(r: &mut impl BufRead) -> io::Result<Answer> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no HTTP/1.1 status line"))?;
    let (mut length, mut close) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("headers cut short"));
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        let Some((name, value)) = h.split_once(':') else {
            return Err(bad("malformed header"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| bad("bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("unexpected Transfer-Encoding"));
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok(Answer {
        status,
        close,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn connect(sock: &Path) -> io::Result<BufReader<UnixStream>> {
    let s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    s.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    Ok(BufReader::new(s))
}

fn exchange(conn: &mut BufReader<UnixStream>, raw: &str) -> io::Result<Answer> {
    conn.get_mut().write_all(raw.as_bytes())?;
    read_answer(conn)
}

/// One request on a connection of its own: `method path` with an optional JSON body.
pub fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> io::Result<Answer> {
    let body = body.unwrap_or_default();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(&mut connect(sock)?, &raw)
}

/// Sends the mix round-robin until `stop` is set (checked before each request), back to back:
/// one request in flight at a time.
pub fn load(sock: &Path, stop: &AtomicBool) -> ApiCounts {
    let mut c = ApiCounts::default();
    let mut keep: Option<BufReader<UnixStream>> = None;
    let mut i = 0usize;
    while !stop.load(Ordering::Acquire) {
        let Some(p) = MIX.get(i % MIX.len()) else {
            break;
        };
        i += 1;
        c.sent += 1;
        c.short_lived += u64::from(p.fresh);
        c.bad += u64::from(p.status >= 400);
        let answer = if p.fresh {
            connect(sock).and_then(|mut s| exchange(&mut s, p.raw))
        } else {
            let conn = match keep.take() {
                Some(s) => Ok(s),
                None => connect(sock),
            };
            conn.and_then(|mut s| {
                let a = exchange(&mut s, p.raw)?;
                if !a.close {
                    keep = Some(s);
                }
                Ok(a)
            })
        };
        let first_line = p.raw.lines().next().unwrap_or_default();
        match answer {
            Ok(a) if a.status == p.status && a.body.contains(p.body_has) => c.answered += 1,
            Ok(a) => {
                c.unexpected += 1;
                c.first_problem.get_or_insert_with(|| {
                    let start: String = a.body.chars().take(200).collect();
                    format!(
                        "{first_line}: status {} (want {}): {start}",
                        a.status, p.status
                    )
                });
            }
            Err(e) => {
                c.unanswered += 1;
                c.first_problem
                    .get_or_insert_with(|| format!("{first_line}: no answer: {e}"));
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> io::Result<Answer> {
        read_answer(&mut io::Cursor::new(text.as_bytes()))
    }

    #[test]
    fn reads_answers() {
        let a = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: x\r\n\r\nhelloNEXT")
            .unwrap();
        assert_eq!(
            a,
            Answer {
                status: 200,
                close: false,
                body: "hello".into()
            }
        );
        let a = parse("HTTP/1.1 400 Bad Request\r\nConnection: close\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        assert_eq!((a.status, a.close, a.body.as_str()), (400, true, ""));
        // No Content-Length: an empty body.
        assert_eq!(
            parse("HTTP/1.1 204 No Content\r\n\r\n").unwrap().status,
            204
        );
    }

    #[test]
    fn rejects_broken_answers() {
        for text in [
            "",
            "HTTP/1.0 200 OK\r\n\r\n",
            "HTTP/1.1 2x0 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort",
            "HTTP/1.1 200 OK\r\ncontent-length: 1",
            "HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn the_mix_is_well_formed() {
        for p in &MIX {
            let (head, body) = p.raw.split_once("\r\n\r\n").expect("head ends");
            if let Some(n) = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
            {
                assert_eq!(n.parse::<usize>().unwrap(), body.len(), "{}", p.raw);
            } else {
                assert!(body.is_empty(), "{}", p.raw);
            }
            assert_eq!(p.body_has.is_empty(), p.status >= 400);
        }
        assert!(MIX.iter().any(|p| p.fresh && p.status == 200));
    }
}

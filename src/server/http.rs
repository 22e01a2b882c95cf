//! HTTP/1.1 on httparse: request parsing with limits, responses, CORS and the pluggable [`Router`].
//!
//! Parsing is check-then-parse: "not enough bytes yet" is a normal outcome ([`Parsed::Partial`]), a bad request
//! is a [`HttpError`] that becomes exactly one JSON error response and closes that connection only.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use super::config::ServerConfig;
use super::runtime::ShardCtx;

/// A parsed HTTP request with its body.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path without the query string, e.g. `/socket.io/`.
    pub path: String,
    /// Raw query string without `?` (may be empty).
    pub query: String,
    /// Headers with lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    /// The body (Content-Length bytes).
    pub body: Vec<u8>,
    /// `true` for HTTP/1.1 (`false` for 1.0).
    pub http11: bool,
}

impl Request {
    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Percent-decoded value of the first query parameter `key`.
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == key).then(|| percent_decode(v))
        })
    }

    /// Does the client want the connection kept open after this request?
    pub fn keep_alive(&self) -> bool {
        let conn = self.header("connection").map(|v| v.to_ascii_lowercase());
        match conn {
            Some(v) if v.split(',').any(|t| t.trim() == "close") => false,
            Some(v) if v.split(',').any(|t| t.trim() == "keep-alive") => true,
            _ => self.http11,
        }
    }

    /// Is this a websocket upgrade request?
    pub fn is_websocket_upgrade(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers (Content-Length, Connection and CORS are added by the server).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body and a content type.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }
    /// `text/plain; charset=UTF-8`.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status, "text/plain; charset=UTF-8", body)
    }
    /// `application/json`.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response::new(status, "application/json", value.to_string())
    }
    /// The JSON error body every error answer uses: `{"code":<status>,"message":"..."}` (see [`error_response`]).
    pub fn error(status: u16, message: &str) -> Self {
        error_response(status, status, message)
    }
    /// Add a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The only place that builds the body of an error answer: `{"code":<code>,"message":"<message>"}`, encoded by
/// `proto` ([`crate::proto::engine::error_body`]). Plain HTTP errors use their status as `code`; Engine.IO's
/// errors use the reference server's codes (`1`: "Session ID unknown").
pub fn error_response(status: u16, code: u16, message: &str) -> Response {
    Response::new(
        status,
        "application/json",
        crate::proto::engine::error_body(code, message),
    )
}

/// CORS preflight answer.
pub fn preflight(req: &Request) -> Response {
    let mut r = Response {
        status: 204,
        headers: Vec::new(),
        body: Vec::new(),
    };
    r.headers.push((
        "Access-Control-Allow-Methods".into(),
        "GET, POST, PUT, PATCH, DELETE, OPTIONS".into(),
    ));
    if let Some(h) = req.header("access-control-request-headers") {
        r.headers
            .push(("Access-Control-Allow-Headers".into(), h.to_string()));
    }
    r.headers
        .push(("Access-Control-Max-Age".into(), "600".into()));
    r
}

/// What a request handler did with the connection.
pub(crate) enum Next {
    /// Send this response, then continue if keep-alive.
    Respond(Response),
    /// Send this response and close.
    RespondClose(Response),
    /// The connection was taken over (websocket, handed to another shard) or must simply close.
    Done,
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Serialize a response (adds Content-Length, Connection and the CORS headers for `origin`).
pub fn write_response(
    out: &mut Vec<u8>,
    resp: &Response,
    keep_alive: bool,
    origin: Option<&str>,
    cfg: &ServerConfig,
) {
    write_head(out, resp, keep_alive, origin, cfg);
    out.extend_from_slice(&resp.body);
}

/// What [`write_response`] writes before the body (status line and headers), so that a large body can be written
/// from the response itself instead of being copied behind its head.
pub fn write_head(
    out: &mut Vec<u8>,
    resp: &Response,
    keep_alive: bool,
    origin: Option<&str>,
    cfg: &ServerConfig,
) {
    use std::io::Write;
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    match origin.map(|o| (o, cors_match(cfg, o))) {
        Some((origin, CorsMatch::Listed)) => {
            let _ = write!(
                out,
                "Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n"
            );
            if cfg.cors_credentials {
                out.extend_from_slice(b"Access-Control-Allow-Credentials: true\r\n");
            }
        }
        // Any origin may read the answer, but never with the user's cookies: a wildcard (reflected) origin never
        // gets `Allow-Credentials`, or every site on the web could make credentialed requests as the user.
        Some((_, CorsMatch::Wildcard)) => {
            out.extend_from_slice(b"Access-Control-Allow-Origin: *\r\n");
        }
        Some((_, CorsMatch::No)) | None => {}
    }
    let _ = write!(out, "Content-Length: {}\r\n", resp.body.len());
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
}

/// How an `Origin` matches the CORS configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorsMatch {
    /// Listed by name in `cors_allowed_origins`: may get `Access-Control-Allow-Credentials`.
    Listed,
    /// Allowed only through `*`: never with credentials.
    Wildcard,
    /// Not allowed.
    No,
}

/// How `origin` matches the CORS configuration.
pub fn cors_match(cfg: &ServerConfig, origin: &str) -> CorsMatch {
    if cfg.cors_allowed_origins.iter().any(|o| o == origin) {
        CorsMatch::Listed
    } else if cfg.cors_allowed_origins.iter().any(|o| o == "*") {
        CorsMatch::Wildcard
    } else {
        CorsMatch::No
    }
}

/// Is `origin` allowed by the CORS configuration?
pub fn origin_allowed(cfg: &ServerConfig, origin: &str) -> bool {
    cors_match(cfg, origin) != CorsMatch::No
}

/// Why a request could not be parsed; each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Malformed request line or headers.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// Request line + headers exceed `http_head_bytes_max` or `http_headers_count_max`.
    #[error("request headers too large")]
    HeadTooLarge,
    /// Request target longer than `http_uri_bytes_max`.
    #[error("request URI too long")]
    UriTooLong,
    /// Body larger than allowed.
    #[error("request body too large")]
    BodyTooLarge,
    /// Bodies must use Content-Length (no chunked transfer encoding).
    #[error("Transfer-Encoding is not supported, send Content-Length")]
    ChunkedUnsupported,
}

impl HttpError {
    /// Status code of the answer.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::ChunkedUnsupported => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::UriTooLong => 414,
            HttpError::BodyTooLarge => 413,
        }
    }
}

/// Outcome of trying to parse a request from buffered bytes.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A full request; the number is how many buffered bytes it used.
    Complete(Request, usize),
}

/// Header slots parsed into a stack array (no allocation per parse) when `http_headers_count_max` is at most this.
const STACK_HEADERS_MAX: usize = 64;

/// Parse one request from `buf`. `body_max` bounds the Content-Length.
pub fn parse_request(buf: &[u8], cfg: &ServerConfig, body_max: usize) -> Result<Parsed, HttpError> {
    let count = cfg.http_headers_count_max;
    if count <= STACK_HEADERS_MAX {
        let mut headers = [httparse::EMPTY_HEADER; STACK_HEADERS_MAX];
        parse_into(buf, cfg, body_max, &mut headers[..count])
    } else {
        let mut headers = vec![httparse::EMPTY_HEADER; count];
        parse_into(buf, cfg, body_max, &mut headers)
    }
}

fn parse_into<'a>(
    buf: &'a [u8],
    cfg: &ServerConfig,
    body_max: usize,
    headers: &mut [httparse::Header<'a>],
) -> Result<Parsed, HttpError> {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > cfg.http_head_bytes_max {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(Parsed::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > cfg.http_head_bytes_max {
        return Err(HttpError::HeadTooLarge);
    }
    let target = req.path.unwrap_or("/");
    if target.len() > cfg.http_uri_bytes_max {
        return Err(HttpError::UriTooLong);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut hdrs = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<usize> = None;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).into_owned();
        if name == "content-length" {
            // Exactly one Content-Length of digits only: a second one, a sign or a list is how requests are
            // smuggled past a proxy that reads the framing differently.
            if content_length.is_some() {
                return Err(HttpError::Malformed("duplicate Content-Length".into()));
            }
            let digits = value.trim_matches([' ', '\t']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::Malformed("invalid Content-Length".into()));
            }
            // Too many digits to be a size: over any bound anyway.
            content_length = Some(digits.parse().unwrap_or(usize::MAX));
        }
        if name == "transfer-encoding" && !value.eq_ignore_ascii_case("identity") {
            return Err(HttpError::ChunkedUnsupported);
        }
        hdrs.push((name, value));
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > body_max {
        return Err(HttpError::BodyTooLarge);
    }
    if buf.len() < head_len + content_length {
        return Ok(Parsed::Partial);
    }
    let request = Request {
        method: req.method.unwrap_or("GET").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: hdrs,
        body: buf[head_len..head_len + content_length].to_vec(),
        http11: req.version == Some(1),
    };
    Ok(Parsed::Complete(request, head_len + content_length))
}

/// Boxed future returned by a [`Router`].
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response>>>;

/// REST routes an application plugs into the server. Called on the shard that received the request; return `None`
/// for paths you do not serve (the server then answers 404).
pub trait Router {
    /// Route one request.
    fn route(&self, shard: &Rc<ShardCtx>, request: Request) -> Option<ResponseFuture>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_at_every_split() {
        let cfg = ServerConfig::default();
        let raw = b"POST /a/b?x=1&y=a%20b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
        for split in 1..raw.len() {
            let first = parse_request(&raw[..split], &cfg, 100).unwrap();
            let end = 65;
            if split < end {
                assert!(matches!(first, Parsed::Partial), "split {split}");
            }
        }
        match parse_request(raw, &cfg, 100).unwrap() {
            Parsed::Complete(r, n) => {
                assert_eq!(n, 65);
                assert_eq!(r.path, "/a/b");
                assert_eq!(r.query_param("y").as_deref(), Some("a b"));
                assert_eq!(r.body, b"abc");
            }
            Parsed::Partial => panic!("complete request not parsed"),
        }
    }

    #[test]
    fn header_count_bound_on_the_stack_and_beyond_it() {
        let raw = |n: usize| {
            let mut r = String::from("GET / HTTP/1.1\r\n");
            for i in 0..n {
                r.push_str(&format!("X-H{i}: v\r\n"));
            }
            r.push_str("\r\n");
            r
        };
        for (max, n, ok) in [
            (2, 2, true),
            (2, 3, false),
            (64, 64, true),
            (64, 65, false),
            (100, 100, true),
            (100, 101, false),
        ] {
            let cfg = ServerConfig {
                http_headers_count_max: max,
                ..ServerConfig::default()
            };
            match parse_request(raw(n).as_bytes(), &cfg, 0) {
                Ok(Parsed::Complete(r, _)) => {
                    assert!(ok && r.headers.len() == n, "max {max}, {n} headers")
                }
                Err(e) => assert!(!ok && e.status() == 431, "max {max}, {n} headers: {e}"),
                Ok(Parsed::Partial) => panic!("max {max}, {n} headers: partial"),
            }
        }
    }

    #[test]
    fn limits() {
        let cfg = ServerConfig {
            http_uri_bytes_max: 10,
            ..ServerConfig::default()
        };
        let e = parse_request(b"GET /0123456789abc HTTP/1.1\r\n\r\n", &cfg, 0).unwrap_err();
        assert_eq!(e.status(), 414);
        let e =
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", &cfg, 10).unwrap_err();
        assert_eq!(e.status(), 413);
        let e = parse_request(b"\x00\x01garbage\r\n\r\n", &cfg, 10).unwrap_err();
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn content_length_must_be_one_number_of_digits() {
        let cfg = ServerConfig::default();
        for bad in [
            "Content-Length: 3\r\nContent-Length: 3\r\n",
            "Content-Length: 3\r\nContent-Length: 30\r\n",
            "Content-Length: +3\r\n",
            "Content-Length: -3\r\n",
            "Content-Length: 3,3\r\n",
            "Content-Length: 0x3\r\n",
            "Content-Length: \r\n",
            "Content-Length: 3 3\r\n",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: h\r\n{bad}\r\nabc");
            let e = parse_request(raw.as_bytes(), &cfg, 100).unwrap_err();
            assert_eq!(e.status(), 400, "{bad:?}");
        }
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(parse_request(raw, &cfg, 100).unwrap_err().status(), 413);
        let raw = b"POST / HTTP/1.1\r\nContent-Length:  3 \r\n\r\nabc";
        assert!(matches!(
            parse_request(raw, &cfg, 100).unwrap(),
            Parsed::Complete(r, _) if r.body == b"abc"
        ));
    }

    fn cors_headers(cfg: &ServerConfig, origin: &str) -> String {
        let mut out = Vec::new();
        write_response(&mut out, &Response::text(200, "x"), true, Some(origin), cfg);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn credentials_only_for_listed_origins() {
        let wildcard = ServerConfig::default();
        assert!(wildcard.cors_credentials);
        let h = cors_headers(&wildcard, "https://evil.example");
        assert!(h.contains("Access-Control-Allow-Origin: *\r\n"), "{h}");
        assert!(!h.contains("Credentials"), "{h}");
        assert!(!h.contains("evil"), "origin not reflected: {h}");

        let listed = ServerConfig {
            cors_allowed_origins: vec!["https://app.example".into(), "*".into()],
            ..ServerConfig::default()
        };
        let h = cors_headers(&listed, "https://app.example");
        assert!(
            h.contains("Access-Control-Allow-Origin: https://app.example\r\n"),
            "{h}"
        );
        assert!(
            h.contains("Access-Control-Allow-Credentials: true\r\n"),
            "{h}"
        );
        let h = cors_headers(&listed, "https://evil.example");
        assert!(!h.contains("Credentials") && !h.contains("evil"), "{h}");

        let only = ServerConfig {
            cors_allowed_origins: vec!["https://app.example".into()],
            ..ServerConfig::default()
        };
        let h = cors_headers(&only, "https://evil.example");
        assert!(!h.contains("Access-Control"), "{h}");
    }
}

//! A minimal HTTP/1.1 client on one keep-alive connection: enough for the REST contract and for Engine.IO
//! long-polling. Bodies by `Content-Length` or `chunked`; a `Connection: close` answer reconnects next time.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head or body accepted, bytes.
pub const RESPONSE_BYTES_MAX: usize = 16 << 20;

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
    /// The server asked to close the connection.
    pub close: bool,
}

/// One HTTP/1.1 connection to `addr`, reopened when the server closes it.
#[derive(Debug)]
pub struct HttpConn {
    addr: SocketAddr,
    host: String,
    source_ip: Option<std::net::Ipv4Addr>,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl HttpConn {
    /// A connection (opened lazily) to `addr`; the `Host` header is `host`.
    pub fn new(addr: SocketAddr, host: &str, source_ip: Option<std::net::Ipv4Addr>) -> HttpConn {
        HttpConn {
            addr,
            host: host.to_owned(),
            source_ip,
            stream: None,
            buf: Vec::new(),
        }
    }

    /// Sends one request and reads its response. `headers` are complete lines without CRLF.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);

        // A kept-alive connection the server closed in the meantime fails on first use: retry once on a new one.
        let fresh = self.stream.is_none();
        match self.round_trip(&bytes).await {
            Ok(r) => Ok(r),
            Err(_) if !fresh => {
                self.stream = None;
                self.round_trip(&bytes).await
            }
            Err(e) => Err(e),
        }
    }

    async fn round_trip(&mut self, bytes: &[u8]) -> io::Result<Response> {
        if self.stream.is_none() {
            self.stream = Some(crate::net::connect(self.addr, self.source_ip).await?);
            self.buf.clear();
        }
        let result = self.exchange(bytes).await;
        match &result {
            Ok(r) if !r.close => {}
            _ => self.stream = None,
        }
        result
    }

    async fn exchange(&mut self, bytes: &[u8]) -> io::Result<Response> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("not connected"))?;
        stream.write_all(bytes).await?;
        loop {
            if let Some((resp, used)) = parse_response(&self.buf)? {
                self.buf.drain(..used);
                return Ok(resp);
            }
            if self.buf.len() > RESPONSE_BYTES_MAX {
                return Err(io::Error::other("HTTP response too large"));
            }
            self.buf.reserve(8192);
            let n = stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the HTTP connection",
                ));
            }
        }
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Parses one whole response from the front of `buf`: `Ok(None)` until it has all arrived; otherwise the response
/// and how many bytes it took.
pub fn parse_response(buf: &[u8]) -> io::Result<Option<(Response, usize)>> {
    let Some(head_len) = crate::ws::head_end(buf) else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| bad("non-UTF-8 response head"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad HTTP status line"))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut close = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            content_length = Some(v.parse::<usize>().map_err(|_| bad("bad Content-Length"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    let rest = &buf[head_len..];
    if chunked {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let Some(eol) = rest[at..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let size_text =
                std::str::from_utf8(&rest[at..at + eol]).map_err(|_| bad("bad chunk size"))?;
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
            let data_start = at + eol + 2;
            if size == 0 {
                // Trailers are not used by any server under test: expect the final CRLF.
                if rest.len() < data_start + 2 {
                    return Ok(None);
                }
                return Ok(Some((
                    Response {
                        status,
                        body,
                        close,
                    },
                    head_len + data_start + 2,
                )));
            }
            if rest.len() < data_start + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&rest[data_start..data_start + size]);
            at = data_start + size + 2;
        }
    }
    // No length and not chunked: an empty body (all servers under test send lengths).
    let len = content_length.unwrap_or_default();
    if len > RESPONSE_BYTES_MAX {
        return Err(bad("HTTP body too large"));
    }
    if rest.len() < len {
        return Ok(None);
    }
    Ok(Some((
        Response {
            status,
            body: rest[..len].to_vec(),
            close,
        },
        head_len + len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &[u8], status: u16, body: &[u8]) {
        for cut in 0..raw.len() {
            assert!(parse_response(&raw[..cut]).unwrap().is_none(), "cut {cut}");
        }
        let (r, used) = parse_response(raw).unwrap().unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), used),
            (status, body, raw.len())
        );
    }

    #[test]
    fn content_length_and_chunked_bodies() {
        check(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            200,
            b"hello",
        );
        check(
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
            201,
            b"hello",
        );
        check(b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"");
    }
}

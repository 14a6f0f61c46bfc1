//! A minimal HTTP/1.1 server for tests (keep-alive, Content-Length bodies), over TLS or plain TCP.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: HashMap<String, String>,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json; charset=utf-8".into())],
            body: v.to_string().into_bytes(),
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

type BoxStream = Pin<Box<dyn AsyncReadWrite>>;
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> AsyncReadWrite for T {}

/// Serves `handler` on a fresh loopback port; `tls` wraps each connection.
pub async fn serve(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let stream: BoxStream = match tls {
                    Some(acc) => match acc.accept(tcp).await {
                        Ok(s) => Box::pin(s),
                        Err(_) => return,
                    },
                    None => Box::pin(tcp),
                };
                let _ = connection(stream, handler).await;
            });
        }
    });
    addr
}

fn boxed<'a>(
    f: impl Future<Output = std::io::Result<()>> + Send + 'a,
) -> Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + 'a>> {
    Box::pin(f)
}

async fn connection(stream: BoxStream, handler: Handler) -> std::io::Result<()> {
    boxed(async move {
        let mut r = BufReader::new(stream);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_owned();
            let target = parts.next().unwrap_or("").to_owned();
            let mut headers = HashMap::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).await?;
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).await?;
            let (path, q) = target.split_once('?').unwrap_or((&target, ""));
            let query = q
                .split('&')
                .filter(|s| !s.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            let req = Request { method, path: path.to_owned(), query, headers, body };
            let resp = handler(req);
            let mut out = format!("HTTP/1.1 {} X\r\ncontent-length: {}\r\n", resp.status, resp.body.len());
            for (k, v) in &resp.headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let w = r.get_mut();
            w.write_all(out.as_bytes()).await?;
            w.write_all(&resp.body).await?;
            w.flush().await?;
        }
    })
    .await
}

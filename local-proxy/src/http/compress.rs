//! Response compression: gzip, zstd or brotli (async-compression's encoders) chosen from the
//! request's `Accept-Encoding`, streamed frame by frame.
//!
//! Streaming: upstream frames that arrive back to back are fed to the encoder without a
//! flush (so they compress as one), and whenever the upstream has nothing more ready the
//! encoder is flushed (a sync flush: a complete, decodable prefix) and what it produced is
//! sent, so a slow or event-stream response reaches the client as it is made instead of
//! when the encoder's buffer fills.
//!
//! Left as they are: responses already `Content-Encoding`ed, of a type not in `types`
//! (images, video, archives, WOFF fonts), with a `Content-Length` below `min_length`,
//! marked `Cache-Control: no-transform`, partial (206), bodiless (HEAD, 204, 304), and
//! protocol switches. `Vary: Accept-Encoding` goes on every response of a compressible type,
//! compressed or not, so a cache never hands a compressed body to a client that did not ask.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::tokio::write::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use async_compression::Level;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWrite;

use super::body::{Body, BoxError};
use crate::config::middleware::{Compression, Encoding};
use crate::metrics::names;

/// Encoder output is sent once this much has gathered, even while input keeps coming.
const SEND_AT: usize = 32 * 1024;

/// The encoding to use for a request with these headers, if any: the highest q-value the
/// client gives one of ours (`*` covers those it does not name), ties to our order.
pub fn choose(request: &HeaderMap, cfg: &Compression) -> Option<Encoding> {
    let mut best: Option<(Encoding, u16)> = None;
    for enc in &cfg.encodings {
        let q = q_value(request, enc.token());
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((*enc, q));
        }
    }
    best.map(|(e, _)| e)
}

/// The client's q-value for `token`, in thousandths (0: not acceptable).
fn q_value(request: &HeaderMap, token: &str) -> u16 {
    let mut star = None;
    for item in
        request.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .next()
            .map(parse_q)
            .unwrap_or(1000);
        if name.eq_ignore_ascii_case(token) {
            return q;
        }
        if name == "*" {
            star = Some(q);
        }
    }
    star.unwrap_or(0)
}

/// `0.8` → 800; anything unreadable counts as 0 (not acceptable), as RFC 9110 qvalues are
/// at most three decimals between 0 and 1.
fn parse_q(s: &str) -> u16 {
    match s.trim().parse::<f32>() {
        Ok(q) if (0.0..=1.0).contains(&q) => (q * 1000.0).round() as u16,
        _ => 0,
    }
}

/// Whether `content_type` (a header value) is one of `types`.
fn compressible(content_type: &str, types: &[String]) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let Some((top, _)) = essence.split_once('/') else { return false };
    types.iter().any(|t| {
        if let Some(suffix) = t.strip_prefix("*+") {
            essence.ends_with(&format!("+{suffix}"))
        } else if let Some(t_top) = t.strip_suffix("/*") {
            t_top == top
        } else {
            *t == essence
        }
    })
}

/// Compress `resp` with `enc` (the request's choice) where the rules above allow; `site`
/// labels the metric.
pub fn apply(
    mut resp: Response<Body>,
    method: &Method,
    enc: Option<Encoding>,
    cfg: &Compression,
    site: &str,
) -> Response<Body> {
    let status = resp.status();
    if status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT)
    {
        return resp;
    }
    let headers = resp.headers_mut();
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return resp };
    if !compressible(ct, &cfg.types) {
        return resp;
    }
    if headers.get(header::CONTENT_ENCODING).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity")) {
        return resp;
    }
    add_vary(headers);
    let no_transform = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"));
    let small = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len < cfg.min_length);
    let Some(enc) = enc else { return resp };
    if no_transform || small || method == Method::HEAD {
        return resp;
    }
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc.token()));
    headers.remove(header::CONTENT_LENGTH);
    // Byte ranges of the identity body mean nothing in the encoded one.
    headers.remove(header::ACCEPT_RANGES);
    // A strong validator names exact bytes; these are different bytes (RFC 9110 8.8.1).
    if let Some(etag) = headers.get(header::ETAG).cloned() {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                headers.insert(header::ETAG, v);
            }
        }
    }
    metrics::counter!(names::HTTP_COMPRESSED, "site" => site.to_string(), "encoding" => enc.token()).increment(1);
    resp.map(|body| Compressed { inner: body, enc: Some(Encoder::new(enc)), dirty: false, trailers: None }.boxed())
}

/// `Vary: Accept-Encoding`, added to whatever Vary the upstream set.
fn add_vary(headers: &mut HeaderMap) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("accept-encoding"));
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// One encoder writing into a buffer we drain.
enum Encoder {
    Gzip(GzipEncoder<Vec<u8>>),
    Zstd(ZstdEncoder<Vec<u8>>),
    // Boxed: brotli's state is some 5.6 KB, the others' ~150 bytes.
    Brotli(Box<BrotliEncoder<Vec<u8>>>),
}

macro_rules! each {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            Encoder::Gzip($e) => $body,
            Encoder::Zstd($e) => $body,
            Encoder::Brotli($e) => $body,
        }
    };
}

/// Writing into a `Vec` never waits; a `Pending` would be a bug in the encoder, not a
/// reason to stall the response.
fn ready<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::Error::other("compression encoder would block writing to memory")),
    }
}

impl Encoder {
    fn new(enc: Encoding) -> Self {
        let out = Vec::new();
        match enc {
            // zlib's default level 6 and zstd's 3: the usual speed/size points of web servers.
            Encoding::Gzip => Encoder::Gzip(GzipEncoder::with_quality(out, Level::Default)),
            Encoding::Zstd => Encoder::Zstd(ZstdEncoder::with_quality(out, Level::Default)),
            // Brotli's own default (11) is for static assets compressed once; 4 is nginx's
            // and Caddy's choice for on-the-fly responses.
            Encoding::Brotli => Encoder::Brotli(Box::new(BrotliEncoder::with_quality(out, Level::Precise(4)))),
        }
    }

    fn write(&mut self, cx: &mut Context<'_>, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = each!(self, e => ready(Pin::new(e).poll_write(cx, data)))?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        Ok(())
    }

    fn flush(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        each!(self, e => ready(Pin::new(e).poll_flush(cx)))
    }

    fn finish(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        each!(self, e => ready(Pin::new(e).poll_shutdown(cx)))
    }

    fn pending(&mut self) -> usize {
        each!(self, e => e.get_mut().len())
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(each!(self, e => std::mem::take(e.get_mut())))
    }
}

/// The compressed body.
struct Compressed {
    inner: Body,
    /// `None` once the upstream body has ended and the encoder's trailer is out.
    enc: Option<Encoder>,
    /// Input written since the last flush.
    dirty: bool,
    /// The upstream's trailers, sent after the last data.
    trailers: Option<HeaderMap>,
}

impl HttpBody for Compressed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(enc) = this.enc.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        enc.write(cx, &data)?;
                        this.dirty = true;
                        if enc.pending() >= SEND_AT {
                            return Poll::Ready(Some(Ok(Frame::data(enc.take()))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    enc.finish(cx)?;
                    let out = enc.take();
                    this.enc = None;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Poll::Pending => {
                    // Nothing more ready upstream: send what can be decoded so far.
                    if this.dirty {
                        this.dirty = false;
                        enc.flush(cx)?;
                        let out = enc.take();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.enc.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::middleware::DEFAULT_COMPRESSIBLE_TYPES;

    fn cfg() -> Compression {
        Compression {
            encodings: vec![Encoding::Zstd, Encoding::Brotli, Encoding::Gzip],
            min_length: 1024,
            types: DEFAULT_COMPRESSIBLE_TYPES.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn negotiation_follows_q_values_then_our_order() {
        let c = cfg();
        assert_eq!(choose(&accept("gzip, deflate, br, zstd"), &c), Some(Encoding::Zstd));
        assert_eq!(choose(&accept("gzip, deflate"), &c), Some(Encoding::Gzip));
        assert_eq!(choose(&accept("zstd;q=0.5, gzip"), &c), Some(Encoding::Gzip));
        assert_eq!(choose(&accept("zstd;q=0, br;q=0, *"), &c), Some(Encoding::Gzip));
        assert_eq!(choose(&accept("identity"), &c), None);
        assert_eq!(choose(&accept("*;q=0"), &c), None);
        assert_eq!(choose(&HeaderMap::new(), &c), None);
    }

    #[test]
    fn types() {
        let t = cfg().types;
        assert!(compressible("text/html; charset=utf-8", &t));
        assert!(compressible("application/JSON", &t));
        assert!(compressible("image/svg+xml", &t));
        assert!(compressible("application/ld+json", &t));
        assert!(!compressible("image/png", &t));
        assert!(!compressible("application/zip", &t));
        assert!(!compressible("video/mp4", &t));
        assert!(!compressible("font/woff2", &t));
    }

    async fn roundtrip(enc: Encoding, chunks: Vec<&'static [u8]>) -> Vec<u8> {
        use futures_util::stream;
        use http_body_util::StreamBody;
        use tokio::io::AsyncReadExt;
        let frames = stream::iter(chunks.into_iter().map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c)))));
        let body = StreamBody::new(frames).boxed();
        let mut resp = Response::new(body);
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let resp = apply(resp, &Method::GET, Some(enc), &cfg(), "t");
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], enc.token());
        assert_eq!(resp.headers()[header::VARY], "accept-encoding");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let mut out = Vec::new();
        match enc {
            Encoding::Gzip => {
                async_compression::tokio::bufread::GzipDecoder::new(&bytes[..]).read_to_end(&mut out).await.unwrap()
            }
            Encoding::Zstd => {
                async_compression::tokio::bufread::ZstdDecoder::new(&bytes[..]).read_to_end(&mut out).await.unwrap()
            }
            Encoding::Brotli => {
                async_compression::tokio::bufread::BrotliDecoder::new(&bytes[..]).read_to_end(&mut out).await.unwrap()
            }
        };
        out
    }

    #[tokio::test]
    async fn each_encoding_round_trips() {
        let chunks: Vec<&'static [u8]> = vec![b"hello ", b"compressed ", b"world\n"];
        for enc in [Encoding::Gzip, Encoding::Zstd, Encoding::Brotli] {
            assert_eq!(roundtrip(enc, chunks.clone()).await, b"hello compressed world\n", "{enc:?}");
        }
    }

    #[test]
    fn left_alone() {
        let c = cfg();
        let resp = |ct: &str, extra: Option<(header::HeaderName, &'static str)>| {
            let mut r = Response::new(super::super::body::full("x".repeat(4096)));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            if let Some((n, v)) = extra {
                r.headers_mut().insert(n, HeaderValue::from_static(v));
            }
            r
        };
        let r = apply(resp("image/png", None), &Method::GET, Some(Encoding::Gzip), &c, "t");
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none() && r.headers().get(header::VARY).is_none());
        let r = apply(
            resp("text/html", Some((header::CONTENT_ENCODING, "br"))),
            &Method::GET,
            Some(Encoding::Gzip),
            &c,
            "t",
        );
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "br");
        let r = apply(
            resp("text/html", Some((header::CONTENT_LENGTH, "100"))),
            &Method::GET,
            Some(Encoding::Gzip),
            &c,
            "t",
        );
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(r.headers()[header::VARY], "accept-encoding");
        let r = apply(resp("text/html", None), &Method::GET, None, &c, "t");
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(r.headers()[header::VARY], "accept-encoding");
        let r = apply(resp("text/html", Some((header::ETAG, "\"abc\""))), &Method::GET, Some(Encoding::Gzip), &c, "t");
        assert_eq!(r.headers()[header::ETAG], "W/\"abc\"");
    }
}

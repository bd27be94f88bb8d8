//! Gives oversize messages gRPC's code for them, ResourceExhausted.
//!
//! tonic's codec reports a message over the size limit as OutOfRange, which
//! in Content.Write already means "wrong offset"; grpc-go (and so containerd)
//! answers ResourceExhausted. This layer rewrites that one status, in the
//! response headers (trailers-only replies) and in trailers (streams).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use tower::{Layer, Service};

const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

#[derive(Clone, Copy, Default)]
pub struct OversizeLayer;

impl<S> Layer<S> for OversizeLayer {
    type Service = Oversize<S>;
    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize(inner)
    }
}

#[derive(Clone)]
pub struct Oversize<S>(S);

impl<S, Req, ResBody> Service<http::Request<Req>> for Oversize<S>
where
    S: Service<http::Request<Req>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RemapBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Req>) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            remap(resp.headers_mut());
            Ok(resp.map(RemapBody))
        })
    }
}

/// A response body whose trailers get the same rewrite.
pub struct RemapBody<B>(B);

impl<B> Body for RemapBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.0).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(match frame.into_trailers() {
                Ok(mut trailers) => {
                    remap(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            }))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

fn remap(headers: &mut HeaderMap) {
    let oversize = headers.get("grpc-status").map(HeaderValue::as_bytes)
        == Some(OUT_OF_RANGE.as_bytes())
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.contains("length%20too%20large") || m.contains("length too large"));
    if oversize {
        headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_oversize_out_of_range_is_rewritten() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("Error,%20decoded%20message%20length%20too%20large"),
        );
        remap(&mut h);
        assert_eq!(h["grpc-status"], "8");

        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert("grpc-message", HeaderValue::from_static("write%20@5"));
        remap(&mut h);
        assert_eq!(h["grpc-status"], "11");
    }
}

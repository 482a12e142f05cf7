//! One socket write (one TLS record) per `Certify` answer.
//!
//! An answer is three HTTP/2 frames: HEADERS, one DATA frame with the leaf
//! and its chain (about 1.2 KiB), and the trailers. h2 copies a small DATA
//! payload into its write buffer beside the other frames, but keeps a large
//! one apart and must write it out (flushing the connection) before it
//! buffers the next frame; so every answer cost two writes, two TLS records
//! and two wake-ups of the peer. Over loopback, a write also pays for the
//! peer's receive path, so this was a tenth of the server's CPU per call.
//!
//! Two small pieces put the whole answer in one write:
//! - [`UnvectoredIo`] tells h2 the connection has no vectored writes: h2
//!   then copies DATA payloads under [`COPIED_DATA_FRAME`] bytes (instead
//!   of 256) and writes its buffer with one call. tokio-rustls seals one
//!   write into one record anyway, and a plain socket gets one `write`.
//! - [`SmallFrames`] cuts the response body's data into pieces of at most
//!   [`COPIED_DATA_FRAME`] bytes (no copy: `Bytes` are shared), so each
//!   becomes a DATA frame that h2 copies. gRPC messages may span DATA
//!   frames; every client reassembles them.
//!
//! Nothing about the answer changes but its framing: the same bytes, the
//! same status, the same trailers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::{Bytes, Service, http};

/// The largest DATA payload h2 copies into its write buffer when the
/// connection has no vectored writes (h2's threshold is 1024: at or above
/// it, a payload is written on its own).
pub const COPIED_DATA_FRAME: usize = 1023;

/// A connection that reports no vectored writes, so h2 gathers frames into
/// its own buffer and writes it with one call. Everything else is passed
/// through.
#[derive(Debug)]
pub struct UnvectoredIo<I>(pub I);

impl<I: AsyncRead + Unpin> AsyncRead for UnvectoredIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for UnvectoredIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// A response body whose data frames are at most [`COPIED_DATA_FRAME`]
/// bytes; trailers pass through unchanged.
#[derive(Debug)]
pub struct SmallFrames<B> {
    inner: B,
    /// What is left of a data frame that was cut.
    rest: Bytes,
}

impl<B> SmallFrames<B> {
    /// Cuts `inner`'s data frames.
    pub fn new(inner: B) -> Self {
        SmallFrames {
            inner,
            rest: Bytes::new(),
        }
    }
}

impl<B> Body for SmallFrames<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.rest.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return other,
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(COPIED_DATA_FRAME));
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

/// A service whose responses have [`SmallFrames`] bodies.
#[derive(Debug, Clone)]
pub struct SmallFramesService<S>(pub S);

impl<S, R, B> Service<http::Request<R>> for SmallFramesService<S>
where
    S: Service<http::Request<R>, Response = http::Response<B>>,
    S::Future: Unpin,
{
    type Response = http::Response<SmallFrames<B>>;
    type Error = S::Error;
    type Future = SmallFramesFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<R>) -> Self::Future {
        SmallFramesFuture(self.0.call(request))
    }
}

/// The future of [`SmallFramesService`].
#[derive(Debug)]
pub struct SmallFramesFuture<F>(F);

impl<F, B, E> std::future::Future for SmallFramesFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>> + Unpin,
{
    type Output = Result<http::Response<SmallFrames<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|result| result.map(|response| response.map(SmallFrames::new)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// A body of the given data frames, then trailers.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    async fn collect(mut body: SmallFrames<Frames>) -> (Vec<usize>, Vec<u8>, bool) {
        let mut sizes = Vec::new();
        let mut bytes = Vec::new();
        let mut trailers = false;
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(data) => {
                    sizes.push(data.len());
                    bytes.extend_from_slice(&data);
                }
                Err(frame) => trailers = frame.is_trailers(),
            }
        }
        assert!(body.is_end_stream());
        (sizes, bytes, trailers)
    }

    #[tokio::test]
    async fn data_is_cut_into_frames_h2_copies_and_trailers_pass_through() {
        let payload: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        for (case, frames, sizes) in [
            (
                "a 2500-byte message becomes 1023 + 1023 + 454",
                vec![Bytes::from(payload.clone())],
                vec![1023, 1023, 454],
            ),
            (
                "a small frame is left whole",
                vec![Bytes::from(payload[..100].to_vec())],
                vec![100],
            ),
            (
                "a frame of exactly the limit is left whole",
                vec![Bytes::from(payload[..1023].to_vec())],
                vec![1023],
            ),
            (
                "two frames are cut each on its own",
                vec![
                    Bytes::from(payload[..1100].to_vec()),
                    Bytes::from(payload[1100..1200].to_vec()),
                ],
                vec![1023, 77, 100],
            ),
        ] {
            let expected: Vec<u8> = frames.iter().flat_map(|b| b.to_vec()).collect();
            let mut all: std::collections::VecDeque<Frame<Bytes>> =
                frames.into_iter().map(Frame::data).collect();
            all.push_back(Frame::trailers(trailers.clone()));
            let body = SmallFrames::new(Frames(all));
            assert_eq!(body.size_hint().lower(), 0, "{case}");
            let (got_sizes, got, got_trailers) = collect(body).await;
            assert_eq!(got_sizes, sizes, "{case}");
            assert_eq!(got, expected, "{case}: the same bytes in the same order");
            assert!(got_trailers, "{case}: the trailers follow the data");
        }
    }

    /// A connection with vectored writes, which it forgets when wrapped.
    struct Vectored;

    impl AsyncWrite for Vectored {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }
    }

    #[test]
    fn the_connection_reports_no_vectored_writes() {
        assert!(Vectored.is_write_vectored());
        assert!(!UnvectoredIo(Vectored).is_write_vectored());
    }
}

//! How a response is classified, as Linkerd classifies it: by its HTTP
//! status, or for gRPC by the status in its headers or trailers, counted
//! once its body ends, breaks or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};
use hyper::{HeaderMap, StatusCode};

use super::connection::Exchange;

/// How a response went, as Linkerd classifies it.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Class {
    /// An HTTP response: a failure when 5xx.
    Http(StatusCode),
    /// A gRPC response: its status code, and whether that is a failure.
    Grpc { code: u16, failure: bool },
    /// No response, or the stream broke: `error` says why.
    Error(&'static str),
}

/// gRPC codes Linkerd counts as failures by default: UNKNOWN,
/// PERMISSION_DENIED, INTERNAL, UNAVAILABLE, DATA_LOSS, DEADLINE_EXCEEDED.
const GRPC_FAILURES: [u16; 6] = [2, 4, 7, 13, 14, 15];

impl Class {
    fn grpc(code: u16) -> Class {
        Class::Grpc {
            code,
            failure: GRPC_FAILURES.contains(&code),
        }
    }

    pub(super) fn is_failure(&self) -> bool {
        match self {
            Class::Http(status) => status.is_server_error(),
            Class::Grpc { failure, .. } => *failure,
            Class::Error(_) => true,
        }
    }
}

impl Exchange {
    /// The response's head arrived. It is counted when its body ends (or
    /// breaks, or is dropped), as Linkerd counts it: HTTP by status, gRPC
    /// by the status in the headers of a trailers-only response, else in
    /// the trailers.
    pub(crate) fn responded<B>(self, grpc: bool, response: &hyper::Response<B>) -> Pending {
        let status = response.status();
        let state = match (grpc, grpc_status(response.headers())) {
            (false, _) => Classified::Done(Class::Http(status)),
            (true, Some(code)) => Classified::Done(Class::grpc(code)),
            (true, None) => Classified::GrpcOpen,
        };
        Pending {
            exchange: Some(self),
            status,
            state,
            first_byte: false,
        }
    }
}

enum Classified {
    Done(Class),
    GrpcOpen,
}

/// A response whose class may still depend on its trailers.
pub(crate) struct Pending {
    exchange: Option<Exchange>,
    status: StatusCode,
    state: Classified,
    /// Whether the time to the first byte was recorded.
    first_byte: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("status", &self.status)
            .field("recorded", &self.exchange.is_none())
            .finish()
    }
}

impl Pending {
    /// The body's first frame arrived, or its end (an empty body): the
    /// response's latency, as Linkerd measures it (time to first byte).
    pub(super) fn first_byte(&mut self) {
        if !self.first_byte
            && let Some(exchange) = &self.exchange
        {
            self.first_byte = true;
            exchange.record_latency(self.status);
        }
    }

    fn finish(&mut self, class: Class) {
        if let Some(exchange) = self.exchange.take() {
            exchange.record(Some(self.status), class);
        }
    }

    /// The end of the body, with its trailers if any.
    pub(super) fn end(&mut self, trailers: Option<&HeaderMap>) {
        self.first_byte();
        let class = match self.state {
            Classified::Done(ref class) => class.clone(),
            Classified::GrpcOpen => match trailers.and_then(grpc_status) {
                Some(code) => Class::grpc(code),
                // A gRPC stream that ends without a status: UNKNOWN, which
                // Linkerd counts as a success here (it records
                // `Class::Grpc(Ok(Unknown))`).
                None => Class::Grpc {
                    code: 2,
                    failure: false,
                },
            },
        };
        self.finish(class);
    }

    pub(super) fn error(&mut self) {
        self.finish(Class::Error("unclassified"));
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // A body dropped before its end (the client went away) is
        // classified as if it ended there, as Linkerd does.
        self.end(None);
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A response body that classifies the response when it ends.
#[derive(Debug)]
pub(crate) struct ClassifiedBody<B> {
    inner: B,
    pending: Pending,
}

impl<B> ClassifiedBody<B> {
    pub(crate) fn new(inner: B, pending: Pending) -> Self {
        ClassifiedBody { inner, pending }
    }
}

impl<B> Body for ClassifiedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.pending.end(None),
            Some(Ok(frame)) => {
                this.pending.first_byte();
                if let Some(trailers) = frame.trailers_ref() {
                    this.pending.end(Some(trailers));
                }
            }
            Some(Err(_)) => this.pending.error(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

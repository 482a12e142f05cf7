//! HTTP requests on an inbound connection: each is decided by policy,
//! refused (403, 404, or their gRPC statuses) or sent on to the
//! application in the version it speaks, and its response counted.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use lanyard_policy::{Client, Decision, HttpRequest, Policy, Verdict, Workload};

use super::CLIENT_ID_HEADER;
use super::metrics::{ClassifiedBody, ConnectionMetrics};
use super::upstream::Upstream;

type Body = BoxBody<Bytes, hyper::Error>;

fn full(text: &'static str) -> Body {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

/// What serves the requests of one inbound connection.
pub(super) struct HttpService {
    pub(super) client: Client,
    /// The verified identity as the `l5d-client-id` value, made once.
    pub(super) client_id: Option<hyper::header::HeaderValue>,
    pub(super) port: u16,
    pub(super) policy: Arc<ArcSwap<Policy>>,
    pub(super) workload: Arc<Workload>,
    pub(super) metrics: ConnectionMetrics,
    pub(super) upstream: Upstream,
}

impl HttpService {
    pub(super) async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let (decision, declared) = {
            let request = HttpRequest {
                path: req.uri().path(),
                method: req.method().as_str(),
            };
            let policy = self.policy.load();
            let decision =
                policy.authorize(&self.workload, self.port, &self.client, Some(&request));
            let declared = app_protocol(
                policy.server_protocol(&self.workload, self.port),
                req.version(),
            );
            (decision, declared)
        };
        let exchange = self.metrics.http_decision(&decision);
        let grpc = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let Some(exchange) = exchange else {
            return refuse(&decision, grpc);
        };
        if decision.audit {
            tracing::info!(identity = ?self.client.identity, path = req.uri().path(), "audit: would be denied");
        }
        // The application learns the verified identity, and only that.
        let headers = req.headers_mut();
        match &self.client_id {
            Some(value) => {
                headers.insert(CLIENT_ID_HEADER, value.clone());
            }
            None => {
                headers.remove(CLIENT_ID_HEADER);
            }
        }
        let client_version = req.version();
        match declared {
            AppProtocol::Http1 if client_version == hyper::Version::HTTP_2 => {
                h2_to_h1(&mut req);
            }
            AppProtocol::Http2 if client_version != hyper::Version::HTTP_2 => {
                strip_hop_by_hop(req.headers_mut());
                *req.version_mut() = hyper::Version::HTTP_2;
            }
            _ => {}
        }
        let sent = match declared {
            AppProtocol::Http1 => {
                // Origin-form, as HTTP/1 sends to a server; a request
                // without `Host` (HTTP/1.0) names the application.
                if req.uri().authority().is_some() || req.uri().scheme().is_some() {
                    let Some(target) = req.uri().path_and_query().cloned() else {
                        return status(StatusCode::BAD_REQUEST, "bad request target\n");
                    };
                    *req.uri_mut() = hyper::Uri::from(target);
                }
                if !req.headers().contains_key(hyper::header::HOST) {
                    req.headers_mut()
                        .insert(hyper::header::HOST, self.upstream.host().clone());
                }
                self.upstream.http1(req).await
            }
            AppProtocol::Http2 => {
                let Some(uri) = self.upstream.absolute_form(req.uri()) else {
                    return status(StatusCode::BAD_REQUEST, "bad request target\n");
                };
                *req.uri_mut() = uri;
                self.upstream.http2(req).await
            }
        };
        match sent {
            Ok(mut response) => {
                let h2 = |v: hyper::Version| v == hyper::Version::HTTP_2;
                if h2(response.version()) != h2(client_version) {
                    // An HTTP/1 response's connection fields mean nothing
                    // on the client's HTTP/2 connection (and are illegal
                    // there); the reverse needs nothing.
                    if h2(client_version) {
                        strip_hop_by_hop(response.headers_mut());
                    }
                    *response.version_mut() = client_version;
                }
                let pending = exchange.responded(grpc, &response);
                response.map(|b| ClassifiedBody::new(b, pending).boxed())
            }
            Err(error) => {
                exchange.failed();
                tracing::warn!(%error, "the application did not answer");
                status(StatusCode::BAD_GATEWAY, "the application did not answer\n")
            }
        }
    }
}

/// The HTTP version the application is spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppProtocol {
    Http1,
    Http2,
}

/// What the application speaks, as Linkerd decides it: the Server's
/// `proxyProtocol` when it names an HTTP version (`HTTP/1`: HTTP/1.1
/// whatever the client spoke; `HTTP/2` and `gRPC`: HTTP/2), else the
/// client's own version.
fn app_protocol(declared: Option<&str>, client: hyper::Version) -> AppProtocol {
    match declared {
        Some("HTTP/1") => AppProtocol::Http1,
        Some("HTTP/2" | "gRPC") => AppProtocol::Http2,
        _ if client == hyper::Version::HTTP_2 => AppProtocol::Http2,
        _ => AppProtocol::Http1,
    }
}

/// Turns an HTTP/2 request into an HTTP/1.1 one: `:authority` becomes the
/// `Host` header (HTTP/1.1 requires one; the request target sent is
/// origin-form), and split `cookie` fields are joined as HTTP/1 wants them.
fn h2_to_h1<B>(req: &mut Request<B>) {
    *req.version_mut() = hyper::Version::HTTP_11;
    if !req.headers().contains_key(hyper::header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(host) = authority.as_str().parse()
    {
        req.headers_mut().insert(hyper::header::HOST, host);
    }
    let headers = req.headers_mut();
    if headers.get_all(hyper::header::COOKIE).iter().count() > 1 {
        let joined: Vec<&[u8]> = headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if let Ok(value) = hyper::header::HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            headers.insert(hyper::header::COOKIE, value);
        }
    }
}

/// Removes the connection-specific fields HTTP/2 forbids: those named by
/// `Connection`, and `Connection`, `Keep-Alive`, `Proxy-Connection`,
/// `Transfer-Encoding`, `Upgrade`, and `TE` other than `trailers`.
fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<hyper::header::HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| name.trim().parse().ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
    let te_trailers_only = headers
        .get_all(hyper::header::TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers_only {
        headers.remove(hyper::header::TE);
    }
}

fn status(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = code;
    response
}

/// 403 for HTTP, gRPC status 7 (`PERMISSION_DENIED`) in a trailers-only
/// response for gRPC; 404 / gRPC 12 when no route matches.
fn refuse(decision: &Decision, grpc: bool) -> Response<Body> {
    let no_route = decision.verdict == Verdict::NoRoute;
    if grpc {
        let mut response = Response::new(full(""));
        let headers = response.headers_mut();
        headers.insert(
            hyper::header::CONTENT_TYPE,
            "application/grpc".parse().expect("valid"),
        );
        headers.insert(
            "grpc-status",
            if no_route { "12" } else { "7" }.parse().expect("valid"),
        );
        headers.insert(
            "grpc-message",
            if no_route {
                "no route"
            } else {
                "unauthorized to access this server"
            }
            .parse()
            .expect("valid"),
        );
        response
    } else if no_route {
        status(StatusCode::NOT_FOUND, "no route\n")
    } else {
        status(
            StatusCode::FORBIDDEN,
            "forbidden: unauthorized to access this server\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_application_is_spoken_to_in_the_servers_protocol_else_the_clients() {
        use hyper::Version;
        let cases = [
            (
                "HTTP/1 turns HTTP/2 into HTTP/1.1",
                Some("HTTP/1"),
                Version::HTTP_2,
                AppProtocol::Http1,
            ),
            (
                "HTTP/1 keeps HTTP/1.1",
                Some("HTTP/1"),
                Version::HTTP_11,
                AppProtocol::Http1,
            ),
            (
                "HTTP/2 turns HTTP/1.1 into HTTP/2",
                Some("HTTP/2"),
                Version::HTTP_11,
                AppProtocol::Http2,
            ),
            (
                "gRPC is HTTP/2",
                Some("gRPC"),
                Version::HTTP_11,
                AppProtocol::Http2,
            ),
            (
                "detected HTTP/2 stays HTTP/2",
                None,
                Version::HTTP_2,
                AppProtocol::Http2,
            ),
            (
                "detected HTTP/1.1 stays HTTP/1.1",
                None,
                Version::HTTP_11,
                AppProtocol::Http1,
            ),
            (
                "unknown HTTP/2 stays HTTP/2",
                Some("unknown"),
                Version::HTTP_2,
                AppProtocol::Http2,
            ),
            (
                "HTTP/1.0 is HTTP/1",
                None,
                Version::HTTP_10,
                AppProtocol::Http1,
            ),
        ];
        for (case, declared, client, want) in cases {
            assert_eq!(app_protocol(declared, client), want, "{case}");
        }
    }

    #[test]
    fn an_http2_request_sent_as_http1_carries_its_authority_as_host() {
        let mut req = Request::builder()
            .version(hyper::Version::HTTP_2)
            .uri("https://api.shop:8443/index.html")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        h2_to_h1(&mut req);
        assert_eq!(req.version(), hyper::Version::HTTP_11);
        assert_eq!(req.headers()["host"], "api.shop:8443");
        assert_eq!(req.headers()["cookie"], "a=1; b=2");
        assert_eq!(req.headers().get_all("cookie").iter().count(), 1);

        // A Host the client sent is kept.
        let mut req = Request::builder()
            .version(hyper::Version::HTTP_2)
            .uri("https://api.shop/")
            .header("host", "other")
            .body(())
            .unwrap();
        h2_to_h1(&mut req);
        assert_eq!(req.headers()["host"], "other");
    }

    #[test]
    fn connection_specific_fields_are_removed_for_http2() {
        let mut headers = hyper::HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("content-type", "text/plain"),
            ("host", "api"),
        ] {
            headers.append(k, v.parse().unwrap());
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "host"]);

        let mut headers = hyper::HeaderMap::new();
        headers.insert("te", "trailers".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers["te"], "trailers", "gRPC needs `te: trailers`");
    }
}

use hyper::HeaderMap;
use lanyard_policy::{Decision, PolicyRef, Verdict};
use prometheus_client::registry::Registry;

use super::connection::Exchange;
use super::{Peer, ProxyMetrics, TlsLabel};

fn response(status: u16, headers: &[(&str, &str)]) -> hyper::Response<()> {
    let mut r = hyper::Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(()).unwrap()
}

fn text(metrics: &ProxyMetrics) -> String {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out
}

fn exchange(metrics: &ProxyMetrics) -> Exchange {
    let decision = Decision {
        verdict: Verdict::Allow,
        server: None,
        authz: "default:all-unauthenticated".into(),
        route: None,
        audit: false,
        labels: lanyard_policy::PolicyLabels {
            server: PolicyRef::default_named("all-unauthenticated"),
            route: PolicyRef::default_route(),
            authz: Some(PolicyRef::default_named("all-unauthenticated")),
        },
    };
    let peer = Peer {
        target: "10.0.0.1:8080".parse().unwrap(),
        tls: TlsLabel::NoTlsFromRemote,
    };
    metrics.connection(peer).http_decision(&decision).unwrap()
}

/// One connection keeps the counters of its last decision; requests
/// decided differently (another verdict, another authorization after a
/// policy reload) still land in their own series, and each response in
/// its own status series.
#[test]
fn a_connection_counts_each_decision_in_its_own_series() {
    let metrics = ProxyMetrics::default();
    let connection = metrics.connection(Peer {
        target: "10.0.0.1:8080".parse().unwrap(),
        tls: TlsLabel::Established {
            client_id: Some("web.shop.serviceaccount.identity.linkerd.cluster.local".into()),
        },
    });
    let decision = |verdict, authz: Option<&str>| Decision {
        verdict,
        server: Some("api".into()),
        authz: "".into(),
        route: None,
        audit: false,
        labels: lanyard_policy::PolicyLabels {
            server: PolicyRef::default_named("api"),
            route: PolicyRef::default_route(),
            authz: authz.map(PolicyRef::default_named),
        },
    };
    let allow_a = decision(Verdict::Allow, Some("a"));
    let allow_b = decision(Verdict::Allow, Some("b"));
    let deny = decision(Verdict::Deny, None);
    for (d, status) in [
        (&allow_a, Some(200)),
        (&allow_a, Some(200)),
        (&deny, None),
        (&allow_a, Some(503)),
        (&allow_b, Some(200)),
        (&deny, None),
        (&allow_a, Some(200)),
    ] {
        let exchange = connection.http_decision(d);
        assert_eq!(exchange.is_some(), status.is_some());
        if let (Some(exchange), Some(status)) = (exchange, status) {
            drop(exchange.responded(false, &response(status, &[])));
        }
    }
    let text = text(&metrics);
    let value = |prefix: &str, needles: &[&str]| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(
        value("inbound_http_authz_allow_total{", &["authz_name=\"a\""]),
        4,
        "{text}"
    );
    assert_eq!(
        value("inbound_http_authz_allow_total{", &["authz_name=\"b\""]),
        1,
        "{text}"
    );
    assert_eq!(value("inbound_http_authz_deny_total{", &[]), 2, "{text}");
    assert_eq!(value("request_total{", &["authz_name=\"a\""]), 4, "{text}");
    assert_eq!(value("request_total{", &["authz_name=\"b\""]), 1, "{text}");
    assert_eq!(
        value(
            "response_total{",
            &["authz_name=\"a\"", "status_code=\"200\""]
        ),
        3,
        "{text}"
    );
    assert_eq!(
        value(
            "response_total{",
            &[
                "authz_name=\"a\"",
                "status_code=\"503\"",
                "classification=\"failure\""
            ]
        ),
        1,
        "{text}"
    );
    assert_eq!(
        value(
            "response_total{",
            &["authz_name=\"b\"", "status_code=\"200\""]
        ),
        1,
        "{text}"
    );
}

/// Time to first byte is recorded once per answered request, under
/// its status and Linkerd's buckets; a request the application never
/// answered has no latency.
#[test]
fn latency_is_recorded_once_per_answer_in_linkerds_buckets() {
    let metrics = ProxyMetrics::default();
    // A body: its first frame records the latency, its end does not
    // record it again.
    let mut pending = exchange(&metrics).responded(false, &response(200, &[]));
    pending.first_byte();
    pending.end(None);
    drop(pending);
    // An empty body: its end is its first byte.
    drop(exchange(&metrics).responded(false, &response(503, &[])));
    exchange(&metrics).failed();
    let text = text(&metrics);
    let counts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("response_latency_ms_count{"))
        .collect();
    assert_eq!(counts.len(), 2, "{text}");
    for status in ["200", "503"] {
        assert!(
            counts
                .iter()
                .any(|l| l.contains(&format!("status_code=\"{status}\"}} 1"))),
            "{status}: {counts:?}"
        );
    }
    let bounds: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("response_latency_ms_bucket{") && l.contains("status_code=\"200\"")
        })
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        bounds,
        [
            "1.0", "2.0", "3.0", "4.0", "5.0", "10.0", "20.0", "30.0", "40.0", "50.0", "100.0",
            "200.0", "300.0", "400.0", "500.0", "1000.0", "2000.0", "3000.0", "4000.0", "5000.0",
            "10000.0", "20000.0", "30000.0", "40000.0", "50000.0", "+Inf"
        ]
    );
}

/// On tokio's paused clock, a first byte 45 ms after the request lands
/// in Linkerd's 50 ms bucket and not the 40 ms one: no sleeping.
#[tokio::test(start_paused = true)]
async fn latency_lands_in_the_bucket_of_its_time_to_first_byte() {
    let metrics = ProxyMetrics::default();
    let mut pending = exchange(&metrics).responded(false, &response(200, &[]));
    tokio::time::advance(std::time::Duration::from_millis(45)).await;
    pending.first_byte();
    let text = text(&metrics);
    let bucket = |le: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("response_latency_ms_bucket{") && l.contains(&format!("le=\"{le}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(bucket("40.0").as_deref(), Some("0"), "{text}");
    assert_eq!(bucket("50.0").as_deref(), Some("1"), "{text}");
    assert!(text.contains("response_latency_ms_sum{"), "{text}");
}

/// The `response_total` suffix each outcome is counted under.
#[test]
fn responses_are_classified_as_linkerd_classifies_them() {
    type Outcome = fn(Exchange);
    let cases: Vec<(&str, Outcome, &str)> = vec![
        (
            "a 200 is a success",
            |x| drop(x.responded(false, &response(200, &[]))),
            r#"status_code="200",classification="success",grpc_status="",error="""#,
        ),
        (
            "a 404 is a success: the server answered",
            |x| drop(x.responded(false, &response(404, &[]))),
            r#"status_code="404",classification="success",grpc_status="",error="""#,
        ),
        (
            "a 503 is a failure",
            |x| drop(x.responded(false, &response(503, &[]))),
            r#"status_code="503",classification="failure",grpc_status="",error="""#,
        ),
        (
            "no answer is a failure with an error and no status",
            |x| x.failed(),
            r#"classification="failure",grpc_status="",error="unclassified""#,
        ),
        (
            "a trailers-only gRPC OK is a success",
            |x| drop(x.responded(true, &response(200, &[("grpc-status", "0")]))),
            r#"status_code="200",classification="success",grpc_status="0",error="""#,
        ),
        (
            "a gRPC UNAVAILABLE in the trailers is a failure",
            |x| {
                let mut pending = x.responded(true, &response(200, &[]));
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "14".parse().unwrap());
                pending.end(Some(&trailers));
            },
            r#"status_code="200",classification="failure",grpc_status="14",error="""#,
        ),
        (
            "a gRPC NOT_FOUND is a success: the server answered",
            |x| drop(x.responded(true, &response(200, &[("grpc-status", "5")]))),
            r#"status_code="200",classification="success",grpc_status="5",error="""#,
        ),
        (
            "a gRPC stream that ends without a status is UNKNOWN, counted as Linkerd counts it",
            |x| drop(x.responded(true, &response(200, &[]))),
            r#"status_code="200",classification="success",grpc_status="2",error="""#,
        ),
        (
            "a body that breaks is a failure with an error",
            |x| x.responded(false, &response(200, &[])).error(),
            r#"status_code="200",classification="failure",grpc_status="",error="unclassified""#,
        ),
    ];
    for (case, outcome, want) in cases {
        let metrics = ProxyMetrics::default();
        outcome(exchange(&metrics));
        let text = text(&metrics);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("response_total{"))
            .collect();
        assert_eq!(lines.len(), 1, "{case}: one series\n{text}");
        assert!(
            lines[0].contains(&format!("{want}}} 1")),
            "{case}: {}",
            lines[0]
        );
    }
}

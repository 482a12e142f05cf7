//! The Prometheus alerts of `charts/alerts/lanyard-rules.yaml`: promtool
//! checks the rules and runs their unit tests
//! (`charts/alerts/lanyard-rules.test.yaml`), and every metric the rules use
//! must be one that Lanyard's components really export: read from the code
//! that registers them, with the names a scrape shows (`_total` on
//! counters), and checked against a real encoding of their registries. So
//! renaming a metric breaks this test rather than, silently, the alert.
//!
//! promtool comes with Debian's `prometheus` package:
//! `apt-get install -y --no-install-recommends prometheus`, as `.ci/run`
//! does. In a container without an init system the package's attempt to
//! start the Prometheus service is refused (`policy-rc.d denied
//! execution of start`) and the install still succeeds; only `promtool` is
//! needed. Without promtool the promtool test fails, unless
//! `LANYARD_SKIP_PROMTOOL=1`, when it says it was skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

use prometheus_client::registry::Registry;

const RULES: &str = include_str!("../charts/alerts/lanyard-rules.yaml");
const RULE_TESTS: &str = include_str!("../charts/alerts/lanyard-rules.test.yaml");

fn alerts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/alerts")
}

/// Runs `promtool args...` and fails the test, with promtool's output, when
/// it does not succeed. `None` (after saying so) when promtool is missing
/// and the skip is asked for.
fn promtool(args: &[&str]) -> Option<()> {
    let output = match Command::new("promtool").args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("LANYARD_SKIP_PROMTOOL").as_deref() == Ok("1") {
                // Straight to the process's stderr, past the test harness's
                // output capture, so the skip shows in every `cargo test` log.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: promtool is not on PATH and LANYARD_SKIP_PROMTOOL=1; the alerting rules were not checked"
                );
                return None;
            }
            panic!(
                "promtool is not on PATH: install it with `apt-get install -y prometheus` \
                 (Debian's package ships promtool; CI installs it), or set \
                 LANYARD_SKIP_PROMTOOL=1 to skip this test"
            );
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    assert!(
        output.status.success(),
        "`promtool {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    Some(())
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let dir = alerts_dir();
    let rules = dir.join("lanyard-rules.yaml");
    let tests = dir.join("lanyard-rules.test.yaml");
    let Some(()) = promtool(&["check", "rules", &rules.to_string_lossy()]) else {
        return;
    };
    promtool(&["test", "rules", &tests.to_string_lossy()]);
}

/// The sources that register every metric the alerts may use: the
/// controller's, the identity service's, the proxy's and the proxy agent's,
/// the listener counters the identity service and the proxy register under
/// a prefix, and the proxy's latency histogram type.
const METRIC_SOURCES: [(&str, &str); 6] = [
    (
        "rotator/src/metrics.rs",
        include_str!("../rotator/src/metrics.rs"),
    ),
    (
        "issuer/identity/src/metrics.rs",
        include_str!("../issuer/identity/src/metrics.rs"),
    ),
    (
        "proxy-agent/src/proxy/metrics/mod.rs",
        include_str!("../proxy-agent/src/proxy/metrics/mod.rs"),
    ),
    (
        "proxy-agent/src/metrics.rs",
        include_str!("../proxy-agent/src/metrics.rs"),
    ),
    (
        "crds/runtime/src/listen.rs",
        include_str!("../crds/runtime/src/listen.rs"),
    ),
    (
        "proxy-agent/src/proxy/metrics/latency.rs",
        include_str!("../proxy-agent/src/proxy/metrics/latency.rs"),
    ),
];

/// The series a scrape shows of a metric registered as `name` whose
/// field has type `ty`: a counter `x` as `x_total`, a histogram as
/// `x_bucket`, `x_sum` and `x_count` (prometheus-client's text encoding).
fn series_of(name: &str, ty: &str) -> Option<Vec<String>> {
    if ty.contains("Histogram") {
        Some(
            ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{name}{suffix}"))
                .collect(),
        )
    } else if ty.contains("Counter") {
        Some(vec![format!("{name}_total")])
    } else if ty.contains("Gauge") {
        Some(vec![name.to_string()])
    } else {
        None
    }
}

/// The string literal `s` starts with (after blanks), and what follows
/// it; `None` when it does not start with one.
fn string_literal(s: &str) -> Option<(&str, &str)> {
    let body = s.trim_start().strip_prefix('"')?;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some((&body[..i], &body[i + 1..])),
            _ => {}
        }
    }
    None
}

/// The series the components export, read from their sources: each
/// `.register("name", "help", self.field.clone())` and the declared type
/// of `field` (or of the type alias it names), and each family a collector
/// writes with `.encode_descriptor("name", "help", None, MetricType::Kind)`.
/// The first set holds full names; the second the ends of names registered
/// under a caller's prefix (`format!("{prefix}_connections_open")`).
fn exported_series() -> (BTreeSet<String>, BTreeSet<String>) {
    // `type Name = Family<..., Histogram>;` anywhere in the sources.
    let aliases: BTreeMap<&str, &str> = METRIC_SOURCES
        .iter()
        .flat_map(|(_, source)| source.lines())
        .filter_map(|line| {
            let rest = line.split_once("type ")?.1;
            let (alias, ty) = rest.split_once(" = ")?;
            Some((alias.trim(), ty.trim_end_matches(';')))
        })
        .collect();
    let mut named = BTreeSet::new();
    let mut prefixed = BTreeSet::new();
    for (path, source) in METRIC_SOURCES {
        let mut rest = source;
        while let Some(at) = rest.find(".register(") {
            rest = &rest[at + ".register(".len()..];
            // The name (a literal, or `format!` of one), then the help
            // (which may hold anything, `);` included), then the metric.
            let (name, after_name, under_prefix) = match rest.trim_start().strip_prefix("format!(")
            {
                Some(format) => {
                    let Some((name, after)) = string_literal(format) else {
                        continue;
                    };
                    let Some(end) = name.strip_prefix("{prefix}") else {
                        continue;
                    };
                    let after = after.trim_start().strip_prefix(')').unwrap_or(after);
                    (end, after, true)
                }
                None => {
                    let Some((name, after)) = string_literal(rest) else {
                        continue;
                    };
                    (name, after, false)
                }
            };
            let (_, after_help) = after_name
                .trim_start()
                .strip_prefix(',')
                .and_then(string_literal)
                .unwrap_or_else(|| panic!("{path}: no help text after {name}"));
            let field = after_help
                .split_once(".clone()")
                .and_then(|(before, _)| before.rsplit('.').next())
                .map(str::trim)
                .unwrap_or_else(|| panic!("{path}: cannot find the metric registered as {name}"));
            let declared = format!("{field}: ");
            let series = source
                .lines()
                .filter_map(|line| line.trim_start().strip_prefix(&declared))
                .map(|ty| {
                    let ty = ty.trim_end_matches(',');
                    aliases.get(ty).copied().unwrap_or(ty)
                })
                .find_map(|ty| series_of(name, ty))
                .unwrap_or_else(|| {
                    panic!("{path}: cannot tell the type of `{field}`, registered as {name}")
                });
            if under_prefix {
                prefixed.extend(series);
            } else {
                named.extend(series);
            }
        }
    }
    // Families a collector writes at scrape time:
    // `encode_descriptor("name", "help", None, MetricType::Kind)`.
    for (path, source) in METRIC_SOURCES {
        let mut rest = source;
        while let Some(at) = rest.find(".encode_descriptor(") {
            rest = &rest[at + ".encode_descriptor(".len()..];
            let Some((name, after)) = string_literal(rest) else {
                continue;
            };
            let kind = after
                .split_once("MetricType::")
                .and_then(|(_, kind)| kind.split(|c: char| !c.is_alphanumeric()).next())
                .unwrap_or_else(|| panic!("{path}: no MetricType after {name}"));
            named.extend(
                series_of(name, kind)
                    .unwrap_or_else(|| panic!("{path}: {name} has a type this test cannot read")),
            );
        }
    }
    assert!(
        named.len() >= 30 && prefixed.len() >= 5,
        "too few metrics read from the sources: {named:?} {prefixed:?}"
    );
    (named, prefixed)
}

/// What a scrape of the components really shows, with every series that
/// can be set from outside their crates set once: to check that reading
/// the sources names series as Prometheus sees them.
fn scraped_series() -> BTreeSet<String> {
    use chrono::DateTime;
    use lanyard_crds::api::{CertificateSpec, CertificateStatus, IssuerKind, IssuerRef};

    let controller = lanyard_rotator::metrics::Metrics::new();
    let spec = CertificateSpec::new(
        "web-tls",
        IssuerRef {
            name: "identity".into(),
            kind: None,
            group: None,
        },
    );
    let at = DateTime::from_timestamp(1_000_000, 0).expect("a valid timestamp");
    let status = CertificateStatus {
        not_after: Some(at),
        renewal_time: Some(at),
        ..CertificateStatus::default()
    };
    controller.observe_certificate("shop", "web", &spec, &status);
    controller.issued("shop", "web", &spec);
    controller.failed("shop", "web", &spec, "WriteFailed");
    controller.observe_issuer(IssuerKind::ClusterIssuer, "", "anchor", None);
    controller.observe_bundle("roots", 1, at);
    controller.bundle_failed("roots");
    controller.observe_rotation("anchor", "Stable", &["Stable", "Prepared"], at, at);
    controller.rotated("anchor");
    controller.pass("full");
    let mut text = controller.encode();

    let mut registry = Registry::default();
    lanyard_identity::metrics::IdentityMetrics::new().register(&mut registry);
    lanyard_proxy::proxy::metrics::ProxyMetrics::default().register(&mut registry);
    lanyard_proxy::metrics::AgentMetrics::new().register(&mut registry);
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("encoding metrics into a String");

    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            line[..end].to_string()
        })
        .collect()
}

/// Each alert's name and its `expr`, read line by line: the value after
/// `expr:` and every following line indented deeper than the key (a block
/// scalar or a plain scalar folded over lines).
fn rule_exprs(rules: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut alert = None;
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = Some(name.trim().to_string());
            continue;
        }
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        let value = value.trim();
        let mut expr = if value.starts_with(['|', '>']) {
            String::new()
        } else {
            value.trim_matches(['"', '\'']).to_string()
        };
        while let Some(next) = lines.peek() {
            let next_trimmed = next.trim_start();
            if !next_trimmed.is_empty() && next.len() - next_trimmed.len() <= indent {
                break;
            }
            expr.push(' ');
            expr.push_str(next_trimmed);
            lines.next();
        }
        let alert = alert
            .clone()
            .unwrap_or_else(|| panic!("an `expr:` before any `- alert:`: {line}"));
        found.push((alert, expr));
    }
    found
}

/// Words of PromQL that are not metric names: operators, modifiers, and
/// the aggregations, which may be followed by `by (...)` before their `(`.
const PROMQL_KEYWORDS: [&str; 28] = [
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "Inf",
    "NaN",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// The metric names a PromQL expression selects: its identifiers, less
/// function names, keywords, numbers and durations, string literals, label
/// matchers (`{...}`), ranges (`[...]`) and the label lists of `by`,
/// `without`, `on`, `ignoring`, `group_left` and `group_right`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |from: usize, close: char| {
        let open = chars[from];
        let mut depth = 0;
        let mut j = from;
        while j < chars.len() {
            if chars[j] == open {
                depth += 1;
            } else if chars[j] == close {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        panic!("unbalanced `{open}` in {expr}");
    };
    let next_non_space = |from: usize| {
        let mut j = from;
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let after = next_non_space(i);
            let opens = after < chars.len() && chars[after] == '(';
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                if opens {
                    i = skip_to(after, ')');
                }
            } else if !opens && !PROMQL_KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql_without_functions_labels_or_keywords() {
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "a selector with matchers, a range and a grouping",
            r#"sum(rate(inbound_http_errors_total{error="tls"}[5m])) by (deployment) > 0"#,
            &["inbound_http_errors_total"],
        ),
        (
            "both sides of a set operation, with an `on` list",
            "time() - a_due_seconds > 900 and on (anchor) a_phase{phase=\"Stable\"} == 0",
            &["a_due_seconds", "a_phase"],
        ),
        (
            "arithmetic on numbers, `without` and a nested call",
            "sum without (code) (rate(x_total{code!=\"OK\"}[5m])) / 7 * 24 * 3600 < 1.5e3",
            &["x_total"],
        ),
        (
            "a bare selector and an offset",
            "up offset 5m unless on(job) group_left(instance) other_metric",
            &["up", "other_metric"],
        ),
    ];
    for (case, expr, expected) in cases {
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(metric_names(expr), expected, "{case}: {expr}");
    }
}

#[test]
fn every_metric_the_alerts_use_is_one_lanyard_exports() {
    let (named, prefixed) = exported_series();
    let scraped = scraped_series();
    for known in [
        "lanyard_certificate_expiration_timestamp_seconds",
        "lanyard_certificate_issuance_failures_total",
        "lanyard_identity_certify_duration_seconds_bucket",
        "lanyard_identity_issuer_refused",
        "lanyard_identity_connections_open",
    ] {
        assert!(
            scraped.contains(known),
            "a scrape lacks {known}: {scraped:#?}"
        );
    }
    // The sources were read right: every series a scrape shows is one of
    // them, or ends as one registered under a prefix.
    let misread: Vec<_> = scraped
        .iter()
        .filter(|s| !named.contains(*s) && !prefixed.iter().any(|end| s.ends_with(end)))
        .collect();
    assert!(
        misread.is_empty(),
        "a scrape shows series the sources were not read as exporting: {misread:?}"
    );
    // Series registered under a prefix are known by what a scrape shows.
    let exported: BTreeSet<String> = named.union(&scraped).cloned().collect();

    let exprs = rule_exprs(RULES);
    assert!(exprs.len() >= 15, "too few rules read: {exprs:#?}");
    let mut unknown = Vec::new();
    for (alert, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{alert} selects no metric: {expr}");
        unknown.extend(
            names
                .into_iter()
                .filter(|name| !exported.contains(name))
                .map(|name| format!("{alert}: {name}")),
        );
    }
    assert!(
        unknown.is_empty(),
        "alerts use metrics no Lanyard component exports:\n  {}\nexported:\n  {}",
        unknown.join("\n  "),
        exported.iter().cloned().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn every_alert_has_a_severity_a_summary_a_description_and_a_test_where_it_fires_and_one_where_it_does_not()
 {
    // The rules, alert by alert: the lines up to the next alert or group.
    let mut blocks: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in RULES.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            let name = name.trim().to_string();
            assert!(
                !blocks.contains_key(&name),
                "two rules are named {name}; tests and silences tell alerts apart by name"
            );
            blocks.insert(name.clone(), String::new());
            current = Some(name);
        } else if trimmed.starts_with("- name:") {
            current = None;
        } else if let Some(name) = &current {
            let block = blocks.get_mut(name).expect("inserted with its name");
            block.push_str(trimmed);
            block.push('\n');
        }
    }
    assert!(blocks.len() >= 15, "too few alerts read: {blocks:#?}");
    for (alert, block) in &blocks {
        assert!(
            block.contains("severity: warning") || block.contains("severity: critical"),
            "{alert} has no severity warning or critical:\n{block}"
        );
        for key in ["expr:", "summary:", "description:"] {
            assert!(
                block.lines().any(|l| l.starts_with(key)),
                "{alert} has no {key}\n{block}"
            );
        }
    }

    // The unit tests: each `alertname:` and whether its `exp_alerts` is
    // empty.
    let mut fires: BTreeSet<String> = BTreeSet::new();
    let mut silent: BTreeSet<String> = BTreeSet::new();
    let mut alertname: Option<String> = None;
    for line in RULE_TESTS.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("alertname:") {
            let name = name.trim().to_string();
            assert!(
                blocks.contains_key(&name),
                "the tests check {name}, which is not a rule (an empty exp_alerts for it proves nothing)"
            );
            alertname = Some(name);
        } else if let Some(expected) = trimmed.strip_prefix("exp_alerts:") {
            let name = alertname
                .take()
                .unwrap_or_else(|| panic!("exp_alerts without alertname: {line}"));
            if expected.trim() == "[]" {
                silent.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    for alert in blocks.keys() {
        assert!(
            fires.contains(alert),
            "no test in lanyard-rules.test.yaml where {alert} fires"
        );
        assert!(
            silent.contains(alert),
            "no test in lanyard-rules.test.yaml where {alert} must not fire (exp_alerts: [])"
        );
    }
}

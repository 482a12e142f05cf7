//! A certificate that asks to outlive its issuer, in the local shell: it
//! is issued, ends with the issuer, and both the status and the log say so.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use chrono::TimeDelta;
use lanyard_crds::time::ManualClock;
use lanyard_rotator::local::manifests::apply;
use lanyard_rotator::local::{LocalController, certificate_rows};
use lanyard_rotator::metrics::Metrics;
use support::{hours, t0};

/// Every log line of the process, as `lanyard up` would print them.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

impl Log {
    fn warnings(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains("WARN"))
            .map(str::to_string)
            .collect()
    }
}

const LONG: &str = "apiVersion: lanyard.dev/v1
kind: Certificate
metadata:
  name: long
  namespace: default
spec:
  secretName: long-tls
  dnsNames: [long.default.svc]
  duration: 100000h
  issuerRef:
    name: linkerd-trust-anchor
    kind: ClusterIssuer
";

#[test]
fn a_certificate_longer_than_its_issuer_is_ready_and_says_it_ends_with_the_issuer() {
    // The only test in this binary: it owns the process's log.
    let log = Log::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .without_time()
            .finish(),
    )
    .expect("no other subscriber in this test binary");

    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let options = support::local_options(dir.path());
    let mut controller =
        LocalController::open(options.clone(), clock.clone(), Arc::new(Metrics::new())).unwrap();
    controller.bootstrap().unwrap();
    apply(
        &options.manifests_dir(),
        &options.secret_store(),
        &[("long.yaml".into(), LONG.into())],
        "default",
    )
    .unwrap();
    let row = || {
        let (rows, _) = certificate_rows(&options.state_dir).unwrap();
        rows.into_iter()
            .find(|r| r.name == "long")
            .expect("the certificate is listed")
    };

    // The anchor `lanyard up` makes lives 87600h from t0; 100000h asks
    // for more.
    let anchor_end = "2035-12-30T00:00:00Z";
    let requested = "2037-05-29T16:00:00Z";
    let report = controller.reconcile_all().unwrap();
    assert!(report.issued.iter().any(|(key, _)| key.name == "long"));
    let issued = row();
    assert_eq!(issued.ready, "True", "the certificate is valid");
    assert_eq!(issued.not_after, Some(t0() + hours(87_600)));
    for needle in [
        &format!("ends at its issuer's notAfter {anchor_end}"),
        &format!("instead of {requested}"),
        "100000h0m0s",
    ] {
        assert!(
            issued.message.contains(needle),
            "`{needle}` not in `{}`",
            issued.message
        );
    }
    let warnings = log.warnings();
    let clamp: Vec<_> = warnings
        .iter()
        .filter(|l| l.contains("default/long"))
        .collect();
    assert_eq!(
        clamp.len(),
        1,
        "one warning names the certificate: {warnings:?}"
    );
    assert!(
        clamp[0].contains(&format!("would have lived until {requested}"))
            && clamp[0].contains(&format!("clamped to the issuer's notAfter {anchor_end}")),
        "{}",
        clamp[0]
    );

    // A later pass with nothing to do keeps the message and logs nothing new.
    clock.advance(TimeDelta::hours(1));
    controller.reconcile_all().unwrap();
    assert_eq!(row().message, issued.message);
    assert_eq!(
        log.warnings(),
        warnings,
        "the clamp is logged once, at issuance"
    );
}

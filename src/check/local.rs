//! The local shell of `lanyard check`: the state directory of `lanyard
//! up`, read through the rotator's own readers (manifests, Secret store,
//! status records, bundles, the anchor's rotation record).

use std::path::Path;

use chrono::{DateTime, Utc};
use lanyard_crds::identity::IdentityDomain;
use lanyard_crds::trust_bundle::TrustBundle;
use lanyard_issuer::IdentityIssuer;
use lanyard_rotator::local::manifests::{self, Object};
use lanyard_rotator::local::{
    Durability, IDENTITY_ISSUER_NAME, SecretStore, TRUST_ANCHOR_NAME, certificate_rows, trust,
};

use super::{
    Check, Outcome, Readiness, Report, bundle_trusts_issuer, certificates_check, issuer_checks,
    rotation_outcome,
};

/// Every check that applies to a state directory.
pub(super) fn report(dir: &Path, domain: &IdentityDomain, now: DateTime<Utc>) -> Report {
    let mut report = Report::default();
    let shown = dir.display();
    let readable = match std::fs::read_dir(dir) {
        Ok(_) if dir.join("manifests").is_dir() => Outcome::Pass,
        Ok(_) => Outcome::Fail(format!(
            "{shown} has no manifests/: it is not a state directory of `lanyard up` (which makes one on first start)"
        )),
        Err(e) => Outcome::Fail(format!("{shown}: {e}")),
    };
    let readable_ok = !readable.is_fail();
    let mut checks = vec![Check::new(
        format!("state directory {shown} exists and is readable"),
        readable,
    )];
    if !readable_ok {
        report.section("state-directory", checks);
        report.skipped = Some(
            "Skipped the remaining checks (certificates, lanyard-identity-issuer, trust-bundles, \
             trust-anchor-rotation): they need the state directory."
                .into(),
        );
        return report;
    }
    let (objects, errors) = manifests::load_dir(&dir.join("manifests"), "default");
    let errors: Vec<String> = errors.values().flatten().map(|e| e.to_string()).collect();
    checks.push(Check::new(
        "manifests load without errors",
        if errors.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Fail(format!(
                "{}\n(the controller keeps using the last good version of these files)",
                errors.join("\n")
            ))
        },
    ));
    report.section("state-directory", checks);

    report.section(
        "certificates",
        vec![match certificate_rows(dir) {
            Ok((rows, _)) => {
                let readiness: Vec<Readiness> = rows
                    .into_iter()
                    .map(|row| Readiness {
                        namespace: row.namespace,
                        name: row.name,
                        ready: (row.ready != "Unknown" || !row.message.is_empty()).then(|| {
                            (row.ready, None, Some(row.message).filter(|m| !m.is_empty()))
                        }),
                    })
                    .collect();
                certificates_check(&readiness)
            }
            Err(e) => Check::new("all Certificates are Ready", Outcome::Fail(e.to_string())),
        }],
    );

    let namespace = domain.control_plane_namespace();
    let store = SecretStore::new(dir.join("secrets"), Durability::Deferred);
    let what = format!(
        "Secret {namespace}/{IDENTITY_ISSUER_NAME} ({})",
        store.dir(namespace, IDENTITY_ISSUER_NAME).display()
    );
    let (issuer_section, issuer) = match store.read(namespace, IDENTITY_ISSUER_NAME) {
        Ok(secret) => issuer_checks(secret.as_ref(), &what, domain, now),
        Err(e) => (
            vec![Check::new(
                format!("can read the {what}"),
                Outcome::Fail(e.to_string()),
            )],
            None,
        ),
    };
    report.section("lanyard-identity-issuer", issuer_section);

    let bundles: Vec<&TrustBundle> = objects
        .values()
        .flatten()
        .filter_map(|o| match o {
            Object::TrustBundle(b) => Some(b.as_ref()),
            _ => None,
        })
        .collect();
    report.section(
        "trust-bundles",
        bundle_checks(dir, &bundles, issuer.as_ref(), now),
    );

    let follow = format!("lanyard anchor status --state-dir {shown}");
    let rotation = match (trust::read_record(dir), trust::read_request(dir)) {
        (Ok(record), Ok(request)) => rotation_outcome(
            record.as_ref(),
            request.map(|r| r.requested_at),
            now,
            &follow,
        ),
        (Err(e), _) | (_, Err(e)) => Outcome::Fail(e.to_string()),
    };
    report.section(
        "trust-anchor-rotation",
        vec![Check::new(
            format!("trust anchor {TRUST_ANCHOR_NAME} is Stable (no rotation under way)"),
            rotation,
        )],
    );
    report
}

/// Each bundle's file exists and holds anchors; a bundle that
/// distributes the anchor of `lanyard up` must trust the issuer.
fn bundle_checks(
    dir: &Path,
    bundles: &[&TrustBundle],
    issuer: Option<&IdentityIssuer>,
    now: DateTime<Utc>,
) -> Vec<Check> {
    if bundles.is_empty() {
        return vec![Check::new(
            "TrustBundles exist",
            Outcome::Warn(
                "there is no TrustBundle manifest; `lanyard up` writes linkerd-identity-trust-roots on its first start"
                    .into(),
            ),
        )];
    }
    let mut checks = Vec::new();
    for bundle in bundles {
        let name = bundle.metadata.name.clone().unwrap_or_default();
        let file = format!("bundles/{name}.pem");
        let path = trust::bundles_dir(dir).join(format!("{name}.pem"));
        let distributes = bundle.spec.distributes(TRUST_ANCHOR_NAME);
        let pem = match std::fs::read(&path) {
            Ok(pem) => pem,
            Err(e) => {
                checks.push(Check::new(
                    format!("{file} exists"),
                    Outcome::Fail(format!(
                        "{}: {e}\n(`lanyard up` writes it for the TrustBundle {name})",
                        path.display()
                    )),
                ));
                continue;
            }
        };
        let what = path.display().to_string();
        let check = match (distributes, issuer) {
            (true, Some(issuer)) => Check::new(
                format!("{file} holds the issuer's trust anchor"),
                bundle_trusts_issuer(issuer, &pem, &what, now),
            ),
            _ => Check::new(
                format!("{file} holds trust anchors"),
                match lanyard_issuer::Certificate::parse_pem_bundle(&pem, &what) {
                    Ok(anchors) if !anchors.is_empty() => Outcome::Pass,
                    Ok(_) => Outcome::Fail(format!("{what} holds no certificate")),
                    Err(e) => Outcome::Fail(e.to_string()),
                },
            ),
        };
        checks.push(check);
    }
    checks
}

//! Random and mangled manifests never panic the parser: they become
//! objects or errors naming the file.

use std::path::Path;

use lanyard_rotator::local::manifests::{Checks, parse};
use proptest::prelude::*;

const GOOD: &str = "apiVersion: lanyard.dev/v1\nkind: Certificate\nmetadata:\n  name: web\nspec:\n  secretName: web-tls\n  dnsNames: [web]\n  duration: 24h\n  renewBefore: 8h\n  usages: [server auth]\n  privateKey: {algorithm: RSA, size: 2048}\n  issuerRef: {name: identity, kind: ClusterIssuer}\n";

/// The same Certificate as JSON, as `lanyard apply` stores it.
const GOOD_JSON: &str = r#"{"apiVersion": "lanyard.dev/v1", "kind": "Certificate", "metadata": {"name": "web"},
  "spec": {"secretName": "web-tls", "dnsNames": ["web"], "duration": "24h", "renewBefore": "8h",
    "usages": ["server auth"], "privateKey": {"algorithm": "RSA", "size": 2048},
    "issuerRef": {"name": "identity", "kind": "ClusterIssuer"}}}
"#;

fn check(text: &str) {
    // `.json` files are read as JSON streams, the rest as YAML.
    for file in ["p.yaml", "p.json"] {
        for checks in [Checks::Admission, Checks::Structure] {
            if let Err(errors) = parse(Path::new(file), text, "default", checks) {
                assert!(!errors.is_empty());
                for e in errors {
                    assert!(e.to_string().starts_with(file), "{e}");
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn random_text_never_panics(text in ".{0,400}") {
        check(&text);
    }

    #[test]
    fn a_good_manifest_with_bytes_replaced_never_panics(
        json in any::<bool>(),
        at in any::<usize>(),
        len in 0usize..20,
        with in "[ -~\n]{0,20}",
    ) {
        // The same Certificate in either syntax, a stretch replaced.
        let mut text = if json { GOOD_JSON } else { GOOD }.to_string();
        let at = at % text.len();
        let end = (at + len).min(text.len());
        text.replace_range(at..end, &with);
        check(&text);
    }
}

#[test]
fn a_json_file_reads_as_the_same_objects_as_yaml() {
    let yaml = parse(Path::new("p.yaml"), GOOD, "default", Checks::Admission).unwrap();
    let stream = format!("{GOOD_JSON}\n{GOOD_JSON}");
    let json = parse(Path::new("p.json"), &stream, "default", Checks::Admission).unwrap();
    assert_eq!(json.len(), 2);
    for object in &json {
        assert_eq!(format!("{object:?}"), format!("{:?}", yaml[0]));
    }
}

#[test]
fn a_json_file_that_is_not_json_is_refused_with_where() {
    let errors = parse(Path::new("p.json"), GOOD, "default", Checks::Admission).unwrap_err();
    let text = errors[0].to_string();
    assert!(text.starts_with("p.json"), "{text}");
    assert!(
        text.contains("not valid JSON") && text.contains("line 1"),
        "{text}"
    );
}

#[test]
fn a_json_document_storm_is_refused() {
    let storm = "{}\n".repeat(1025);
    let errors = parse(Path::new("p.json"), &storm, "default", Checks::Structure).unwrap_err();
    let text = errors[0].to_string();
    assert!(text.contains("more than 1024 documents"), "{text}");
    // At the limit, every document is read (and these, being empty
    // objects, are refused one by one for lacking `apiVersion`).
    let full = "{}\n".repeat(1024);
    let errors = parse(Path::new("p.json"), &full, "default", Checks::Structure).unwrap_err();
    assert_eq!(errors.len(), 1024);
}

#[test]
fn the_good_manifest_parses() {
    let objects = parse(Path::new("p.yaml"), GOOD, "default", Checks::Admission).unwrap();
    assert_eq!(objects.len(), 1);
}

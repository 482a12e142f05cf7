//! Random and mangled manifests never panic the parser: they become
//! objects or errors naming the file.

use std::path::Path;

use lanyard_rotator::local::manifests::{Checks, parse};
use proptest::prelude::*;

const GOOD: &str = "apiVersion: lanyard.dev/v1\nkind: Certificate\nmetadata:\n  name: web\nspec:\n  secretName: web-tls\n  dnsNames: [web]\n  duration: 24h\n  renewBefore: 8h\n  usages: [server auth]\n  privateKey: {algorithm: RSA, size: 2048}\n  issuerRef: {name: identity, kind: ClusterIssuer}\n";

fn check(text: &str) {
    for checks in [Checks::Admission, Checks::Structure] {
        if let Err(errors) = parse(Path::new("p.yaml"), text, "default", checks) {
            assert!(!errors.is_empty());
            for e in errors {
                assert!(e.to_string().starts_with("p.yaml"), "{e}");
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
        at in 0usize..GOOD.len(),
        len in 0usize..20,
        with in "[ -~\n]{0,20}",
    ) {
        let mut text = GOOD.to_string();
        let end = (at + len).min(text.len());
        text.replace_range(at..end, &with);
        check(&text);
    }
}

#[test]
fn the_good_manifest_parses() {
    let objects = parse(Path::new("p.yaml"), GOOD, "default", Checks::Admission).unwrap();
    assert_eq!(objects.len(), 1);
}

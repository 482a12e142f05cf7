//! The committed CRD YAML is what the Rust types generate. Regenerate with
//! `LANYARD_UPDATE_CRDS=1 cargo test -p lanyard-crds --test generated_crds`.

use std::path::Path;

use lanyard_crds::api::custom_resource_definitions_yaml;

#[test]
fn committed_crds_match_the_rust_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("lanyard.dev.yaml");
    let generated = custom_resource_definitions_yaml();
    if std::env::var_os("LANYARD_UPDATE_CRDS").is_some() {
        std::fs::write(&path, &generated).expect("write crds/lanyard.dev.yaml");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "crds/lanyard.dev.yaml has drifted from the Rust types; regenerate it with \
         `LANYARD_UPDATE_CRDS=1 cargo test -p lanyard-crds --test generated_crds` and commit it"
    );
}

#[test]
fn generated_crds_carry_the_cel_rules_and_enums() {
    let yaml = custom_resource_definitions_yaml();
    for needle in [
        "renewBefore and renewBeforePercentage are mutually exclusive",
        "at least one of commonName, dnsNames or uris must be set",
        "duration must be at least 1h",
        "renewBefore must be shorter than duration",
        "exactly one of ca or selfSigned must be set",
        "cert sign",
        "server auth",
        "Ed25519",
        "isCA",
    ] {
        assert!(yaml.contains(needle), "CRD YAML lacks `{needle}`");
    }
}

#[test]
fn every_format_in_the_crds_is_one_kubernetes_knows() {
    // The formats the API server validates; any other draws a warning
    // (`unrecognized format "uint32"`) on every apply.
    const KNOWN: [&str; 9] = [
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "binary",
        "date",
        "date-time",
        "password",
    ];
    let yaml = custom_resource_definitions_yaml();
    for line in yaml.lines() {
        if let Some(format) = line.trim().strip_prefix("format: ") {
            assert!(
                KNOWN.contains(&format),
                "unknown format `{format}` in:\n{line}"
            );
        }
    }
}

#[test]
fn times_to_come_are_printed_as_timestamps_not_ages() {
    let yaml = custom_resource_definitions_yaml();
    for column in ["NotAfter", "Renewal"] {
        let at = yaml
            .find(&format!("name: {column}"))
            .unwrap_or_else(|| panic!("no {column} column"));
        let start = yaml[..at].rfind("- ").unwrap();
        let end = yaml[at..].find("\n  - ").map_or(yaml.len(), |e| at + e);
        let entry = &yaml[start..end];
        assert!(entry.contains("type: string"), "{column}: {entry}");
    }
}

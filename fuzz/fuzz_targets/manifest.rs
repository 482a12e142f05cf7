//! Manifests are outside input for `lanyard apply` and `lanyard up`: any
//! bytes must parse into objects or typed errors, never a panic.
#![no_main]
#![forbid(unsafe_code)]

use std::path::Path;

use lanyard_rotator::local::manifests::{Checks, parse};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // `.json` files are read as JSON streams, the rest as YAML.
        for file in ["fuzz.yaml", "fuzz.json"] {
            for checks in [Checks::Admission, Checks::Structure] {
                let _ = parse(Path::new(file), text, "default", checks);
            }
        }
    }
});

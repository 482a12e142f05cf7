//! CSR validation is the first thing outside bytes reach: it must return a
//! typed error for anything, never panic.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use lanyard_crds::identity::{Identity, IdentityDomain};

fn identity() -> &'static Identity {
    static IDENTITY: OnceLock<Identity> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        Identity::new("web", "emojivoto", IdentityDomain::linkerd_default())
            .expect("a valid identity")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lanyard_issuer::validate_csr(data, identity());
    if let Ok(der) = lanyard_issuer::csr_der_from_pem(data) {
        let _ = lanyard_issuer::validate_csr(&der, identity());
    }
});

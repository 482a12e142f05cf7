//! Imported anchors, issuers and keys come from files users hand over.
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lanyard_issuer::SigningKey::from_pem(data, "fuzz");
    let _ = lanyard_issuer::SigningKey::from_pkcs8_der(data, "fuzz");
    let _ = lanyard_issuer::Certificate::parse_pem_bundle(data, "fuzz");
    let _ = lanyard_issuer::Certificate::from_der(data, "fuzz");
});

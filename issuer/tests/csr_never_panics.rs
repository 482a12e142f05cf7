//! The fuzz target's entry points under proptest, so CI checks them too:
//! whatever bytes arrive, CSR validation and PEM import return a typed
//! error or a value, never a panic.

use lanyard_crds::identity::{Identity, IdentityDomain};
use lanyard_issuer::{Certificate, KeyAlgorithm, SigningKey, csr_der_from_pem, validate_csr};
use proptest::prelude::*;

fn web() -> Identity {
    Identity::new("web", "emojivoto", IdentityDomain::linkerd_default()).expect("valid")
}

fn valid_csr() -> Vec<u8> {
    SigningKey::generate(KeyAlgorithm::EcdsaP256)
        .and_then(|k| k.certificate_signing_request(&web()))
        .expect("a CSR")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_bytes_get_a_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        prop_assert!(validate_csr(&bytes, &web()).is_err());
        let _ = csr_der_from_pem(&bytes);
        let _ = SigningKey::from_pem(&bytes, "fuzz");
        let _ = SigningKey::from_pkcs8_der(&bytes, "fuzz");
        let _ = Certificate::parse_pem_bundle(&bytes, "fuzz");
        let _ = Certificate::from_der(&bytes, "fuzz");
    }

    #[test]
    fn a_valid_csr_with_bytes_flipped_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut der = valid_csr();
        for (at, xor) in flips {
            let i = at.index(der.len());
            der[i] ^= xor.max(1);
        }
        // Any outcome but a panic is fine; most flips must be refused.
        let _ = validate_csr(&der, &web());
    }

    #[test]
    fn a_truncated_csr_is_refused(cut in 0usize..200) {
        let der = valid_csr();
        let cut = cut.min(der.len() - 1);
        prop_assert!(validate_csr(&der[..cut], &web()).is_err());
    }
}

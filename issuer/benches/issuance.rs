//! CSR-to-leaf issuance on one core, beside its physical limit: ring's raw
//! ECDSA P-256 verify (the CSR's self-signature) plus sign (the leaf) of the
//! same sizes, measured in the same run, interleaved, so a noisy machine
//! moves both figures together.
//!
//! `cargo bench -p lanyard-issuer` prints both rates and the ratio.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use chrono::TimeDelta;
use lanyard_crds::identity::{Identity, IdentityDomain};
use lanyard_crds::time::{Clock, SystemClock};
use lanyard_issuer::{KeyAlgorithm, SigningKey, TrustAnchor};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

const ROUNDS: usize = 7;
const ROUND_TIME: Duration = Duration::from_millis(400);

#[allow(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
fn stopwatch() -> Instant {
    Instant::now()
}

/// Runs `op` repeatedly for about `ROUND_TIME`; returns operations per second.
fn rate(mut op: impl FnMut()) -> f64 {
    let start = stopwatch();
    let mut n = 0u64;
    while start.elapsed() < ROUND_TIME {
        for _ in 0..16 {
            op();
        }
        n += 16;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // and wants a quick smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let now = SystemClock.now();
    let domain = IdentityDomain::linkerd_default();
    let anchor = TrustAnchor::generate(
        &domain,
        TimeDelta::hours(87_600),
        KeyAlgorithm::EcdsaP256,
        now,
    )
    .expect("anchor");
    let (issuer, _) = anchor
        .issue_identity_issuer(
            &domain,
            TimeDelta::hours(8_760),
            KeyAlgorithm::EcdsaP256,
            now,
        )
        .expect("issuer");
    let identity = Identity::new("web", "emojivoto", domain).expect("identity");
    let workload_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let csr_der = workload_key
        .certificate_signing_request(&identity)
        .expect("csr");

    let lifetime = TimeDelta::hours(24);
    let mut issue = || {
        let leaf = issuer
            .issue(&csr_der, &identity, lifetime, now)
            .expect("issues");
        std::hint::black_box(leaf);
    };

    // The limit: verify the same CSR signature, sign a message the size of
    // the leaf's TBSCertificate, with ring directly.
    let (_, csr) = X509CertificationRequest::from_der(&csr_der).expect("parses");
    let tbs = csr.certification_request_info.raw.to_vec();
    let signature = csr.signature_value.data.to_vec();
    let public_key = csr
        .certification_request_info
        .subject_pki
        .subject_public_key
        .data
        .to_vec();
    let leaf_tbs_len = issuer
        .issue(&csr_der, &identity, lifetime, now)
        .expect("issues")
        .leaf_der
        .len()
        - 72;
    let message = vec![0x5a; leaf_tbs_len];
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
    let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("key");
    let verifier = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &public_key);
    let mut raw = || {
        verifier.verify(&tbs, &signature).expect("verifies");
        std::hint::black_box(signer.sign(&rng, &message).expect("signs"));
    };

    if quick {
        issue();
        raw();
        println!(
            "issuance bench: smoke run passed (run `cargo bench -p lanyard-issuer` to measure)"
        );
        return;
    }

    let (mut ours, mut limit) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours.push(rate(&mut issue));
        limit.push(rate(&mut raw));
    }
    let (ours, limit) = (median(ours), median(limit));
    println!("CSR-to-leaf issuance, ECDSA P-256, one core, median of {ROUNDS} interleaved rounds");
    println!(
        "  lanyard issue (parse + verify CSR + build + sign leaf): {ours:>9.0} leaves/s ({:.1} us each)",
        1e6 / ours
    );
    println!(
        "  ring raw verify + sign (the limit):                     {limit:>9.0} pairs/s  ({:.1} us each)",
        1e6 / limit
    );
    println!(
        "  ratio: {:.2} of the limit (goal: at least 0.80)",
        ours / limit
    );
}

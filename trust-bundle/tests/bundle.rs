//! Bundle assembly, one sentence per rule, over anchors generated at fixed
//! instants: which anchors a bundle holds, in which order, what it warns
//! about and when it is refused.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::identity::IdentityDomain;
use lanyard_issuer::{
    Certificate, CertificateTemplate, KeyAlgorithm, SigningKey, TrustAnchor, self_signed,
};
use lanyard_trust_bundle::{Anchor, Assembled, BundleError, SourceRead, Warning, assemble};
use proptest::prelude::*;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 time")
}

const NOW: &str = "2026-06-01T12:00:00Z";

fn now() -> DateTime<Utc> {
    t(NOW)
}

fn days(n: i64) -> TimeDelta {
    TimeDelta::days(n)
}

fn domain() -> IdentityDomain {
    IdentityDomain::new("linkerd", "cluster.local".parse().expect("a trust domain"))
        .expect("an identity domain")
}

fn anchor(made: DateTime<Utc>, lifetime: TimeDelta) -> Certificate {
    TrustAnchor::generate(&domain(), lifetime, KeyAlgorithm::EcdsaP256, made)
        .expect("a trust anchor")
        .certificate()
        .clone()
}

const LEAF_NAME: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

/// A self-signed end-entity certificate (`CA:FALSE`): what lands in a
/// `ca.crt` when someone pastes a `tls.crt` there.
fn leaf(made: DateTime<Utc>, lifetime: TimeDelta) -> Certificate {
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("a key");
    let template = CertificateTemplate {
        common_name: Some(LEAF_NAME.into()),
        dns_names: vec![LEAF_NAME.into()],
        uris: vec![],
        is_ca: false,
        usages: vec![],
        lifetime,
    };
    let signed = self_signed(&template, &key, made).expect("a leaf");
    let leaf = Certificate::from_der(&signed.der, "leaf").expect("the leaf parses");
    assert!(leaf.ca().is_none(), "the fixture leaf must not be a CA");
    leaf
}

/// The test PKI, by name: anchors made at different instants before
/// [`NOW`], one long expired, one expiring ten days after [`NOW`], two made
/// in the same second, a leaf, and pieces of text that are not anchors.
struct Pki {
    certificates: BTreeMap<&'static str, Certificate>,
    /// PEM text by name: every certificate's, plus the non-certificate
    /// pieces.
    pem: BTreeMap<&'static str, String>,
}

const OLDEST: &str = "oldest";
const MIDDLE: &str = "middle";
const NEWEST: &str = "newest";
const TWIN_LOW: &str = "twin with the lower DER";
const TWIN_HIGH: &str = "twin with the higher DER";
const EXPIRED: &str = "expired";
const EXPIRING: &str = "expiring in ten days";
const LEAF: &str = "leaf";
const PRIVATE_KEY: &str = "a private key";
const MIDDLE_CUT_SHORT: &str = "the first half of `middle`";

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let mut twins = [
            anchor(now() - days(150), days(3650)),
            anchor(now() - days(150), days(3650)),
        ];
        twins.sort_by(|a, b| a.der().cmp(b.der()));
        let [twin_low, twin_high] = twins;
        let certificates = BTreeMap::from([
            (OLDEST, anchor(now() - days(300), days(3650))),
            (MIDDLE, anchor(now() - days(200), days(3650))),
            (NEWEST, anchor(now() - days(100), days(3650))),
            (TWIN_LOW, twin_low),
            (TWIN_HIGH, twin_high),
            (EXPIRED, anchor(now() - days(400), days(100))),
            (EXPIRING, anchor(now() - days(50), days(60))),
            (LEAF, leaf(now() - days(10), days(365))),
        ]);
        let mut pem: BTreeMap<&'static str, String> = certificates
            .iter()
            .map(|(name, c)| (*name, c.to_pem()))
            .collect();
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("a key");
        pem.insert(PRIVATE_KEY, key.to_pkcs8_pem().to_string());
        let middle = pem[MIDDLE].clone();
        pem.insert(MIDDLE_CUT_SHORT, middle[..middle.len() / 2].to_string());
        Pki { certificates, pem }
    })
}

fn cert(name: &str) -> &'static Certificate {
    pki()
        .certificates
        .get(name)
        .unwrap_or_else(|| panic!("no fixture certificate `{name}`"))
}

fn fingerprints(anchors: &[Anchor]) -> Vec<String> {
    anchors.iter().map(|a| a.sha256().to_string()).collect()
}

fn fingerprints_of(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| cert(n).sha256_fingerprint()).collect()
}

/// A source as a row describes it.
#[derive(Debug, Clone, Copy)]
enum Src {
    /// A source holding these fixtures' PEM, concatenated in this order.
    Holds(&'static str, &'static [&'static str]),
    /// A source holding these bytes.
    Bytes(&'static str, &'static [u8]),
    /// A source that could not be read.
    Unreadable(&'static str, &'static str),
}

impl Src {
    fn read(self) -> SourceRead {
        match self {
            Src::Holds(name, parts) => {
                let pem: String = parts.iter().map(|p| pki().pem[p].as_str()).collect();
                SourceRead::pem(name, pem)
            }
            Src::Bytes(name, bytes) => SourceRead::pem(name, bytes),
            Src::Unreadable(name, reason) => SourceRead::unreadable(name, reason),
        }
    }
}

/// One call of `assemble`.
#[derive(Debug)]
struct Round {
    at: DateTime<Utc>,
    sources: Vec<Src>,
}

/// A warning as a row expects it.
#[derive(Debug)]
enum W {
    /// This fixture was dropped from this source as expired.
    Expired(&'static str, &'static str),
    /// This source failed for a reason containing this text, and this many
    /// last good anchors were kept.
    Failed(&'static str, &'static str, usize),
}

#[derive(Debug)]
enum Expect {
    Bundle {
        /// The fixtures, in bundle order.
        anchors: &'static [&'static str],
        warnings: Vec<W>,
        /// Each source's good anchors, for the next call.
        last_good: &'static [(&'static str, &'static [&'static str])],
    },
    /// `BundleError::Empty`, one reason per failed source, in source
    /// order: (what it starts with, text it contains).
    Refused(&'static [(&'static str, &'static str)]),
}

struct Case {
    name: &'static str,
    /// Earlier calls, each feeding its `last_good` to the next; the last
    /// round is the one checked.
    rounds: Vec<Round>,
    expect: Expect,
}

fn check_warnings(case: &str, got: &[Warning], want: &[W]) {
    assert_eq!(
        got.len(),
        want.len(),
        "{case}: warnings {got:#?}, expected {want:#?}"
    );
    for (got, want) in got.iter().zip(want) {
        match (got, want) {
            (
                Warning::Expired {
                    source,
                    subject,
                    not_after,
                },
                W::Expired(want_source, fixture),
            ) => {
                assert_eq!(source, want_source, "{case}: {got:?}");
                assert_eq!(subject, cert(fixture).subject(), "{case}: {got:?}");
                assert_eq!(*not_after, cert(fixture).not_after(), "{case}: {got:?}");
                let text = got.to_string();
                assert!(
                    text.starts_with(&format!("{want_source}: dropped the anchor")),
                    "{case}: {text}"
                );
            }
            (
                Warning::SourceFailed {
                    source,
                    reason,
                    kept,
                },
                W::Failed(want_source, want_reason, want_kept),
            ) => {
                assert_eq!(source, want_source, "{case}: {got:?}");
                assert!(
                    reason.contains(want_reason),
                    "{case}: reason `{reason}` should say `{want_reason}`"
                );
                assert_eq!(kept, want_kept, "{case}: {got:?}");
                let text = got.to_string();
                assert!(
                    text.starts_with(&format!("{want_source}: ")),
                    "{case}: {text}"
                );
                if *kept == 0 {
                    assert!(text.contains("no last good anchors"), "{case}: {text}");
                } else {
                    assert!(
                        text.contains(&format!("keeping its last good {kept} anchor(s)")),
                        "{case}: {text}"
                    );
                }
            }
            (got, want) => panic!("{case}: warning {got:?}, expected {want:?}"),
        }
    }
}

fn run(case: &Case) {
    let name = case.name;
    let (last, earlier) = case.rounds.split_last().expect("a round");
    let mut last_good = BTreeMap::new();
    for round in earlier {
        let sources: Vec<SourceRead> = round.sources.iter().map(|s| s.read()).collect();
        let assembled = assemble(&sources, &last_good, round.at)
            .unwrap_or_else(|e| panic!("{name}: an earlier round failed: {e}"));
        last_good = assembled.last_good;
    }
    let sources: Vec<SourceRead> = last.sources.iter().map(|s| s.read()).collect();
    let got = assemble(&sources, &last_good, last.at);
    match (&case.expect, got) {
        (
            Expect::Bundle {
                anchors,
                warnings,
                last_good: want_last_good,
            },
            Ok(assembled),
        ) => {
            assert_eq!(
                fingerprints(&assembled.anchors),
                fingerprints_of(anchors),
                "{name}: anchors {:#?}",
                assembled.anchors
            );
            let want_pem: String = anchors.iter().map(|a| cert(a).to_pem()).collect();
            assert_eq!(assembled.pem(), want_pem, "{name}: PEM");
            check_warnings(name, &assembled.warnings, warnings);
            assert_eq!(
                assembled.degraded(),
                warnings.iter().any(|w| matches!(w, W::Failed(..))),
                "{name}: degraded"
            );
            let got_last_good: BTreeMap<String, Vec<String>> = assembled
                .last_good
                .iter()
                .map(|(source, anchors)| (source.clone(), fingerprints(anchors)))
                .collect();
            let want_last_good: BTreeMap<String, Vec<String>> = want_last_good
                .iter()
                .map(|(source, anchors)| (source.to_string(), fingerprints_of(anchors)))
                .collect();
            assert_eq!(got_last_good, want_last_good, "{name}: last good");
            check_deterministic(name, &sources, &last_good, last.at, &assembled);
        }
        (Expect::Refused(want), Err(BundleError::Empty { reasons })) => {
            assert_eq!(
                reasons.len(),
                want.len(),
                "{name}: reasons {reasons:#?}, expected {want:#?}"
            );
            for (reason, (starts, contains)) in reasons.iter().zip(want.iter()) {
                assert!(
                    reason.starts_with(starts) && reason.contains(contains),
                    "{name}: reason `{reason}` should start `{starts}` and say `{contains}`"
                );
            }
            let message = BundleError::Empty {
                reasons: reasons.clone(),
            }
            .to_string();
            for reason in &reasons {
                assert!(message.contains(reason.as_str()), "{name}: {message}");
            }
        }
        (want, got) => panic!("{name}: got {got:#?}, expected {want:#?}"),
    }
}

/// The same sources, in the same or the reverse order, give the same bytes.
fn check_deterministic(
    name: &str,
    sources: &[SourceRead],
    last_good: &BTreeMap<String, Vec<Anchor>>,
    at: DateTime<Utc>,
    first: &Assembled,
) {
    let again = assemble(sources, last_good, at).expect("the same inputs again");
    assert_eq!(
        again.pem().as_bytes(),
        first.pem().as_bytes(),
        "{name}: again"
    );
    let reversed: Vec<SourceRead> = sources.iter().rev().cloned().collect();
    let reversed = assemble(&reversed, last_good, at).expect("the sources reversed");
    assert_eq!(
        reversed.pem().as_bytes(),
        first.pem().as_bytes(),
        "{name}: sources reversed"
    );
}

fn at(at: DateTime<Utc>, sources: Vec<Src>) -> Round {
    Round { at, sources }
}

#[test]
fn assembling_a_bundle() {
    use Src::{Bytes, Holds, Unreadable};
    let cases = [
        Case {
            name: "two sources holding the same anchor give it once",
            rounds: vec![at(
                now(),
                vec![
                    Holds("Secret linkerd/roots key ca.crt", &[OLDEST, MIDDLE]),
                    Holds("inLine", &[MIDDLE]),
                ],
            )],
            expect: Expect::Bundle {
                anchors: &[OLDEST, MIDDLE],
                warnings: vec![],
                last_good: &[
                    ("Secret linkerd/roots key ca.crt", &[OLDEST, MIDDLE]),
                    ("inLine", &[MIDDLE]),
                ],
            },
        },
        Case {
            name: "one source holding the same anchor twice gives it once",
            rounds: vec![at(now(), vec![Holds("inLine", &[MIDDLE, OLDEST, MIDDLE])])],
            expect: Expect::Bundle {
                anchors: &[OLDEST, MIDDLE],
                warnings: vec![],
                last_good: &[("inLine", &[MIDDLE, OLDEST, MIDDLE])],
            },
        },
        Case {
            name: "anchors are ordered oldest notBefore first, whatever the source order",
            rounds: vec![at(
                now(),
                vec![Holds("a", &[NEWEST]), Holds("b", &[MIDDLE, OLDEST])],
            )],
            expect: Expect::Bundle {
                anchors: &[OLDEST, MIDDLE, NEWEST],
                warnings: vec![],
                last_good: &[("a", &[NEWEST]), ("b", &[MIDDLE, OLDEST])],
            },
        },
        Case {
            name: "anchors made in the same second are ordered by their DER",
            rounds: vec![at(now(), vec![Holds("a", &[TWIN_HIGH, TWIN_LOW])])],
            expect: Expect::Bundle {
                anchors: &[TWIN_LOW, TWIN_HIGH],
                warnings: vec![],
                last_good: &[("a", &[TWIN_HIGH, TWIN_LOW])],
            },
        },
        Case {
            name: "the same inputs always give the same PEM bytes",
            rounds: vec![at(
                now(),
                vec![
                    Holds("a", &[NEWEST, TWIN_HIGH]),
                    Holds("b", &[MIDDLE, NEWEST, TWIN_LOW]),
                    Holds("c", &[OLDEST]),
                ],
            )],
            expect: Expect::Bundle {
                anchors: &[OLDEST, MIDDLE, TWIN_LOW, TWIN_HIGH, NEWEST],
                warnings: vec![],
                last_good: &[
                    ("a", &[NEWEST, TWIN_HIGH]),
                    ("b", &[MIDDLE, NEWEST, TWIN_LOW]),
                    ("c", &[OLDEST]),
                ],
            },
        },
        Case {
            name: "an expired anchor is dropped with a warning and the rest kept",
            rounds: vec![at(now(), vec![Holds("roots", &[EXPIRED, MIDDLE])])],
            expect: Expect::Bundle {
                anchors: &[MIDDLE],
                warnings: vec![W::Expired("roots", EXPIRED)],
                last_good: &[("roots", &[MIDDLE])],
            },
        },
        Case {
            name: "an anchor is dropped a second after its notAfter",
            rounds: vec![at(
                cert(EXPIRING).not_after() + TimeDelta::seconds(1),
                vec![Holds("roots", &[EXPIRING, MIDDLE])],
            )],
            expect: Expect::Bundle {
                anchors: &[MIDDLE],
                warnings: vec![W::Expired("roots", EXPIRING)],
                last_good: &[("roots", &[MIDDLE])],
            },
        },
        Case {
            name: "a source whose every anchor expired contributes nothing but the bundle stands on the others",
            rounds: vec![at(
                now(),
                vec![Holds("old roots", &[EXPIRED]), Holds("roots", &[NEWEST])],
            )],
            expect: Expect::Bundle {
                anchors: &[NEWEST],
                warnings: vec![W::Expired("old roots", EXPIRED)],
                last_good: &[("old roots", &[]), ("roots", &[NEWEST])],
            },
        },
        Case {
            name: "a source that turns to garbage keeps its last good anchors and says so",
            rounds: vec![
                at(
                    now() - days(2),
                    vec![Holds("roots", &[OLDEST, MIDDLE]), Holds("other", &[NEWEST])],
                ),
                at(
                    now() - days(1),
                    vec![Bytes("roots", b"garbage"), Holds("other", &[NEWEST])],
                ),
                at(
                    now(),
                    vec![Bytes("roots", b"still garbage"), Holds("other", &[NEWEST])],
                ),
            ],
            expect: Expect::Bundle {
                anchors: &[OLDEST, MIDDLE, NEWEST],
                warnings: vec![W::Failed("roots", "not a PEM certificate bundle", 2)],
                last_good: &[("roots", &[OLDEST, MIDDLE]), ("other", &[NEWEST])],
            },
        },
        Case {
            name: "an unreadable source (missing Secret) keeps its last good anchors",
            rounds: vec![
                at(
                    now() - days(1),
                    vec![Holds("Secret cert-manager/roots", &[MIDDLE])],
                ),
                at(
                    now(),
                    vec![Unreadable(
                        "Secret cert-manager/roots",
                        "Secret cert-manager/roots not found",
                    )],
                ),
            ],
            expect: Expect::Bundle {
                anchors: &[MIDDLE],
                warnings: vec![W::Failed(
                    "Secret cert-manager/roots",
                    "Secret cert-manager/roots not found",
                    1,
                )],
                last_good: &[("Secret cert-manager/roots", &[MIDDLE])],
            },
        },
        Case {
            name: "a source that recovers replaces its last good anchors",
            rounds: vec![
                at(now() - days(2), vec![Holds("roots", &[OLDEST])]),
                at(now() - days(1), vec![Bytes("roots", b"garbage")]),
                at(now(), vec![Holds("roots", &[NEWEST])]),
            ],
            expect: Expect::Bundle {
                anchors: &[NEWEST],
                warnings: vec![],
                last_good: &[("roots", &[NEWEST])],
            },
        },
        Case {
            name: "a garbage source with no last good contributes nothing",
            rounds: vec![at(
                now(),
                vec![
                    Bytes(
                        "pasted",
                        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                    ),
                    Holds("roots", &[MIDDLE]),
                ],
            )],
            expect: Expect::Bundle {
                anchors: &[MIDDLE],
                warnings: vec![W::Failed("pasted", "not a PEM certificate bundle", 0)],
                last_good: &[("pasted", &[]), ("roots", &[MIDDLE])],
            },
        },
        Case {
            name: "an empty source with no last good contributes nothing",
            rounds: vec![at(
                now(),
                vec![Bytes("empty", b""), Holds("roots", &[MIDDLE])],
            )],
            expect: Expect::Bundle {
                anchors: &[MIDDLE],
                warnings: vec![W::Failed("empty", "no PEM `CERTIFICATE` block", 0)],
                last_good: &[("empty", &[]), ("roots", &[MIDDLE])],
            },
        },
        Case {
            name: "a private key beside the anchors makes its source invalid",
            rounds: vec![at(
                now(),
                vec![
                    Holds("ca", &[MIDDLE, PRIVATE_KEY]),
                    Holds("roots", &[NEWEST]),
                ],
            )],
            expect: Expect::Bundle {
                anchors: &[NEWEST],
                warnings: vec![W::Failed("ca", "`PRIVATE KEY` block", 0)],
                last_good: &[("ca", &[]), ("roots", &[NEWEST])],
            },
        },
        Case {
            name: "a leaf (non-CA) certificate makes its source invalid",
            rounds: vec![at(
                now(),
                vec![Holds("mixed", &[MIDDLE, LEAF]), Holds("roots", &[NEWEST])],
            )],
            expect: Expect::Bundle {
                anchors: &[NEWEST],
                warnings: vec![W::Failed(
                    "mixed",
                    "is not a CA certificate, so it cannot be a trust anchor",
                    0,
                )],
                last_good: &[("mixed", &[]), ("roots", &[NEWEST])],
            },
        },
        Case {
            name: "a leaf in a source that was good keeps its last good anchors",
            rounds: vec![
                at(now() - days(1), vec![Holds("mixed", &[MIDDLE])]),
                at(now(), vec![Holds("mixed", &[MIDDLE, LEAF])]),
            ],
            expect: Expect::Bundle {
                anchors: &[MIDDLE],
                warnings: vec![W::Failed("mixed", LEAF_NAME, 1)],
                last_good: &[("mixed", &[MIDDLE])],
            },
        },
        Case {
            name: "last good anchors that have since expired are not kept",
            rounds: vec![
                at(now() - days(30), vec![Holds("roots", &[EXPIRING, MIDDLE])]),
                at(
                    now() + days(20),
                    vec![Unreadable("roots", "Secret roots not found")],
                ),
            ],
            expect: Expect::Bundle {
                anchors: &[MIDDLE],
                warnings: vec![W::Failed("roots", "Secret roots not found", 1)],
                last_good: &[("roots", &[MIDDLE])],
            },
        },
        Case {
            name: "a source whose last good anchors have all expired since leaves nothing to stand on",
            rounds: vec![
                at(now() - days(30), vec![Holds("roots", &[EXPIRING])]),
                at(now() + days(20), vec![Bytes("roots", b"garbage")]),
            ],
            expect: Expect::Refused(&[("roots: ", "not a PEM certificate bundle")]),
        },
        Case {
            name: "a bundle with no valid source is refused, naming each source's reason",
            rounds: vec![at(
                now(),
                vec![
                    Bytes("garbage", b"hello"),
                    Unreadable(
                        "Secret cert-manager/roots",
                        "Secret cert-manager/roots not found",
                    ),
                    Holds("stale", &[EXPIRED]),
                    Holds("leafy", &[LEAF]),
                ],
            )],
            expect: Expect::Refused(&[
                ("garbage: ", "not a PEM certificate bundle"),
                (
                    "Secret cert-manager/roots: ",
                    "Secret cert-manager/roots not found",
                ),
                ("stale: ", "every anchor has expired"),
                ("leafy: ", "is not a CA certificate"),
            ]),
        },
        Case {
            name: "a bundle with no source at all is refused",
            rounds: vec![at(now(), vec![])],
            expect: Expect::Refused(&[("the bundle has no source", "")]),
        },
    ];
    for case in &cases {
        run(case);
    }
}

/// A file cut short while it was written (`old` complete, `new` half
/// there) must not be read as a valid source holding only `old`: that would
/// drop the new anchor from every target in the middle of a rotation,
/// instead of keeping the last good content.
#[test]
fn a_source_cut_short_in_its_last_certificate_keeps_its_last_good_anchors() {
    run(&Case {
        name: "a source cut short in its last certificate keeps its last good anchors",
        rounds: vec![
            at(
                now() - days(1),
                vec![Src::Holds("roots", &[OLDEST, MIDDLE])],
            ),
            at(
                now(),
                vec![Src::Holds("roots", &[OLDEST, MIDDLE_CUT_SHORT])],
            ),
        ],
        expect: Expect::Bundle {
            anchors: &[OLDEST, MIDDLE],
            warnings: vec![W::Failed("roots", "", 2)],
            last_good: &[("roots", &[OLDEST, MIDDLE])],
        },
    });
}

/// RFC 5280 (4.1.2.5): the validity period runs "from notBefore through
/// notAfter, inclusive", as `Certificate::is_valid_at` reads it.
#[test]
fn an_anchor_is_still_valid_at_its_not_after() {
    let edge = cert(EXPIRING).not_after();
    run(&Case {
        name: "an anchor is still valid at its notAfter",
        rounds: vec![at(edge, vec![Src::Holds("roots", &[EXPIRING, MIDDLE])])],
        expect: Expect::Bundle {
            anchors: &[MIDDLE, EXPIRING],
            warnings: vec![],
            last_good: &[("roots", &[EXPIRING, MIDDLE])],
        },
    });
    run(&Case {
        name: "a last good anchor is still kept at its notAfter",
        rounds: vec![
            at(now(), vec![Src::Holds("roots", &[EXPIRING])]),
            at(
                edge,
                vec![Src::Unreadable("roots", "Secret roots not found")],
            ),
        ],
        expect: Expect::Bundle {
            anchors: &[EXPIRING],
            warnings: vec![W::Failed("roots", "Secret roots not found", 1)],
            last_good: &[("roots", &[EXPIRING])],
        },
    });
}

/// The anchors the property tests draw from (none expired at [`NOW`] but
/// `expired`, which the bundle must drop).
fn pool() -> Vec<&'static Certificate> {
    [
        OLDEST, MIDDLE, NEWEST, TWIN_LOW, TWIN_HIGH, EXPIRED, EXPIRING,
    ]
    .iter()
    .map(|n| cert(n))
    .collect()
}

fn armored(bytes: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = b"-----BEGIN CERTIFICATE-----\n".to_vec();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            text.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]);
        }
        text.extend(std::iter::repeat_n(b'=', 3 - chunk.len()));
    }
    text.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
    text
}

#[test]
fn the_armour_helper_makes_the_pem_the_encoder_makes() {
    let der = cert(MIDDLE).der();
    let ours = String::from_utf8(armored(der)).expect("ASCII");
    let theirs = cert(MIDDLE).to_pem();
    assert_eq!(ours.replace('\n', ""), theirs.replace('\n', ""));
}

/// Whatever a source holds, `assemble` answers: a bundle from the other
/// sources with a warning naming this one, or a refusal naming it.
fn assert_refused_or_warned(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let refused_naming_it = |got: &Result<Assembled, BundleError>| match got {
        Ok(_) => Ok(()),
        Err(BundleError::Empty { reasons }) => {
            prop_assert_eq!(reasons.len(), 1);
            prop_assert!(reasons[0].starts_with("random: "), "{:?}", reasons);
            Ok(())
        }
        Err(e) => Err(TestCaseError::fail(format!("unexpected error {e}"))),
    };
    let empty = BTreeMap::new();
    let alone = assemble(&[SourceRead::pem("random", bytes.clone())], &empty, now());
    refused_naming_it(&alone)?;
    let beside = assemble(
        &[
            SourceRead::pem("random", bytes.clone()),
            SourceRead::pem("roots", cert(MIDDLE).to_pem()),
        ],
        &empty,
        now(),
    )
    .expect("the good source stands");
    prop_assert!(fingerprints(&beside.anchors).contains(&cert(MIDDLE).sha256_fingerprint()));
    let last_good = BTreeMap::from([(
        "random".to_string(),
        vec![Anchor::new(cert(NEWEST).clone())],
    )]);
    let kept = assemble(&[SourceRead::pem("random", bytes)], &last_good, now());
    refused_naming_it(&kept)?;
    if let Ok(kept) = &kept
        && kept.degraded()
    {
        prop_assert_eq!(fingerprints(&kept.anchors), fingerprints_of(&[NEWEST]));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn random_bytes_as_a_source_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let empty = BTreeMap::new();
        let got = assemble(&[SourceRead::pem("random", bytes.clone())], &empty, now());
        let Err(BundleError::Empty { reasons }) = got else {
            return Err(TestCaseError::fail(format!("random bytes gave a bundle: {got:?}")));
        };
        prop_assert_eq!(reasons.len(), 1);
        prop_assert!(reasons[0].starts_with("random: "), "{:?}", reasons);
        assert_refused_or_warned(bytes)?;
    }

    #[test]
    fn random_bytes_in_pem_armour_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        assert_refused_or_warned(armored(&bytes))?;
    }

    #[test]
    fn an_anchor_with_bytes_flipped_or_cut_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut der = cert(MIDDLE).der().to_vec();
        for (at, xor) in flips {
            let i = at.index(der.len());
            der[i] ^= xor.max(1);
        }
        let keep = cut.index(der.len() + 1);
        der.truncate(keep);
        assert_refused_or_warned(armored(&der))?;
    }

    #[test]
    fn assembling_is_idempotent(
        picks in proptest::collection::vec(
            (any::<prop::sample::Index>(), 0usize..3),
            0..12,
        ),
        day in -60i64..80,
    ) {
        let pool = pool();
        let mut sources = vec![String::new(), String::new(), String::new()];
        for (pick, source) in &picks {
            sources[*source].push_str(&pick.get(&pool).to_pem());
        }
        let sources: Vec<SourceRead> = sources
            .into_iter()
            .enumerate()
            .filter(|(_, pem)| !pem.is_empty())
            .map(|(i, pem)| SourceRead::pem(format!("source {i}"), pem))
            .collect();
        let at = now() + days(day);
        let empty = BTreeMap::new();
        match assemble(&sources, &empty, at) {
            Ok(first) => {
                let again = assemble(&[SourceRead::pem("bundle", first.pem())], &empty, at)
                    .expect("a bundle assembled from a bundle");
                prop_assert_eq!(&again.anchors, &first.anchors);
                prop_assert!(again.warnings.is_empty(), "{:?}", again.warnings);
                prop_assert_eq!(again.pem(), first.pem());
                let mut want: Vec<&Certificate> = picks
                    .iter()
                    .map(|(pick, _)| *pick.get(&pool))
                    .filter(|c| c.not_after() >= at)
                    .collect();
                want.sort_by(|a, b| (a.not_before(), a.der()).cmp(&(b.not_before(), b.der())));
                want.dedup_by(|a, b| a.der() == b.der());
                let want: Vec<String> = want.iter().map(|c| c.sha256_fingerprint()).collect();
                prop_assert_eq!(fingerprints(&first.anchors), want);
            }
            Err(BundleError::Empty { .. }) => {
                prop_assert!(picks
                    .iter()
                    .all(|(pick, _)| pick.get(&pool).not_after() < at));
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
        }
    }
}

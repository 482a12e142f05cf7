//! `lanyard ca` against the real `openssl`: what Lanyard makes verifies with
//! openssl, what openssl makes (CSRs, anchors, issuers, SEC1 and PKCS#8
//! keys) Lanyard takes, and what must be refused is refused without a file
//! being written.

mod support;

use std::os::unix::fs::PermissionsExt;

use support::{Scratch, WEB, WEB_SPIFFE};

/// `ca init` into `certs/`, then a leaf for `web` with a key made by Lanyard.
fn initialised() -> Scratch {
    let s = Scratch::new();
    s.ca_init("certs", &[]).success();
    s
}

fn openssl_csr(s: &Scratch, name: &str, newkey: &[&str], extra: &[&str]) {
    let subj = format!("/CN={WEB}");
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let mut args = vec!["req", "-new"];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
    args.extend_from_slice(extra);
    s.openssl(&args).success();
}

/// `lanyard ca issue` with a key made by Lanyard, written to `key`.
fn issue_new_key(s: &Scratch, ca_dir: &str, key: &str, out: &str) -> support::Ran {
    s.lanyard(&[
        "ca",
        "issue",
        "--ca-dir",
        ca_dir,
        "--identity",
        WEB,
        "--key-out",
        key,
        "--out",
        out,
    ])
}

/// A SEC1 `EC PRIVATE KEY`, as `openssl ecparam -genkey -noout` writes it.
fn sec1_key(s: &Scratch, out: &str) {
    s.openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        out,
    ])
    .success();
}

fn issue_csr(s: &Scratch, csr: &str, out: &str) -> support::Ran {
    s.lanyard(&[
        "ca",
        "issue",
        "--ca-dir",
        "certs",
        "--csr",
        csr,
        "--identity",
        WEB,
        "--out",
        out,
    ])
}

fn openssl_verifies_leaf(s: &Scratch, chain_file: &str, ca_dir: &str) {
    let parts = s.split_chain(chain_file);
    assert_eq!(
        parts.len(),
        2,
        "the chain file holds the leaf then the issuer"
    );
    let ca = format!("{ca_dir}/ca.crt");
    let issuer = format!("{ca_dir}/issuer.crt");
    let ran = s
        .openssl(&["verify", "-CAfile", &ca, "-untrusted", &issuer, &parts[0]])
        .success();
    assert!(ran.stdout.contains(": OK"), "{}", ran.stdout);
    // The second certificate in the file is the issuer itself.
    assert_eq!(s.read(&parts[1]), s.read(&issuer));
}

#[test]
fn openssl_verifies_the_issuer_and_a_leaf_made_with_a_fresh_key() {
    let s = initialised();
    let ran = s
        .openssl(&["verify", "-CAfile", "certs/ca.crt", "certs/issuer.crt"])
        .success();
    assert!(ran.stdout.contains("certs/issuer.crt: OK"));
    issue_new_key(&s, "certs", "web.key", "web.crt").success();
    openssl_verifies_leaf(&s, "web.crt", "certs");
    // The key is the leaf's: openssl derives the same public key from both.
    let from_key = s
        .openssl(&["pkey", "-in", "web.key", "-pubout"])
        .success()
        .stdout;
    let parts = s.split_chain("web.crt");
    let from_cert = s
        .openssl(&["x509", "-in", &parts[0], "-noout", "-pubkey"])
        .success()
        .stdout;
    assert_eq!(from_key, from_cert);
    let mode = std::fs::metadata(s.path("web.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is written 0600");
}

#[test]
fn openssl_shows_the_profiles_linkerd_expects() {
    let s = initialised();
    let anchor = s.x509_text("certs/ca.crt");
    for want in [
        "Subject: CN = root.linkerd.cluster.local",
        "CA:TRUE, pathlen:1",
        "Certificate Sign, CRL Sign",
        "ASN1 OID: prime256v1",
    ] {
        assert!(anchor.contains(want), "anchor lacks `{want}`:\n{anchor}");
    }
    let issuer = s.x509_text("certs/issuer.crt");
    for want in [
        "Subject: CN = identity.linkerd.cluster.local",
        "Issuer: CN = root.linkerd.cluster.local",
        "CA:TRUE, pathlen:0",
        "Certificate Sign, CRL Sign",
    ] {
        assert!(issuer.contains(want), "issuer lacks `{want}`:\n{issuer}");
    }
    issue_new_key(&s, "certs", "web.key", "web.crt").success();
    let leaf = s.x509_text(&s.split_chain("web.crt")[0]);
    for want in [
        &format!("DNS:{WEB}") as &str,
        &format!("URI:{WEB_SPIFFE}"),
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "CA:FALSE",
        "Digital Signature",
        "Issuer: CN = identity.linkerd.cluster.local",
    ] {
        assert!(leaf.contains(want), "leaf lacks `{want}`:\n{leaf}");
    }
    let serial = s
        .openssl(&[
            "x509",
            "-in",
            &s.split_chain("web.crt")[0],
            "-noout",
            "-serial",
        ])
        .success()
        .stdout;
    let hex = serial.trim().trim_start_matches("serial=");
    assert!(hex.len() >= 16, "a serial of at least 64 bits: {hex}");
    // 24 hours, backdated 20 seconds: 86420 s between the two dates.
    let dates = s
        .openssl(&[
            "x509",
            "-in",
            &s.split_chain("web.crt")[0],
            "-noout",
            "-startdate",
            "-enddate",
        ])
        .success()
        .stdout;
    let date = |field: &str| {
        let line = dates
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .expect("openssl prints the field");
        chrono::NaiveDateTime::parse_from_str(line, "%b %e %H:%M:%S %Y GMT")
            .unwrap_or_else(|e| panic!("`{line}`: {e}"))
    };
    let span = date("notAfter=") - date("notBefore=");
    assert_eq!(span.num_seconds(), 86_420, "{dates}");
}

#[test]
fn csrs_made_by_openssl_req_are_signed_for_every_accepted_key() {
    let s = initialised();
    let keys: [(&str, &[&str]); 4] = [
        (
            "p256",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        (
            "p384",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
        ("ed25519", &["-newkey", "ed25519"]),
        ("rsa2048", &["-newkey", "rsa:2048"]),
    ];
    for (name, newkey) in keys {
        openssl_csr(&s, name, newkey, &[]);
        let out = format!("{name}.crt");
        issue_csr(&s, &format!("{name}.csr"), &out).success();
        openssl_verifies_leaf(&s, &out, "certs");
    }
}

#[test]
fn a_csr_that_asks_for_exactly_its_identity_and_spiffe_id_is_signed() {
    let s = initialised();
    let san = format!("subjectAltName=DNS:{WEB},URI:{WEB_SPIFFE}");
    openssl_csr(
        &s,
        "exact",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &["-addext", &san],
    );
    issue_csr(&s, "exact.csr", "exact.crt").success();
    openssl_verifies_leaf(&s, "exact.crt", "certs");
}

#[test]
fn bad_csrs_are_refused_each_with_its_reason_and_nothing_is_written() {
    let s = initialised();
    let p256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let extra_san = format!("subjectAltName=DNS:{WEB},DNS:evil.example");
    openssl_csr(&s, "extra-san", p256, &["-addext", &extra_san]);
    openssl_csr(
        &s,
        "ca",
        p256,
        &["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    openssl_csr(&s, "rsa1024", &["-newkey", "rsa:1024"], &[]);
    openssl_csr(
        &s,
        "p521",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
        &[],
    );
    openssl_csr(&s, "good", p256, &[]);
    // Corrupt the signature: flip a bit in the last byte of the DER.
    s.openssl(&[
        "req", "-in", "good.csr", "-outform", "DER", "-out", "good.der",
    ])
    .success();
    let mut der = std::fs::read(s.path("good.der")).unwrap();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    s.write("bad-sig.der", &der);
    s.openssl(&[
        "req",
        "-inform",
        "DER",
        "-in",
        "bad-sig.der",
        "-out",
        "bad-sig.csr",
    ])
    .success();
    s.write("garbage.csr", "this is not a certificate signing request\n");

    let cases = [
        ("extra-san.csr", "requests SAN `DNS:evil.example`"),
        ("ca.csr", "asks to be a CA"),
        ("rsa1024.csr", "RSA key of 1024 bits"),
        ("p521.csr", "EC curve P-521"),
        ("bad-sig.csr", "signature does not verify"),
        ("garbage.csr", "CSR is malformed"),
    ];
    for (csr, reason) in cases {
        let out = format!("{csr}.crt");
        issue_csr(&s, csr, &out).failure_saying(reason);
        assert!(!s.exists(&out), "{csr}: nothing is written");
    }

    // A valid CSR, but for an identity outside the identity domain.
    let ran = s.lanyard(&[
        "ca",
        "issue",
        "--ca-dir",
        "certs",
        "--csr",
        "good.csr",
        "--identity",
        "web.emojivoto.serviceaccount.identity.other.example.org",
        "--out",
        "other.crt",
    ]);
    ran.failure_saying("is not in the identity domain `identity.linkerd.cluster.local`");
    assert!(!s.exists("other.crt"));
}

/// Builds an anchor and issuer with openssl alone, keys made by `keygen`.
fn openssl_pki(s: &Scratch, dir: &str, keygen: impl Fn(&Scratch, &str)) {
    std::fs::create_dir_all(s.path(dir)).unwrap();
    let p = |name: &str| format!("{dir}/{name}");
    keygen(s, &p("ca.key"));
    keygen(s, &p("issuer.key"));
    s.openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &p("ca.key"),
        "-subj",
        "/CN=root.linkerd.cluster.local",
        "-days",
        "3650",
        "-addext",
        "basicConstraints=critical,CA:TRUE,pathlen:1",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        &p("ca.crt"),
    ])
    .success();
    s.openssl(&[
        "req",
        "-new",
        "-key",
        &p("issuer.key"),
        "-subj",
        "/CN=identity.linkerd.cluster.local",
        "-out",
        &p("issuer.csr"),
    ])
    .success();
    s.write(
        &p("issuer.ext"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\n\
         keyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid\n",
    );
    s.openssl(&[
        "x509",
        "-req",
        "-in",
        &p("issuer.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "365",
        "-extfile",
        &p("issuer.ext"),
        "-out",
        &p("issuer.crt"),
    ])
    .success();
}

#[test]
fn anchors_and_issuers_made_by_openssl_import_with_sec1_and_pkcs8_keys() {
    let s = Scratch::new();
    type Keygen = fn(&Scratch, &str);
    let keygens: [(&str, Keygen, &str); 3] = [
        ("sec1", sec1_key, "BEGIN EC PRIVATE KEY"),
        (
            "sec1-with-params",
            |s, out| {
                s.openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-out", out])
                    .success();
            },
            "BEGIN EC PARAMETERS",
        ),
        (
            "pkcs8",
            |s, out| {
                s.openssl(&[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    out,
                ])
                .success();
            },
            "BEGIN PRIVATE KEY",
        ),
    ];
    for (dir, keygen, marker) in keygens {
        openssl_pki(&s, dir, keygen);
        assert!(
            s.read(&format!("{dir}/issuer.key")).contains(marker),
            "{dir}"
        );
        let check = s.lanyard(&["ca", "check", "--ca-dir", dir]).success();
        assert!(
            check.stdout.contains("Status check results are √"),
            "{dir}: {}",
            check.stdout
        );
        let out = format!("{dir}.crt");
        issue_new_key(&s, dir, &format!("{dir}.key"), &out).success();
        openssl_verifies_leaf(&s, &out, dir);
    }
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused() {
    let s = initialised();
    s.ca_init("other", &[]).success();
    std::fs::copy(s.path("other/issuer.key"), s.path("certs/issuer.key")).unwrap();
    let ran = s.lanyard(&["ca", "check", "--ca-dir", "certs"]);
    assert_eq!(ran.code, Some(1));
    ran.failure_saying("the identity issuer key does not match its certificate");
    issue_new_key(&s, "certs", "web.key", "web.crt").failure_saying("does not match");
    assert!(
        !s.exists("web.crt") && !s.exists("web.key"),
        "nothing is written"
    );

    // The anchor's key, when kept beside it, is checked too.
    let s = initialised();
    s.ca_init("other", &[]).success();
    std::fs::copy(s.path("other/ca.key"), s.path("certs/ca.key")).unwrap();
    s.lanyard(&["ca", "check", "--ca-dir", "certs"])
        .failure_saying("is not the key of any trust anchor");
}

#[test]
fn check_warns_sixty_days_ahead_and_init_clamps_the_issuer_to_the_anchor() {
    let s = Scratch::new();
    s.ca_init("soon", &["--issuer-lifetime", "720h"]).success();
    let ran = s.lanyard(&["ca", "check", "--ca-dir", "soon"]).success();
    assert!(ran.stdout.contains("‼"), "{}", ran.stdout);
    assert!(ran.stdout.contains("expires in 29 days"), "{}", ran.stdout);

    let ran = s
        .ca_init(
            "clamped",
            &["--anchor-lifetime", "100h", "--issuer-lifetime", "8760h"],
        )
        .success();
    assert!(
        ran.stderr.contains("clamped to the anchor's notAfter"),
        "{}",
        ran.stderr
    );
    let end = |f: &str| {
        s.openssl(&["x509", "-in", f, "-noout", "-enddate"])
            .success()
            .stdout
    };
    assert_eq!(end("clamped/issuer.crt"), end("clamped/ca.crt"));
}

#[test]
fn init_refuses_to_overwrite_without_force_and_writes_keys_0600() {
    let s = initialised();
    let before: Vec<_> = ["ca.crt", "ca.key", "issuer.crt", "issuer.key"]
        .iter()
        .map(|f| s.read(&format!("certs/{f}")))
        .collect();
    s.ca_init("certs", &[])
        .failure_saying("certs/ca.crt, certs/ca.key, certs/issuer.crt, certs/issuer.key already exist; pass --force to replace them");
    let after: Vec<_> = ["ca.crt", "ca.key", "issuer.crt", "issuer.key"]
        .iter()
        .map(|f| s.read(&format!("certs/{f}")))
        .collect();
    assert_eq!(before, after, "nothing changed");
    s.ca_init("certs", &["--force"]).success();
    assert_ne!(
        s.read("certs/ca.crt"),
        before[0],
        "--force replaced the anchor"
    );
    for (file, mode) in [("ca.key", 0o600), ("issuer.key", 0o600), ("ca.crt", 0o644)] {
        let got = std::fs::metadata(s.path(&format!("certs/{file}")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(got & 0o777, mode, "{file}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(s.path("certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary files left: {leftovers:?}"
    );
}

#[test]
fn inspect_explains_a_chain_and_says_whether_it_verifies() {
    let s = initialised();
    issue_new_key(&s, "certs", "web.key", "web.crt").success();
    let ran = s
        .lanyard(&["ca", "inspect", "web.crt", "--ca", "certs/ca.crt"])
        .success();
    for want in [
        &format!("DNS:{WEB}") as &str,
        &format!("URI:{WEB_SPIFFE}"),
        "CA:TRUE, pathlen:0",
        "ECDSA P-256",
        "valid for another 23h",
        "Chain:          verifies",
    ] {
        assert!(ran.stdout.contains(want), "lacks `{want}`:\n{}", ran.stdout);
    }
    s.ca_init("other", &[]).success();
    let ran = s.lanyard(&["ca", "inspect", "web.crt", "--ca", "other/ca.crt"]);
    assert_eq!(ran.code, Some(1));
    assert!(ran.stdout.contains("DOES NOT VERIFY"), "{}", ran.stdout);
    s.lanyard(&["ca", "inspect", "web.key"])
        .failure_saying("where a certificate was expected");
}

#[test]
fn an_expired_issuer_made_by_openssl_ca_is_refused() {
    let s = Scratch::new();
    openssl_pki(&s, "pki", sec1_key);
    // Re-sign the issuer with explicit dates in the past.
    s.write("pki/index.txt", "");
    s.write("pki/serial", "1000\n");
    s.write(
        "pki/ca.cnf",
        "[ca]\ndefault_ca = d\n[d]\ndatabase = pki/index.txt\nnew_certs_dir = pki\n\
         serial = pki/serial\ndefault_md = sha256\npolicy = p\n\
         [p]\ncommonName = supplied\n\
         [v3]\nbasicConstraints = critical,CA:TRUE,pathlen:0\nkeyUsage = critical,keyCertSign,cRLSign\n",
    );
    s.openssl(&[
        "ca",
        "-batch",
        "-config",
        "pki/ca.cnf",
        "-cert",
        "pki/ca.crt",
        "-keyfile",
        "pki/ca.key",
        "-in",
        "pki/issuer.csr",
        "-out",
        "pki/issuer.crt",
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200201000000Z",
        "-extensions",
        "v3",
        "-notext",
    ])
    .success();
    s.lanyard(&["ca", "check", "--ca-dir", "pki"])
        .failure_saying(
            "the identity issuer `CN=identity.linkerd.cluster.local` expired at 2020-02-01",
        );
    issue_new_key(&s, "pki", "web.key", "web.crt").failure_saying("expired");
    assert!(!s.exists("web.crt"));
}

#[test]
fn encrypted_issuer_keys_are_refused_with_a_way_out() {
    let s = Scratch::new();
    openssl_pki(&s, "pki", sec1_key);
    let plain = s.read("pki/issuer.key");
    let encryptions: [&[&str]; 2] = [
        // Legacy PEM encryption keeps the `EC PRIVATE KEY` label.
        &[
            "ec",
            "-in",
            "pki/plain.key",
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            "pki/issuer.key",
        ],
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "pki/plain.key",
            "-v2",
            "aes256",
            "-passout",
            "pass:secret",
            "-out",
            "pki/issuer.key",
        ],
    ];
    for args in encryptions {
        s.write("pki/plain.key", &plain);
        s.openssl(args).success();
        s.lanyard(&["ca", "check", "--ca-dir", "pki"])
            .failure_saying("the private key is encrypted");
    }
}

#[test]
fn init_can_keep_an_existing_anchor_and_make_only_a_new_issuer() {
    let s = Scratch::new();
    openssl_pki(&s, "old", sec1_key);
    s.ca_init(
        "new",
        &["--anchor-cert", "old/ca.crt", "--anchor-key", "old/ca.key"],
    )
    .success();
    assert_eq!(
        s.read("new/ca.crt"),
        s.read("old/ca.crt"),
        "the anchor is kept"
    );
    s.openssl(&["verify", "-CAfile", "old/ca.crt", "new/issuer.crt"])
        .success();
    issue_new_key(&s, "new", "web.key", "web.crt").success();
    openssl_verifies_leaf(&s, "web.crt", "new");

    // The wrong key for the anchor: refused, and nothing is written.
    s.ca_init("other", &[]).success();
    s.ca_init(
        "bad",
        &[
            "--anchor-cert",
            "old/ca.crt",
            "--anchor-key",
            "other/ca.key",
        ],
    )
    .failure_saying("the trust anchor key does not match its certificate");
    assert!(!s.exists("bad/ca.crt") && !s.exists("bad/issuer.key"));

    // An issuer is not an anchor to sign with.
    s.ca_init(
        "bad",
        &[
            "--anchor-cert",
            "old/issuer.crt",
            "--anchor-key",
            "old/issuer.key",
        ],
    )
    .failure_saying("has pathlen:0, so it cannot sign an identity issuer");
    assert!(!s.exists("bad/ca.crt"));
}

#[test]
fn init_rotates_the_issuer_in_place_keeping_the_anchor_it_was_given() {
    let s = Scratch::new();
    openssl_pki(&s, "d", sec1_key);
    let anchor = ["d/ca.crt", "d/ca.key"].map(|f| s.read(f));
    let old_issuer = s.read("d/issuer.crt");
    let in_place = ["--anchor-cert", "d/ca.crt", "--anchor-key", "d/ca.key"];
    // The kept anchor is not "overwritten"; the issuer files would be.
    let refused = s
        .ca_init("d", &in_place)
        .failure_saying("d/issuer.crt, d/issuer.key already exist; pass --force to replace them");
    assert!(!refused.stderr.contains("ca.crt"), "{}", refused.stderr);
    assert_eq!(s.read("d/issuer.crt"), old_issuer, "nothing changed");

    // Without an old issuer there is nothing to overwrite at all.
    std::fs::remove_file(s.path("d/issuer.crt")).unwrap();
    std::fs::remove_file(s.path("d/issuer.key")).unwrap();
    s.ca_init("d", &in_place).success();
    assert_eq!(
        ["d/ca.crt", "d/ca.key"].map(|f| s.read(f)),
        anchor,
        "the anchor and its key are kept byte for byte"
    );
    s.openssl(&["verify", "-CAfile", "d/ca.crt", "d/issuer.crt"])
        .success();

    // Rotating again, told to replace: the new issuer verifies against
    // the same anchor, which is still untouched.
    let first = s.read("d/issuer.crt");
    let mut forced = in_place.to_vec();
    forced.push("--force");
    s.ca_init("d", &forced).success();
    assert_ne!(s.read("d/issuer.crt"), first, "a new issuer");
    assert_eq!(["d/ca.crt", "d/ca.key"].map(|f| s.read(f)), anchor);
    s.openssl(&["verify", "-CAfile", "d/ca.crt", "d/issuer.crt"])
        .success();
    issue_new_key(&s, "d", "web.key", "web.crt").success();
    openssl_verifies_leaf(&s, "web.crt", "d");
}

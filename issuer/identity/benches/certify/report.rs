//! The report: the table's rows and the checks on the samples.

use std::net::SocketAddr;
use std::time::Duration;

use lanyard_issuer::Certificate;
use tokio::runtime::Runtime;

use crate::*;

/// Where one transport's servers listen.
pub(crate) struct Targets<'a> {
    pub(crate) lanyard: SocketAddr,
    /// cfssl's address and process id.
    pub(crate) cfssl: Option<(SocketAddr, u32)>,
    pub(crate) tls: Option<(&'a Certificate, &'a str, tokio_rustls::TlsConnector)>,
}

/// One request to each server, its leaf verified against the anchor, so
/// the figures below are of real signatures. A cfssl that fails here is
/// skipped.
pub(crate) fn check_samples(
    fixture: &mut Fixture,
    clients_rt: &Runtime,
    targets: &Targets<'_>,
) -> Result<(), String> {
    let request = fixture.lanyard_requests(1).remove(0);
    let tls = targets.tls.as_ref().map(|(a, n, _)| (*a, *n));
    let mut client = clients_rt
        .block_on(lanyard_clients(targets.lanyard, 1, tls))
        .remove(0);
    let response = check_lanyard(clients_rt.block_on(client.certify(request)))
        .expect("the identity service signs a CSR");
    let mut chain =
        vec![Certificate::from_der(&response.leaf_certificate, "leaf").expect("a leaf")];
    for der in &response.intermediate_certificates {
        chain.push(Certificate::from_der(der, "intermediate").expect("an intermediate"));
    }
    let sans = fixture
        .verify_sample(&chain)
        .expect("Lanyard's leaf verifies");
    println!("  sample lanyard leaf verifies against the anchor ({sans})");

    let Some((addr, _)) = targets.cfssl else {
        return Ok(());
    };
    let body = fixture.cfssl_requests(1).remove(0);
    let connector = targets
        .tls
        .as_ref()
        .map(|(_, name, connector)| (connector.clone(), name.to_string()));
    let pem = clients_rt.block_on(async {
        let mut client = CfsslClient::connect(addr, connector.as_ref()).await;
        client.sign(body).await
    })?;
    let mut chain = Certificate::parse_pem_bundle(pem.as_bytes(), "cfssl leaf")
        .map_err(|e| format!("cfssl's certificate does not parse: {e}"))?;
    chain.push(fixture.issuer.certificate().clone());
    let sans = fixture
        .verify_sample(&chain)
        .map_err(|e| format!("cfssl's leaf {e}"))?;
    println!("  sample cfssl leaf verifies against the anchor ({sans})");
    Ok(())
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Microseconds of CPU per signed certificate, or `-`.
pub(crate) fn cpu_cell(tally: &Tally, cpu: Option<Duration>) -> String {
    tally
        .per_signed(cpu)
        .map_or_else(|| "-".to_string(), |d| format!("{:.0}", us(d)))
}

pub(crate) fn print_header() {
    println!(
        "  {:<9} {:>7}  {:<7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "transport",
        "clients",
        "peer",
        "signs/s",
        "p50 ms",
        "p99 ms",
        "srv us",
        "cli us",
        "signed",
        "failed"
    );
}

pub(crate) fn print_row(transport: &str, clients: usize, peer: &str, tally: &Tally) {
    println!(
        "  {transport:<9} {clients:>7}  {peer:<7} {:>9.0} {:>8.2} {:>8.2} {:>8} {:>8} {:>8} {:>8}{}",
        tally.rate(),
        ms(tally.percentile(0.50)),
        ms(tally.percentile(0.99)),
        cpu_cell(tally, tally.server_cpu),
        cpu_cell(tally, tally.client_cpu),
        tally.signed(),
        tally.failures,
        if tally.ran_out {
            "  (request pool ran out early; rate is over the time actually run)"
        } else {
            ""
        }
    );
    if let Some(reason) = &tally.first_failure {
        println!("      first {peer} failure: {reason}");
    }
}

/// The server's CPU per `Certify` against the signing limit: what
/// `IdentityIssuer::issue` alone (CSR checks and signature) costs on one
/// thread, timed between the same rounds (median; `spread` is the fastest
/// and slowest round, shown because on a shared machine it can move more
/// than the transport's share). The rest is transport: gRPC, HTTP/2, TLS,
/// the runtime, the token check and the bookkeeping. The goal (issue 17) is
/// at most [`SIGNING_LIMIT_GOAL`] at 16 clients over TLS.
pub(crate) fn print_signing_limit(
    transport: &str,
    clients: usize,
    per_certify: Duration,
    issue_alone: Duration,
    spread: Option<(Duration, Duration)>,
) {
    let over = |alone: Duration| per_certify.as_secs_f64() / alone.as_secs_f64().max(1e-12);
    let ratio = over(issue_alone);
    let goal = if transport == "tls" && clients == CONCURRENCY[CONCURRENCY.len() - 1] {
        if ratio <= SIGNING_LIMIT_GOAL {
            format!(" (goal <= {SIGNING_LIMIT_GOAL:.2}x: met)")
        } else {
            format!(" (goal <= {SIGNING_LIMIT_GOAL:.2}x: NOT met)")
        }
    } else {
        String::new()
    };
    let spread = spread.map_or(String::new(), |(fastest, slowest)| {
        format!(
            " (rounds {:.0}-{:.0} us: {:.2}x-{:.2}x)",
            us(fastest),
            us(slowest),
            over(slowest),
            over(fastest),
        )
    });
    println!(
        "      server CPU per Certify({LANYARD}) {:.0} us / IdentityIssuer::issue alone {:.0} us \
         = {ratio:.2}x{goal}{spread}",
        us(per_certify),
        us(issue_alone),
    );
}

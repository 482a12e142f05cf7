//! Tests against a real API server: they run when
//! `LANYARD_TEST_KUBECONFIG` names a kubeconfig, and say they are skipped
//! when it does not.
#![allow(dead_code, reason = "each test binary uses a different part")]

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use lanyard_crds::time::{Clock, SystemClock};

pub const ENV: &str = "LANYARD_TEST_KUBECONFIG";

/// The client for `$LANYARD_TEST_KUBECONFIG`, or `None` (after saying the
/// test is skipped) when it is not set.
pub async fn live_client(test: &str) -> Option<Client> {
    let config = live_config(test).await?;
    Some(Client::try_from(config).expect("a client from the kubeconfig"))
}

/// The configuration `$LANYARD_TEST_KUBECONFIG` names, or `None` (after
/// saying the test is skipped) when it is not set.
pub async fn live_config(test: &str) -> Option<kube::Config> {
    let Some(path) = std::env::var_os(ENV).filter(|p| !p.is_empty()) else {
        // Straight to the process's stderr, past the test harness's output
        // capture, so the skip shows in every `cargo test` log.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {ENV} is not set; {test} needs a real API server (set it to a kubeconfig path)"
        );
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("reading {ENV}={}: {e}", path.to_string_lossy()));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading {ENV}={}: {e}", path.to_string_lossy()));
    Some(config)
}

/// A name no earlier run used.
pub fn unique(prefix: &str) -> String {
    let now = SystemClock.now();
    format!(
        "{prefix}-{}-{}",
        now.timestamp(),
        now.timestamp_subsec_micros() ^ std::process::id()
    )
}

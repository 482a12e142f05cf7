//! The `lanyard up` loop: reconcile, then sleep until the next renewal, a
//! manifest change, or shutdown, whichever comes first.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use lanyard_crds::time::Clock;
use notify::Watcher;

use super::{LocalController, LocalError};
use crate::metrics;

/// The longest sleep between passes, so Secrets edited by hand (a corrupt
/// `tls.crt`, a deleted key) are noticed even without a manifest change.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// Errors of the loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A pass failed to read or write the state directory.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The metrics listener could not start.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The manifest watcher could not start.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The directory.
        path: String,
        /// Why.
        source: notify::Error,
    },
}

/// Runs the local controller until `shutdown` completes. Serves metrics on
/// `metrics_addr`; `on_ready` gets the bound address once serving.
pub async fn run<C: Clock + 'static>(
    mut controller: LocalController<C>,
    metrics_addr: SocketAddr,
    on_ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let (bound, server) = metrics::serve(metrics_addr, {
        let metrics = controller.metrics().clone();
        move || metrics.encode()
    })
    .await
    .map_err(|source| RunError::Metrics {
        addr: metrics_addr,
        source,
    })?;
    let server = tokio::spawn(server);
    on_ready(bound);

    let (changed_tx, mut changed_rx) = tokio::sync::mpsc::channel::<()>(1);
    let manifests_dir = controller.options.manifests_dir();
    std::fs::create_dir_all(&manifests_dir).map_err(|source| {
        LocalError::Store(super::SecretStoreError {
            path: manifests_dir.clone(),
            source,
        })
    })?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = changed_tx.try_send(());
        }
    })
    .map_err(|source| RunError::Watch {
        path: manifests_dir.display().to_string(),
        source,
    })?;
    watcher
        .watch(&manifests_dir, notify::RecursiveMode::NonRecursive)
        .map_err(|source| RunError::Watch {
            path: manifests_dir.display().to_string(),
            source,
        })?;

    tokio::pin!(shutdown);
    let mut reported = std::collections::BTreeSet::new();
    // The first pass, every manifest change and every resync look at
    // everything; wakes for a renewal look only at what is due.
    let mut full = true;
    loop {
        let report = tokio::task::block_in_place(|| {
            if full {
                controller.reconcile_all()
            } else {
                controller.reconcile_due()
            }
        })?;
        // Report each broken manifest once, not on every pass.
        let errors: std::collections::BTreeSet<String> = report
            .manifest_errors
            .iter()
            .map(|e| e.to_string())
            .collect();
        for error in errors.difference(&reported) {
            tracing::error!(%error, "manifest ignored; the last good version (if any) stays in force");
        }
        if full {
            reported = errors;
        }
        let until_due = report
            .next_wake
            .map(|at| {
                (at - controller.clock.now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
            })
            .unwrap_or(RESYNC_INTERVAL);
        let wait = until_due.min(RESYNC_INTERVAL);
        full = until_due >= RESYNC_INTERVAL;
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(wait) => {}
            Some(()) = changed_rx.recv() => {
                full = true;
                // Let an editor finish writing before reading.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while changed_rx.try_recv().is_ok() {}
            }
        }
    }
    server.abort();
    Ok(())
}

//! The `lanyard up` loop: reconcile, then sleep until the next renewal, a
//! manifest change, or shutdown, whichever comes first. Only a change to a
//! manifest wakes it: reading the directory itself raises inotify events
//! too, and treating those as changes kept an idle loop busy.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lanyard_crds::time::Clock;
use lanyard_runtime::{Backoff, Shutdown};
use notify::Watcher;
use notify::event::{EventKind, ModifyKind};

use super::{LocalController, LocalError};

/// The longest sleep between passes, so Secrets edited by hand (a corrupt
/// `tls.crt`, a deleted key) are noticed even without a manifest change.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// How long the loop lets an editor finish writing after the first change
/// event before it reads; later events in that window join the same pass.
pub const COALESCE: Duration = Duration::from_millis(100);

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

/// Whether a watcher event can change what the manifests say: a manifest
/// file (`*.yaml`, `*.yml`, `*.json`) created, written, renamed or
/// removed. Opening, reading or closing the directory or a file, and
/// metadata changes, do not wake a pass.
pub fn is_manifest_change(event: &notify::Event) -> bool {
    let changes = match event.kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(kind) => !matches!(kind, ModifyKind::Metadata(_)),
        EventKind::Any | EventKind::Access(_) | EventKind::Other => false,
    };
    changes && event.paths.iter().any(|path| is_manifest(path))
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

/// Runs the local controller until `shutdown`, which also stops a pass
/// between Certificates. Serves `/metrics` and `/ready` on `metrics_addr`:
/// ready once the first pass has finished and `ready()` (the rest of the
/// process, e.g. an identity issuer loaded) says so. `on_ready` gets the
/// bound address once serving. A pass that cannot read or write the state
/// directory is logged and tried again with backoff; it never ends the
/// loop.
pub async fn run<C: Clock + 'static>(
    controller: LocalController<C>,
    metrics_addr: SocketAddr,
    ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
    on_ready: impl FnOnce(SocketAddr),
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let mut controller = controller.with_shutdown(shutdown.clone());
    let first_pass_done = Arc::new(AtomicBool::new(false));
    let endpoints = lanyard_runtime::admin::Endpoints::new({
        let metrics = controller.metrics().clone();
        move || metrics.encode()
    })
    .with_readiness({
        let first_pass_done = first_pass_done.clone();
        move || {
            if first_pass_done.load(Ordering::Acquire) && ready() {
                Ok("ready")
            } else {
                Err("not ready")
            }
        }
    });
    let (bound, server) = lanyard_runtime::admin::serve(metrics_addr, endpoints, shutdown.clone())
        .await
        .map_err(|source| RunError::Metrics {
            addr: metrics_addr,
            source,
        })?;
    let server = tokio::spawn(server);
    on_ready(bound);

    let (changed_tx, mut changed_rx) = tokio::sync::mpsc::channel::<()>(1);
    let manifests_dir = controller.options.manifests_dir();
    // Watch the state directory for the manifests directory to appear
    // (first start on a full disk) and the manifests directory itself.
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| {
            is_manifest_change(&event) || is_manifests_dir(&event) || is_rotate_request(&event)
        }) {
            let _ = changed_tx.try_send(());
        }
    })
    .map_err(|source| RunError::Watch {
        path: manifests_dir.display().to_string(),
        source,
    })?;
    let mut watching = false;
    // `lanyard anchor rotate` leaves its request here.
    let anchors_dir = super::trust::anchors_dir(&controller.options.state_dir);
    if std::fs::create_dir_all(&anchors_dir).is_ok() {
        watcher
            .watch(&anchors_dir, notify::RecursiveMode::NonRecursive)
            .map_err(|source| RunError::Watch {
                path: anchors_dir.display().to_string(),
                source,
            })?;
    }

    let mut reported = std::collections::BTreeSet::new();
    let mut retry = Backoff::new(Duration::from_secs(1), RESYNC_INTERVAL);
    // The first pass, every manifest change and every resync look at
    // everything; wakes for a renewal look only at what is due.
    let mut full = true;
    loop {
        if !watching {
            watching = watch(&mut watcher, &controller.options.state_dir, &manifests_dir)?;
        }
        let result = tokio::task::block_in_place(|| {
            if full {
                controller.reconcile_all()
            } else {
                controller.reconcile_due()
            }
        });
        let wait = match result {
            Ok(report) => {
                retry.reset();
                first_pass_done.store(true, Ordering::Release);
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
                full = until_due >= RESYNC_INTERVAL;
                until_due.min(RESYNC_INTERVAL)
            }
            Err(LocalError::Cancelled) => break,
            Err(error) => {
                let wait = retry.next_delay();
                tracing::error!(%error, retry_in = ?wait, "pass failed; the identity service keeps serving the issuer it has");
                full = true;
                wait
            }
        };
        tokio::select! {
            () = shutdown.wait() => break,
            () = tokio::time::sleep(wait) => {}
            Some(()) = changed_rx.recv() => {
                full = true;
                // Let an editor finish writing before reading.
                tokio::time::sleep(COALESCE).await;
                while changed_rx.try_recv().is_ok() {}
            }
        }
    }
    server.abort();
    Ok(())
}

/// A rotation request written by `lanyard anchor rotate`.
fn is_rotate_request(event: &notify::Event) -> bool {
    matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_))
        && event
            .paths
            .iter()
            .any(|p| super::trust::is_rotate_request(p))
}

fn is_manifests_dir(event: &notify::Event) -> bool {
    matches!(event.kind, EventKind::Create(_))
        && event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == "manifests"))
}

/// Starts watching the manifests directory once it exists (until then, the
/// state directory, for it to appear). Returns whether the manifests
/// directory is watched.
fn watch(
    watcher: &mut notify::RecommendedWatcher,
    state_dir: &Path,
    manifests_dir: &Path,
) -> Result<bool, RunError> {
    let target = if manifests_dir.is_dir() {
        manifests_dir
    } else {
        state_dir
    };
    watcher
        .watch(target, notify::RecursiveMode::NonRecursive)
        .map_err(|source| RunError::Watch {
            path: target.display().to_string(),
            source,
        })?;
    if target == manifests_dir {
        let _ = watcher.unwatch(state_dir);
    }
    Ok(target == manifests_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, RenameMode};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(path.into())
    }

    #[test]
    fn only_changes_to_manifest_files_wake_a_pass() {
        let cases = [
            (
                "opening the manifests directory to read it",
                event(
                    EventKind::Access(AccessKind::Open(AccessMode::Any)),
                    "/s/manifests",
                ),
                false,
            ),
            (
                "closing a manifest after reading it",
                event(
                    EventKind::Access(AccessKind::Close(AccessMode::Read)),
                    "/s/manifests/a.yaml",
                ),
                false,
            ),
            (
                "touching a manifest (metadata only)",
                event(
                    EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                    "/s/manifests/a.yaml",
                ),
                false,
            ),
            (
                "an editor's swap file",
                event(
                    EventKind::Create(CreateKind::File),
                    "/s/manifests/.a.yaml.swp",
                ),
                false,
            ),
            (
                "a temporary file of an atomic write",
                event(
                    EventKind::Create(CreateKind::File),
                    "/s/manifests/.tmp-x1y2",
                ),
                false,
            ),
            (
                "a README beside the manifests",
                event(
                    EventKind::Create(CreateKind::File),
                    "/s/manifests/README.md",
                ),
                false,
            ),
            (
                "a new manifest",
                event(EventKind::Create(CreateKind::File), "/s/manifests/a.yaml"),
                true,
            ),
            (
                "a manifest written",
                event(
                    EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                    "/s/manifests/b.yml",
                ),
                true,
            ),
            (
                "a manifest renamed into place",
                event(
                    EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                    "/s/manifests/c.json",
                ),
                true,
            ),
            (
                "a manifest removed",
                event(
                    EventKind::Remove(notify::event::RemoveKind::File),
                    "/s/manifests/a.yaml",
                ),
                true,
            ),
        ];
        for (name, event, wakes) in cases {
            assert_eq!(is_manifest_change(&event), wakes, "{name}");
        }
    }
}

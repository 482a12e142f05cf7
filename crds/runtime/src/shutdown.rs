//! Stopping on SIGINT or SIGTERM at any moment. The handlers are installed
//! when [`Shutdown::on_signals`] returns, before any work starts, so a
//! signal that arrives while a long first pass runs is not lost: every part
//! of the process holds a clone and either awaits [`Shutdown::wait`] or
//! asks [`Shutdown::is_triggered`] between items of work.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// One process-wide stop request, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A stop request that only [`Shutdown::trigger`] sets (tests, or a
    /// part that stops its own children).
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// A stop request set by the first SIGINT or SIGTERM. A second signal
    /// ends the process at once (status 130), for a user who will not wait
    /// for a drain. Must be called within a Tokio runtime; the handlers are
    /// in place when it returns.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            };
            tracing::info!(signal = name, "stopping");
            trigger.trigger();
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("lanyard: second signal; exiting without waiting");
            std::process::exit(130);
        });
        Ok(shutdown)
    }

    /// Asks every holder to stop.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// Whether a stop was asked for: long synchronous work checks this
    /// between items.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes once a stop is asked for.
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// [`Shutdown::wait`] as an owned future, for APIs that take a
    /// `'static` shutdown future.
    pub fn wait_owned(self) -> impl Future<Output = ()> + Send + 'static {
        self.0.cancelled_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trigger_before_anyone_waits_is_not_lost() {
        let shutdown = Shutdown::new();
        let waiter = shutdown.clone();
        shutdown.trigger();
        assert!(waiter.is_triggered());
        waiter.wait().await;
        shutdown.wait_owned().await;
    }
}

//! The flags that bound what outsiders can hold on a listener, shared by
//! `lanyard up` and `lanyard identity`.

use clap::Args;
use lanyard_crds::duration::GoDuration;
use lanyard_runtime::listen::Limits;

/// Connection cap, handshake timeout and idle timeout of the identity
/// service's listener.
#[derive(Debug, Clone, Args)]
pub struct LimitsArgs {
    /// Connections the identity service holds at once; more are closed on
    /// arrival and counted in `lanyard_identity_connections_refused_total`.
    #[arg(long, default_value_t = lanyard_runtime::listen::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Time a new connection has to finish its TLS handshake.
    #[arg(long, default_value = "10s")]
    handshake_timeout: GoDuration,
    /// A connection that moves no bytes for this long is closed.
    #[arg(long, default_value = "2m")]
    idle_timeout: GoDuration,
}

impl LimitsArgs {
    /// The limits these flags set.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.max(1),
            handshake_timeout: self.handshake_timeout.as_std(),
            idle_timeout: self.idle_timeout.as_std(),
        }
    }
}

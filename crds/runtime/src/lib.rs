//! What every long-running Lanyard process (`lanyard up`, `lanyard
//! controller`, `lanyard identity`, `lanyard-proxy`) shares, so each bounds
//! outsiders and stops the same way:
//!
//! - [`shutdown`]: SIGINT and SIGTERM, caught from the first instant, turned
//!   into one cancellation every part of the process watches;
//! - [`Backoff`]: the one retry schedule of every loop that can fail;
//! - [`listen`]: listeners with a connection cap, a handshake timeout, an
//!   idle timeout and accept errors that back off instead of spinning;
//! - [`raise_fd_limit`]: the soft descriptor limit raised to the hard one;
//! - [`lock`]: one owner per state directory;
//! - [`admin`]: the `/metrics`, `/ready`, `/live` server of every process.

#![forbid(unsafe_code)]

pub mod admin;
mod backoff;
pub mod listen;
pub mod lock;
pub mod shutdown;

pub use backoff::Backoff;
pub use shutdown::Shutdown;

/// What the `lanyard` binary logs when neither `--log-level` nor
/// `LANYARD_LOG` says: one line per lifecycle event (issued, renewed, the
/// issuer rotated, a refusal) from Lanyard's own crates, and only warnings
/// from the libraries under them. The identity service's bench logs with it
/// too, so it measures what `lanyard identity` runs.
pub const DEFAULT_LOG_FILTER: &str = "warn,lanyard=info,lanyard_rotator=info,lanyard_identity=info,lanyard_issuer=info,lanyard_runtime=info";

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as servers commonly
/// do at start: the default soft limit (often 1024) is far below what a
/// busy listener needs, while the hard limit is what the administrator
/// allows. Returns the soft limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).map_err(std::io::Error::from)?;
    }
    Ok(limit.current.unwrap_or(u64::MAX))
}

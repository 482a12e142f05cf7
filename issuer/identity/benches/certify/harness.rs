//! The measuring harness: runtimes, CPU meters, one timed round of
//! concurrent calls, request pools prepared ahead, and the tally.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::*;

#[allow(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
pub(crate) fn stopwatch() -> Instant {
    Instant::now()
}

/// The service's runtime: tokio's default of one worker per CPU, as
/// `lanyard identity` and `lanyard up` build theirs.
pub(crate) fn server_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

pub(crate) fn clients_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_WORKER_THREADS)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// What one round (or several, merged) of one peer measured.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) latencies: Vec<Duration>,
    pub(crate) failures: u64,
    pub(crate) first_failure: Option<String>,
    pub(crate) elapsed: Duration,
    pub(crate) ran_out: bool,
    /// CPU time the server's threads used during the round, if known.
    pub(crate) server_cpu: Option<Duration>,
    /// CPU time the client runtime's threads used during the round.
    pub(crate) client_cpu: Option<Duration>,
}

impl Tally {
    pub(crate) fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.elapsed += other.elapsed;
        self.ran_out |= other.ran_out;
        let add = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.server_cpu = add(self.server_cpu, other.server_cpu);
        self.client_cpu = add(self.client_cpu, other.client_cpu);
    }

    /// CPU time per signed certificate.
    pub(crate) fn per_signed(&self, cpu: Option<Duration>) -> Option<Duration> {
        let signed = u32::try_from(self.signed()).ok().filter(|n| *n > 0)?;
        cpu.map(|cpu| cpu / signed)
    }

    pub(crate) fn signed(&self) -> usize {
        self.latencies.len()
    }

    pub(crate) fn rate(&self) -> f64 {
        self.signed() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Nearest-rank percentile of the successful requests' latencies.
    pub(crate) fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }
}

/// Whose CPU time to count.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Threads {
    /// This process's threads with this name (as `thread_name` set it).
    Named(&'static str),
    /// Every thread of another process.
    Process(u32),
}

/// CPU time `threads` have used so far: the sum of their
/// `/proc/<pid>/task/<tid>/schedstat` run times. `None` where there is no
/// such file (not Linux).
pub(crate) fn cpu_time(threads: Threads) -> Option<Duration> {
    let (pid, name) = match threads {
        Threads::Named(name) => (std::process::id(), Some(name)),
        Threads::Process(pid) => (pid, None),
    };
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let task = task.ok()?.path();
        if let Some(name) = name {
            // The kernel keeps the first 15 bytes of a thread's name.
            let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if comm.trim_end() != &name[..name.len().min(15)] {
                continue;
            }
        }
        // A thread that ended in between has no file: its time is lost.
        let Ok(schedstat) = std::fs::read_to_string(task.join("schedstat")) else {
            continue;
        };
        total += schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())?;
    }
    Some(Duration::from_nanos(total))
}

/// CPU time the calling thread has used so far, from
/// `/proc/thread-self/schedstat`; `None` where there is no such file.
pub(crate) fn thread_cpu_time() -> Option<Duration> {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Counts a round's CPU time: the server's and the client runtime's.
pub(crate) struct CpuMeter {
    pub(crate) server: Threads,
    pub(crate) at_start: Option<(Duration, Duration)>,
}

impl CpuMeter {
    pub(crate) fn start(server: Threads) -> Self {
        let at_start = cpu_time(server).zip(cpu_time(Threads::Named(CLIENT_THREADS)));
        CpuMeter { server, at_start }
    }

    pub(crate) fn stop(self, mut tally: Tally) -> Tally {
        let now = cpu_time(self.server).zip(cpu_time(Threads::Named(CLIENT_THREADS)));
        if let (Some((server0, client0)), Some((server1, client1))) = (self.at_start, now) {
            tally.server_cpu = Some(server1.saturating_sub(server0));
            tally.client_cpu = Some(client1.saturating_sub(client0));
        }
        tally
    }
}

/// Runs `clients` concurrently, each sending one request at a time from
/// `pool` until `duration` has passed (or the pool is empty), and hands the
/// clients back. The round lasts until its last response.
pub(crate) async fn round<C, W, F, Fut>(
    clients: Vec<C>,
    pool: Vec<W>,
    duration: Duration,
    call: F,
) -> (Vec<C>, Tally)
where
    C: Send + 'static,
    W: Send + 'static,
    F: Fn(C, W) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (C, Result<(), String>)> + Send + 'static,
{
    let pool = Arc::new(Mutex::new(pool));
    let call = Arc::new(call);
    let start = stopwatch();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let pool = pool.clone();
            let call = call.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while start.elapsed() < duration {
                    let Some(work) = pool.lock().expect("pool lock").pop() else {
                        tally.ran_out = true;
                        break;
                    };
                    let sent = stopwatch();
                    let (back, result) = call(client, work).await;
                    client = back;
                    match result {
                        Ok(()) => tally.latencies.push(sent.elapsed()),
                        Err(reason) => {
                            tally.failures += 1;
                            tally.first_failure.get_or_insert(reason);
                        }
                    }
                }
                tally.elapsed = start.elapsed();
                (client, tally)
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(tasks.len());
    let mut total = Tally::default();
    for task in tasks {
        let (client, tally) = task.await.expect("a client task");
        clients.push(client);
        let elapsed = total.elapsed.max(tally.elapsed);
        total.merge(tally);
        total.elapsed = elapsed;
    }
    (clients, total)
}

/// Builds `n` values with `make(index)` on every core: fresh keys and CSRs
/// are made before timing starts, not during it.
pub(crate) fn prepare<T: Send>(first: usize, n: usize, make: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let make = &make;
                scope.spawn(move || {
                    (start..(start + chunk).min(n))
                        .map(|i| make(first + i))
                        .collect::<Vec<T>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a preparing thread"))
            .collect()
    })
}

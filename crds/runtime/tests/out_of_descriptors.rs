//! A listener that runs out of file descriptors (EMFILE) backs off instead
//! of spinning, and serves the waiting connections once descriptors are
//! free again. Alone in its test binary: it lowers the process's own
//! descriptor limit.

use std::sync::Arc;
use std::time::Duration;

use lanyard_runtime::listen::{BoundedListener, Limits, ListenerMetrics};
use rustix::process::{Resource, getrlimit, setrlimit};

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test(flavor = "current_thread")]
async fn accept_errors_are_backed_off_and_the_backlog_is_served_once_descriptors_free_up() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = ListenerMetrics::new();
    let mut listener = BoundedListener::new(
        listener,
        Limits {
            max_connections: 10_000,
            ..Limits::default()
        },
        metrics.clone(),
        "test",
    );
    // 20 clients wait in the backlog before anything is accepted.
    let clients: Vec<_> = {
        let mut clients = Vec::new();
        for _ in 0..20 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        clients
    };
    let saved = getrlimit(Resource::Nofile);
    let mut low = saved;
    // Room for about 10 accepted connections.
    low.current = Some(open_descriptors() + 10);
    setrlimit(Resource::Nofile, low).unwrap();

    let release = Arc::new(tokio::sync::Notify::new());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepting = tokio::spawn({
        let (release, accepted) = (release.clone(), accepted.clone());
        async move {
            let mut held = Vec::new();
            let mut released = false;
            loop {
                tokio::select! {
                    connection = listener.accept() => {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if !released {
                            held.push(connection);
                        }
                    }
                    () = release.notified(), if !released => {
                        released = true;
                        held.clear();
                    }
                }
            }
        }
    });

    // Wait until accepting has run out of descriptors.
    for _ in 0..100 {
        if metrics.accept_errors() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metrics.accept_errors() > 0, "the limit was reached");
    let stuck = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(stuck < 20, "{stuck} accepted: some wait in the backlog");
    // A spinning loop retries millions of times a second; a backed-off
    // one a handful of times.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let errors = metrics.accept_errors();
    assert!(
        errors < 50,
        "{errors} accept errors in about a second: the loop spins"
    );

    release.notify_one();
    for _ in 0..200 {
        if accepted.load(std::sync::atomic::Ordering::SeqCst) >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    setrlimit(Resource::Nofile, saved).unwrap();
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        20,
        "every waiting client was served once descriptors were free"
    );
    drop(clients);
    accepting.abort();
}

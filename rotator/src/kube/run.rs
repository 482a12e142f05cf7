//! The controllers' wiring and the leader loop: [`run`] waits for the
//! Lease, runs the Certificate controller and one controller per issuer
//! kind while it holds it, and stops them within [`STOP_GRACE`] of a
//! shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::kube::ResourceExt;
use ::kube::api::Api;
use ::kube::runtime::controller::{self, Controller, ReconcileRequest};
use ::kube::runtime::reflector::{self, ObjectRef, Store};
use ::kube::runtime::{WatchStreamExt, watcher};
use futures::channel::mpsc::unbounded;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use lanyard_crds::api::{Certificate, ClusterIssuer, Issuer, IssuerKind};
use lanyard_crds::time::Clock;
use tracing::{debug, info, warn};

use super::certificate::{error_policy, reconcile_certificate};
use super::context::{CERTIFICATE, Context, Error};
use super::dependents::Dependents;
use super::issuer::{IssuerResource, issuer_error_policy, reconcile_issuer};
use super::lease::{LeaderElection, LeaseDecision, LeaseLock};

/// How long reconciles in flight may take to finish once a stop is asked.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the controller (Certificates, and the issuer controllers beside
/// it) until `shutdown` completes, and at most [`STOP_GRACE`] after.
///
/// With `election`, the controller runs only while this replica holds the
/// Lease: it waits for the Lease, runs while renewing it, stops as soon as
/// it is lost (then waits again), and gives it up on shutdown. Without, it
/// runs at once (one replica, or tests).
pub async fn run<C: Clock + 'static>(
    ctx: Arc<Context<C>>,
    election: Option<LeaderElection>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown_task = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            // Err means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    // Reconciles in flight get a grace period to finish; the controllers
    // are then abandoned, as a kill would, so a stop is never held up (a
    // watch backing off from API errors kept one running for minutes).
    let bounded = |controllers| {
        let stopped = stopped();
        async move {
            tokio::pin!(controllers);
            tokio::select! {
                () = &mut controllers => {}
                () = async { stopped.await; tokio::time::sleep(STOP_GRACE).await } => {
                    warn!("the controllers did not stop within {STOP_GRACE:?}; leaving them");
                }
            }
        }
    };
    let Some(election) = election else {
        bounded(run_controller(ctx, &stopped)).await;
        shutdown_task.abort();
        return Ok(());
    };
    let lock = LeaseLock::new(ctx.client.clone(), election);
    let interval = lock.election().renew_interval;
    loop {
        // Wait for the Lease.
        loop {
            match lock.try_acquire(ctx.clock.now()).await {
                Ok(LeaseDecision::Acquire | LeaseDecision::Renew) => break,
                Ok(LeaseDecision::Wait { holder, until }) => {
                    debug!(%holder, %until, "another replica leads; waiting for the Lease");
                }
                Err(error) => warn!("leader election: {error}"),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stopped() => return Ok(()),
            }
        }
        info!(identity = %lock.election().identity, "acquired the Lease; starting the controller");
        tokio::select! {
            () = bounded(run_controller(ctx.clone(), &stopped)) => {
                if let Err(error) = lock.release().await {
                    warn!("releasing the Lease: {error}");
                }
                shutdown_task.abort();
                return Ok(());
            }
            () = hold_lease(&lock, &ctx.clock) => {
                warn!("lost the Lease; stopping the controller until it is acquired again");
            }
        }
    }
}

/// Renews the Lease every renew interval; returns when it is lost: another
/// replica holds it, or renewals have failed for the renew deadline.
async fn hold_lease<C: Clock>(lock: &LeaseLock, clock: &C) {
    let election = lock.election();
    let deadline = chrono::TimeDelta::from_std(election.renew_deadline)
        .unwrap_or(chrono::TimeDelta::seconds(10));
    let mut renewed = clock.now();
    loop {
        tokio::time::sleep(election.renew_interval).await;
        let now = clock.now();
        match lock.try_renew(now).await {
            Ok(LeaseDecision::Acquire | LeaseDecision::Renew) => renewed = now,
            Ok(LeaseDecision::Wait { holder, .. }) => {
                warn!(%holder, "the Lease is held by another replica");
                return;
            }
            Err(error) => {
                warn!("renewing the Lease: {error}");
                if now - renewed >= deadline {
                    return;
                }
            }
        }
    }
}

/// The controllers, until each has shut down gracefully on a `stopped()`:
/// Certificates, plus the Secrets, Issuers and ClusterIssuers they depend
/// on, each mapped back to its dependents; and one per issuer kind, whose
/// reflectors also keep the issuer stores the mapping reads.
async fn run_controller<C, F>(ctx: Arc<Context<C>>, stopped: impl Fn() -> F)
where
    C: Clock + 'static,
    F: Future<Output = ()> + Send + Sync + 'static,
{
    let client = ctx.client.clone();
    let config = watcher::Config::default();
    let controller = Controller::new(Api::<Certificate>::all(client.clone()), config.clone());

    // The issuers' stores, for mapping a CA Secret to the Certificates
    // whose issuer signs with it and to the issuers themselves.
    let (issuers, issuer_writer) = reflector::store::<Issuer>();
    let (cluster_issuers, cluster_issuer_writer) = reflector::store::<ClusterIssuer>();
    // CA Secret changes, seen by the Certificate controller's Secret watch,
    // for the issuer controllers.
    let (issuer_trigger, issuer_triggered) = unbounded();
    let (cluster_issuer_trigger, cluster_issuer_triggered) = unbounded();
    let issuer_controller = run_issuer_controller(
        ctx.clone(),
        issuers.clone(),
        issuer_writer,
        issuer_triggered,
        stopped(),
    );
    let cluster_issuer_controller = run_issuer_controller(
        ctx.clone(),
        cluster_issuers.clone(),
        cluster_issuer_writer,
        cluster_issuer_triggered,
        stopped(),
    );

    let dependents = Dependents {
        certificates: controller.store(),
        issuers,
        cluster_issuers,
        cluster_resource_namespace: ctx.cluster_resource_namespace.clone(),
    };
    let for_issuer = dependents.clone();
    let for_cluster_issuer = dependents.clone();
    let for_secret = dependents;
    let metrics = ctx.metrics.clone();
    let forget = ctx.clone();
    let controller = controller
        // One watch of Secrets serves `owns` (the Certificate's own
        // Secret), the CA Secrets of the Certificates' issuers, and the
        // issuer controllers; more identical cluster-wide Secret watches
        // would multiply the traffic.
        .watches(
            Api::<Secret>::all(client.clone()),
            config.clone(),
            move |s| {
                let users = for_secret.issuers_using_secret(&s);
                // An issuer controller that has stopped needs no trigger.
                for issuer in &users.issuers {
                    let _ = issuer_trigger.unbounded_send(issuer.clone());
                }
                for issuer in &users.cluster_issuers {
                    let _ = cluster_issuer_trigger.unbounded_send(issuer.clone());
                }
                for_secret.for_secret(&s, &users)
            },
        )
        .watches(
            Api::<Issuer>::all(client.clone()),
            config.clone(),
            move |i| {
                for_issuer.for_issuer(IssuerKind::Issuer, i.namespace().as_deref(), &i.name_any())
            },
        )
        .watches(Api::<ClusterIssuer>::all(client), config, move |i| {
            for_cluster_issuer.for_issuer(IssuerKind::ClusterIssuer, None, &i.name_any())
        })
        .graceful_shutdown_on(stopped())
        .run(reconcile_certificate, error_policy, ctx)
        .for_each(move |result| {
            match result {
                Ok((object, _)) => debug!(certificate = %object, "reconciled"),
                // The object is gone from the store: the Certificate was
                // deleted, and its series go with it.
                Err(controller::Error::ObjectNotFound(object)) => {
                    let namespace = object.namespace.clone().unwrap_or_default();
                    metrics.forget_certificate(&namespace, &object.name);
                    forget.clear_api_failures(CERTIFICATE, &namespace, &object.name);
                    debug!(certificate = %object, "deleted; forgot its metrics");
                }
                // error_policy has logged it.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(error) => warn!("controller: {error}"),
            }
            std::future::ready(())
        });
    // Each stops on its own `stopped()`, after its running reconciles.
    tokio::join!(controller, issuer_controller, cluster_issuer_controller);
}

/// The controller of one issuer kind, until `stop` (then after its running
/// reconciles): [`reconcile_issuer`] runs for each issuer its watch sees
/// change (keeping `store`, through `writer`, for the Certificate
/// controller's mapping) and for each one `triggers` names (its CA Secret
/// changed).
///
/// Built from kube-runtime's `applier`, as `Controller` is, because
/// `Controller` takes an external stream of objects to reconcile only
/// behind an unstable feature, and a Secret watch of its own would repeat
/// the Certificate controller's.
async fn run_issuer_controller<K: IssuerResource, C: Clock + 'static>(
    ctx: Arc<Context<C>>,
    store: Store<K>,
    writer: reflector::store::Writer<K>,
    triggers: impl Stream<Item = ObjectRef<K>> + Send + 'static,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let kind = K::KIND;
    let watch = reflector::reflector(
        writer,
        watcher(
            Api::<K>::all(ctx.client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    // Deletions too: the reconcile then finds the issuer gone, and its
    // series are forgotten at once.
    .touched_objects();
    let queue = futures::stream::select(
        controller::trigger_self(watch, ()),
        triggers.map(|issuer| Ok(ReconcileRequest::from(issuer))),
    )
    .take_until(stop);
    let metrics = ctx.metrics.clone();
    let forget = ctx.clone();
    controller::applier(
        |issuer, ctx| Box::pin(reconcile_issuer::<K, C>(issuer, ctx)),
        issuer_error_policy::<K, C>,
        ctx,
        store,
        queue,
        controller::Config::default(),
    )
    .for_each(move |result| {
        match result {
            Ok((object, _)) => debug!(%kind, issuer = %object, "reconciled"),
            Err(controller::Error::ObjectNotFound(object)) => {
                let namespace = object.namespace.clone().unwrap_or_default();
                metrics.forget_issuer(kind, &namespace, &object.name);
                forget.clear_api_failures(kind.as_str(), &namespace, &object.name);
                debug!(%kind, issuer = %object, "deleted; forgot its metrics");
            }
            // issuer_error_policy has logged it.
            Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(controller::Error::QueueError(error)) => warn!("watching {kind}s: {error}"),
            Err(error) => warn!("{kind} controller: {error}"),
        }
        std::future::ready(())
    })
    .await;
}

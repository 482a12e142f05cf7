//! The controllers' wiring and the leader loop: [`run`] waits for the
//! Lease, runs the Certificate controller, one controller per issuer kind
//! and (when asked for) the TrustBundle controller while it holds it, and
//! stops them within [`STOP_GRACE`] of a shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::kube::ResourceExt;
use ::kube::api::Api;
use ::kube::core::PartialObjectMeta;
use ::kube::runtime::controller::{self, ReconcileRequest};
use ::kube::runtime::reflector::{self, ObjectRef, Store};
use ::kube::runtime::{WatchStreamExt, watcher};
use futures::channel::mpsc::{UnboundedReceiver, unbounded};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lanyard_crds::api::{Certificate, ClusterIssuer, Issuer, IssuerKind};
use lanyard_crds::time::Clock;
use lanyard_crds::trust_bundle::TrustBundle;
use tracing::{debug, info, warn};

use super::cache::{
    Caches, MANAGED_LABEL, strip_bundle_target, strip_certificate, strip_config_map_metadata,
    strip_issuer, strip_namespace_metadata, strip_secret, strip_secret_metadata,
};
use super::certificate::{error_policy, reconcile_certificate};
use super::context::{CERTIFICATE, Context, Error};
use super::dependents::Dependents;
use super::issuer::{IssuerResource, issuer_error_policy, reconcile_issuer};
use super::lease::{LeaderElection, LeaseDecision, LeaseLock};
use super::trust_bundle::{
    BUNDLE_LABEL, BundleTriggers, forget_trust_bundle, reconcile_trust_bundle,
    trust_bundle_error_policy,
};

/// How long reconciles in flight may take to finish once a stop is asked.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the controller (Certificates, and the issuer controllers beside
/// it, and the TrustBundle controller when [`Context::trust_bundles`] asks
/// for it) until `shutdown` completes, and at most [`STOP_GRACE`] after.
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
/// the watches fill the caches (see [`super::cache`]) and turn each change
/// into the Certificates and issuers it concerns; once every cache holds
/// its first list, the Certificate controller and one controller per
/// issuer kind reconcile what the watches queue, at most
/// [`Context::concurrency`] at once each. The TrustBundle controller, when
/// asked for, runs beside them over caches of its own
/// ([`run_trust_bundles`]).
async fn run_controller<C, F>(ctx: Arc<Context<C>>, stopped: impl Fn() -> F)
where
    C: Clock + 'static,
    F: Future<Output = ()> + Send + Sync + 'static,
{
    let client = ctx.client.clone();
    let (caches, writers) = Caches::new();
    ctx.use_caches(caches.clone());
    let (certificate_trigger, certificates_triggered) = unbounded::<ObjectRef<Certificate>>();
    let (issuer_trigger, issuers_triggered) = unbounded::<ObjectRef<Issuer>>();
    let (cluster_issuer_trigger, cluster_issuers_triggered) =
        unbounded::<ObjectRef<ClusterIssuer>>();
    let dependents = Dependents::new(
        caches.certificates.clone(),
        caches.issuers.clone(),
        caches.cluster_issuers.clone(),
        ctx.cluster_resource_namespace.clone(),
    );
    let config = watcher::Config::default();
    let (bundle_triggers, bundles_triggered) = if ctx.trust_bundles {
        let (trigger, triggered) = unbounded::<ObjectRef<TrustBundle>>();
        let triggers =
            BundleTriggers::new(&caches, ctx.cluster_resource_namespace.clone(), trigger);
        (Some(triggers), Some(triggered))
    } else {
        (None, None)
    };

    // A trigger whose controller has stopped is dropped: hence `let _`.
    let certificates = {
        let trigger = certificate_trigger.clone();
        let ctx = ctx.clone();
        let dependents = dependents.clone();
        watch(
            "Certificates",
            watcher(Api::<Certificate>::all(client.clone()), config.clone()),
            writers.certificates,
            strip_certificate,
            move |certificate: &Certificate| {
                dependents.certificate_changed(certificate);
                ctx.statuses.seen(
                    certificate
                        .metadata
                        .namespace
                        .as_deref()
                        .unwrap_or_default(),
                    &certificate.name_any(),
                    certificate
                        .metadata
                        .resource_version
                        .as_deref()
                        .unwrap_or_default(),
                );
                let _ = trigger.unbounded_send(ObjectRef::from_obj(certificate));
            },
            stopped(),
        )
    };
    // A Secret concerns the Certificate owning or naming it, and the
    // issuers that sign with it, with their Certificates; and the bundles
    // reading it.
    let secret_changed = {
        let dependents = dependents.clone();
        let certificate_trigger = certificate_trigger.clone();
        let issuer_trigger = issuer_trigger.clone();
        let cluster_issuer_trigger = cluster_issuer_trigger.clone();
        let bundle_triggers = bundle_triggers.clone();
        Arc::new(move |secret: &ObjectMeta| {
            if let Some(bundles) = &bundle_triggers {
                bundles.secret_changed(secret);
            }
            let users = dependents.issuers_using_secret(secret);
            for issuer in &users.issuers {
                let _ = issuer_trigger.unbounded_send(issuer.clone());
            }
            for issuer in &users.cluster_issuers {
                let _ = cluster_issuer_trigger.unbounded_send(issuer.clone());
            }
            for certificate in dependents.for_secret(secret, &users) {
                let _ = certificate_trigger.unbounded_send(certificate);
            }
        })
    };
    let secrets = {
        let changed = secret_changed.clone();
        let ctx = ctx.clone();
        watch(
            "Secrets",
            watcher(
                Api::<Secret>::all(client.clone()),
                config.clone().labels(MANAGED_LABEL),
            ),
            writers.secrets,
            strip_secret,
            move |secret: &Secret| {
                ctx.applied.seen(
                    secret.metadata.namespace.as_deref().unwrap_or_default(),
                    &secret.name_any(),
                    secret
                        .metadata
                        .resource_version
                        .as_deref()
                        .unwrap_or_default(),
                );
                changed(&secret.metadata);
            },
            stopped(),
        )
    };
    let other_secrets = watch(
        "Secrets (metadata)",
        watcher(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            config.clone().labels(&format!("!{MANAGED_LABEL}")),
        ),
        writers.other_secrets,
        strip_secret_metadata,
        move |secret: &PartialObjectMeta<Secret>| secret_changed(&secret.metadata),
        stopped(),
    );
    let issuers = {
        let dependents = dependents.clone();
        let certificate_trigger = certificate_trigger.clone();
        watch(
            "Issuers",
            watcher(Api::<Issuer>::all(client.clone()), config.clone()),
            writers.issuers,
            strip_issuer,
            move |issuer: &Issuer| {
                let _ = issuer_trigger.unbounded_send(ObjectRef::from_obj(issuer));
                let namespace = issuer.namespace();
                for certificate in dependents.for_issuer(
                    IssuerKind::Issuer,
                    namespace.as_deref(),
                    &issuer.name_any(),
                ) {
                    let _ = certificate_trigger.unbounded_send(certificate);
                }
            },
            stopped(),
        )
    };
    let cluster_issuers = {
        let bundle_triggers = bundle_triggers.clone();
        watch(
            "ClusterIssuers",
            watcher(Api::<ClusterIssuer>::all(client), config),
            writers.cluster_issuers,
            strip_issuer,
            move |issuer: &ClusterIssuer| {
                if let Some(bundles) = &bundle_triggers {
                    bundles.cluster_issuer_changed(&issuer.name_any());
                }
                let _ = cluster_issuer_trigger.unbounded_send(ObjectRef::from_obj(issuer));
                for certificate in
                    dependents.for_issuer(IssuerKind::ClusterIssuer, None, &issuer.name_any())
                {
                    let _ = certificate_trigger.unbounded_send(certificate);
                }
            },
            stopped(),
        )
    };
    let bundle_writers = BundleWriters {
        trust_bundles: writers.trust_bundles,
        namespaces: writers.namespaces,
        bundle_config_maps: writers.bundle_config_maps,
        bundle_secrets: writers.bundle_secrets,
        trust_config_maps: writers.trust_config_maps,
    };
    let trust_bundles = async {
        if let (Some(triggers), Some(triggered)) = (bundle_triggers, bundles_triggered) {
            run_trust_bundles(
                ctx.clone(),
                caches.clone(),
                bundle_writers,
                triggers,
                triggered,
                &stopped,
            )
            .await;
        }
    };

    let controllers = async {
        // Nothing is decided before every cache holds its first list: a
        // Secret not yet listed would be taken for missing, and issued
        // again. What the watches queue meanwhile waits in the channels.
        tokio::select! {
            ready = caches.ready() => if ready.is_err() { return; },
            () = stopped() => return,
        }
        info!(
            certificates = caches.certificates.len(),
            secrets = caches.secrets.len(),
            issuers = caches.issuers.len() + caches.cluster_issuers.len(),
            "caches filled; reconciling"
        );
        let config = controller::Config::default().concurrency(ctx.concurrency);
        let metrics = ctx.metrics.clone();
        let forget = ctx.clone();
        let certificate_controller = controller::applier(
            |certificate, ctx| Box::pin(reconcile_certificate(certificate, ctx)),
            error_policy,
            ctx.clone(),
            caches.certificates.clone(),
            requests(certificates_triggered, stopped()),
            config.clone(),
        )
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
        tokio::join!(
            certificate_controller,
            run_issuer_controller(
                ctx.clone(),
                caches.issuers.clone(),
                requests(issuers_triggered, stopped()),
                config.clone(),
            ),
            run_issuer_controller(
                ctx.clone(),
                caches.cluster_issuers.clone(),
                requests(cluster_issuers_triggered, stopped()),
                config,
            ),
        );
    };
    // Each stops on its own `stopped()`, the controllers after their
    // running reconciles.
    tokio::join!(
        certificates,
        secrets,
        other_secrets,
        issuers,
        cluster_issuers,
        controllers,
        trust_bundles
    );
}

/// The writing ends of the caches only the TrustBundle controller reads.
struct BundleWriters {
    trust_bundles: reflector::store::Writer<TrustBundle>,
    namespaces: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    bundle_config_maps: reflector::store::Writer<ConfigMap>,
    bundle_secrets: reflector::store::Writer<Secret>,
    trust_config_maps: reflector::store::Writer<PartialObjectMeta<ConfigMap>>,
}

/// The TrustBundle controller, until each part has shut down on a
/// `stopped()`: its watches (TrustBundles; Namespaces' metadata; the
/// ConfigMaps and Secrets bundles wrote, by [`BUNDLE_LABEL`]; the metadata
/// of the trust namespace's ConfigMaps) fill their caches and queue the
/// bundles each change concerns ([`BundleTriggers`]; Secrets and
/// ClusterIssuers come through the Certificate controller's watches).
/// Once its caches hold their first lists it reconciles what they queue.
/// Its caches are ready apart from the Certificate controller's: a
/// cluster without the TrustBundle CRD holds up only this one.
async fn run_trust_bundles<C, F>(
    ctx: Arc<Context<C>>,
    caches: Caches,
    writers: BundleWriters,
    triggers: BundleTriggers,
    triggered: UnboundedReceiver<ObjectRef<TrustBundle>>,
    stopped: impl Fn() -> F,
) where
    C: Clock + 'static,
    F: Future<Output = ()> + Send + Sync + 'static,
{
    let client = ctx.client.clone();
    let config = watcher::Config::default();
    let bundles = {
        let triggers = triggers.clone();
        watch(
            "TrustBundles",
            watcher(Api::<TrustBundle>::all(client.clone()), config.clone()),
            writers.trust_bundles,
            strip_bundle_target,
            move |bundle: &TrustBundle| triggers.bundle_changed(bundle),
            stopped(),
        )
    };
    let namespaces = {
        let triggers = triggers.clone();
        watch(
            "Namespaces (metadata)",
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                config.clone(),
            ),
            writers.namespaces,
            strip_namespace_metadata,
            move |namespace: &PartialObjectMeta<Namespace>| {
                triggers.namespace_changed(&namespace.metadata);
            },
            stopped(),
        )
    };
    let config_maps = {
        let triggers = triggers.clone();
        watch(
            "bundle ConfigMaps",
            watcher(
                Api::<ConfigMap>::all(client.clone()),
                config.clone().labels(BUNDLE_LABEL),
            ),
            writers.bundle_config_maps,
            strip_bundle_target,
            move |config_map: &ConfigMap| triggers.target_changed(&config_map.metadata),
            stopped(),
        )
    };
    let secrets = {
        let triggers = triggers.clone();
        watch(
            "bundle Secrets",
            watcher(
                Api::<Secret>::all(client.clone()),
                config.clone().labels(BUNDLE_LABEL),
            ),
            writers.bundle_secrets,
            strip_bundle_target,
            move |secret: &Secret| triggers.target_changed(&secret.metadata),
            stopped(),
        )
    };
    let sources = watch(
        "ConfigMaps of the trust namespace (metadata)",
        watcher(
            Api::<PartialObjectMeta<ConfigMap>>::namespaced(
                client,
                &ctx.cluster_resource_namespace,
            ),
            config,
        ),
        writers.trust_config_maps,
        strip_config_map_metadata,
        move |config_map: &PartialObjectMeta<ConfigMap>| {
            triggers.config_map_changed(&config_map.metadata);
        },
        stopped(),
    );
    let controller = async {
        tokio::select! {
            ready = caches.bundles_ready() => if ready.is_err() { return; },
            () = stopped() => return,
        }
        info!(
            bundles = caches.trust_bundles.len(),
            namespaces = caches.namespaces.len(),
            "trust bundle caches filled; reconciling bundles"
        );
        let config = controller::Config::default().concurrency(ctx.concurrency);
        let forget = ctx.clone();
        controller::applier(
            |bundle, ctx| Box::pin(reconcile_trust_bundle(bundle, ctx)),
            trust_bundle_error_policy,
            ctx.clone(),
            caches.trust_bundles.clone(),
            requests(triggered, stopped()),
            config,
        )
        .for_each(move |result| {
            match result {
                Ok((object, _)) => debug!(bundle = %object, "reconciled"),
                // Gone from the store: the bundle was deleted.
                Err(controller::Error::ObjectNotFound(object)) => {
                    forget_trust_bundle(&forget, &object.name);
                    debug!(bundle = %object, "deleted; forgot its metrics and anchors");
                }
                // trust_bundle_error_policy has logged it.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(error) => warn!("TrustBundle controller: {error}"),
            }
            std::future::ready(())
        })
        .await;
    };
    tokio::join!(
        bundles,
        namespaces,
        config_maps,
        secrets,
        sources,
        controller
    );
}

/// Feeds `cache` from `stream` (each object cut down by `strip`), calling
/// `changed` with every object that changed or went, until `stop`. Watch
/// errors are logged and retried with kube-runtime's default backoff.
async fn watch<K, S>(
    what: &'static str,
    stream: S,
    cache: reflector::store::Writer<K>,
    strip: fn(&mut K),
    mut changed: impl FnMut(&K),
    stop: impl Future<Output = ()>,
) where
    K: ::kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let stream = stream
        .default_backoff()
        .modify(strip)
        .reflect(cache)
        .touched_objects()
        .take_until(stop);
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(object) => changed(&object),
            Err(error) => warn!("watching {what}: {error}"),
        }
    }
}

/// The reconcile requests the watches queue, until `stop`.
fn requests<K: ::kube::Resource>(
    triggered: impl Stream<Item = ObjectRef<K>>,
    stop: impl Future<Output = ()>,
) -> impl Stream<Item = Result<ReconcileRequest<K>, Infallible>>
where
    K::DynamicType: Clone,
{
    triggered
        .map(|object| Ok(ReconcileRequest::from(object)))
        .take_until(stop)
}

/// The controller of one issuer kind, until `queue` ends (then after its
/// running reconciles): [`reconcile_issuer`] runs for each issuer the
/// watches queue (it changed, or its CA Secret did).
async fn run_issuer_controller<K: IssuerResource, C: Clock + 'static>(
    ctx: Arc<Context<C>>,
    store: Store<K>,
    queue: impl Stream<Item = Result<ReconcileRequest<K>, Infallible>>,
    config: controller::Config,
) {
    let kind = K::KIND;
    let metrics = ctx.metrics.clone();
    let forget = ctx.clone();
    controller::applier(
        |issuer, ctx| Box::pin(reconcile_issuer::<K, C>(issuer, ctx)),
        issuer_error_policy::<K, C>,
        ctx,
        store,
        queue,
        config,
    )
    .for_each(move |result| {
        match result {
            Ok((object, _)) => debug!(%kind, issuer = %object, "reconciled"),
            Err(controller::Error::ObjectNotFound(object)) => {
                let namespace = object.namespace.clone().unwrap_or_default();
                metrics.forget_issuer(kind, &namespace, &object.name);
                forget.materials.forget(kind, &namespace, &object.name);
                forget.clear_api_failures(kind.as_str(), &namespace, &object.name);
                debug!(%kind, issuer = %object, "deleted; forgot its metrics");
            }
            // issuer_error_policy has logged it.
            Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(error) => warn!("{kind} controller: {error}"),
        }
        std::future::ready(())
    })
    .await;
}

//! Leader election on a Kubernetes `Lease` (`coordination.k8s.io/v1`), so exactly one
//! controller replica acts at a time.
//!
//! Why a Kubernetes Lease and not the scheduler's NATS KV leases: what must not happen twice is
//! a write to the cluster (a template copied to the primary, a Deployment scaled), so the lock
//! lives where those writes go — a replica that can reach the API server can also see whether
//! it holds the lock, whatever the state of NATS, and `kubectl get lease` shows who leads.
//!
//! The protocol is client-go's: the holder renews `renewTime` every third of the lease
//! duration by a write conditioned on the `resourceVersion` it read; another replica takes the
//! lease only when it has seen the same record unchanged for a whole lease duration *by its own
//! clock* (so clock skew between nodes does not matter). A holder that could not renew within
//! two thirds of the duration stops acting before anyone else may start.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where the lock is and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
}

/// The last lease record seen and when this replica first saw it.
struct Observed {
    holder: Option<String>,
    renew: Option<String>,
    since: Instant,
}

/// Runs the election until `shutdown`; `leader` says whether this replica holds the lease.
/// On shutdown a holder releases the lease so another replica can take over at once.
pub async fn run(
    client: Client,
    settings: LeaseSettings,
    leader: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let period = settings.duration / 3;
    let mut observed: Option<Observed> = None;
    let mut renewed_at: Option<Instant> = None;
    loop {
        match try_acquire(&api, &settings, &mut observed).await {
            Ok(true) => {
                if !*leader.borrow() {
                    info!(lease = %settings.name, identity = %settings.identity, "leading");
                }
                renewed_at = Some(Instant::now());
                leader.send_replace(true);
            }
            Ok(false) => {
                renewed_at = None;
                leader.send_replace(false);
            }
            Err(error) => {
                warn!(lease = %settings.name, %error, "lease not renewed");
                // Stop acting before another replica may take over.
                if renewed_at.is_none_or(|t| t.elapsed() >= settings.duration * 2 / 3) {
                    renewed_at = None;
                    leader.send_replace(false);
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(period) => {}
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        release(&api, &settings).await;
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// One round: take or renew the lease. `Ok(true)` when this replica holds it now.
async fn try_acquire(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Option<Observed>,
) -> kube::Result<bool> {
    let seconds = i32::try_from(settings.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let renew = spec.renew_time.as_ref().map(|t| t.0.to_string());
    let mine = holder.as_deref() == Some(settings.identity.as_str());
    if !mine {
        // Expired only once the same record stayed unchanged a whole duration by our clock.
        let same = observed
            .as_ref()
            .is_some_and(|o| o.holder == holder && o.renew == renew);
        if !same {
            *observed = Some(Observed {
                holder: holder.clone(),
                renew: renew.clone(),
                since: Instant::now(),
            });
        }
        let held_by_other = holder.is_some()
            && observed
                .as_ref()
                .is_some_and(|o| o.since.elapsed() < settings.duration);
        if held_by_other {
            return Ok(false);
        }
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(now());
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        // Someone else wrote first: not ours this round.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, settings: &LeaseSettings) {
    let Ok(Some(mut lease)) = api.get_opt(&settings.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    if let Err(error) = api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        warn!(lease = %settings.name, %error, "lease not released");
    }
}

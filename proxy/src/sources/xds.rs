//! Following a control plane over delta ADS, as ztunnel follows istiod:
//! the registry comes from `Address` resources (workloads and services),
//! the policies from `Authorization` resources (already translated, each
//! workload listing its selector-scoped keys).
//!
//! The messages are read by [`hbone_xds::receive`] and turned into the
//! same [`Registry`] and [`MeshAuthorization`] a registry file and policy
//! files produce, so the data path cannot tell where its state came from.
//! Every response is answered: an ACK, or a NACK naming each resource that
//! could not be used — which is then kept at its last good version (or left
//! out, if it never had one), while the rest of the response applies. A
//! response that would make the registry inconsistent (two workloads on one
//! IP) is refused whole. Changed policies re-judge the open streams, as a
//! policy file edit does. When the stream breaks, the proxy keeps serving
//! what it has, reconnects with backoff and subscribes again declaring the
//! versions it holds, so a restarted server sends only what changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hbone_ca::Identity;
use hbone_policies::authorization::{Authorization, MeshAuthorization};
use hbone_xds::client::{AdsClient, ClientError};
use hbone_xds::proto::discovery::DeltaDiscoveryResponse;
use hbone_xds::proto::security::{self as pb, TYPE_URL as AUTHORIZATION};
use hbone_xds::proto::workload::{ADDRESS_TYPE_URL as ADDRESS, Address};
use hbone_xds::receive::{self, ReceivedAddress, Rejected};
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::FieldError;
use crate::registry::{
    Distinct, Listed, Node, Protocol, Registry, RegistryFile, Service, Workload,
};
use crate::state::ProxyCore;

/// Where the control plane is and how to introduce ourselves.
#[derive(Debug, Clone)]
pub struct XdsSettings {
    /// `https://host:15012`.
    pub address: String,
    /// The mesh root, which also signs the control plane's serving certificate.
    pub root_pem: String,
    /// The bearer token, read again at every connect (tokens rotate).
    pub token_file: Option<PathBuf>,
    /// The xDS node id (ztunnel: `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
    pub node_id: String,
    /// The node's metadata (ztunnel: `NAME`, `NAMESPACE`, `INSTANCE_IPS`,
    /// `NODE_NAME`, `CLUSTER_ID`, …); istiod checks `NAMESPACE` against the token.
    pub metadata: BTreeMap<String, String>,
    /// Istio's root namespace: its policies apply mesh-wide.
    pub root_namespace: String,
    /// The longest wait between reconnects.
    pub max_backoff: Duration,
}

/// What the follower has done so far, for tests, logs and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdsStatus {
    /// Streams opened (1 + reconnects).
    pub connects: u64,
    /// Responses accepted (ACKed).
    pub acks: u64,
    /// Responses rejected (NACKed).
    pub nacks: u64,
    /// The last NACK's message.
    pub last_nack: Option<String>,
    /// Both types have been answered at least once.
    pub synced: bool,
    /// Workloads in the registry after the last response.
    pub workloads: usize,
    /// Services in the registry after the last response.
    pub services: usize,
    /// Authorization policies held after the last response.
    pub policies: usize,
    /// Why the last stream ended, or the last connect failed.
    pub last_error: Option<String>,
}

/// The resources held, by name, with the version each was received at.
#[derive(Debug, Clone, Default)]
struct Held {
    addresses: BTreeMap<String, (String, ReceivedAddress)>,
    authorizations: BTreeMap<String, (String, Authorization)>,
}

impl Held {
    fn versions(&self, type_url: &str) -> HashMap<String, String> {
        fn names<T>(held: &BTreeMap<String, (String, T)>) -> HashMap<String, String> {
            held.iter()
                .map(|(name, (version, _))| (name.clone(), version.clone()))
                .collect()
        }
        match type_url {
            ADDRESS => names(&self.addresses),
            _ => names(&self.authorizations),
        }
    }
}

/// One resource of a response, read; `Err` keeps the old version.
fn read(type_url: &str, name: &str, bytes: &[u8]) -> Result<Read, Rejected> {
    let undecodable = |e: prost::DecodeError| Rejected {
        resource: name.to_string(),
        field: "(bytes)".into(),
        reason: format!("does not decode: {e}"),
    };
    match type_url {
        ADDRESS => {
            let message = Address::decode(bytes).map_err(undecodable)?;
            receive::address(name, &message).map(Read::Address)
        }
        _ => {
            let message = pb::Authorization::decode(bytes).map_err(undecodable)?;
            receive::authorization(name, &message).map(Read::Authorization)
        }
    }
}

enum Read {
    Address(ReceivedAddress),
    Authorization(Authorization),
}

/// `held` with `response` applied, and the resources refused.
fn apply(held: &Held, response: &DeltaDiscoveryResponse) -> (Held, Vec<Rejected>) {
    let mut next = held.clone();
    let mut rejected = Vec::new();
    for resource in &response.resources {
        let bytes = resource.resource.as_ref().map_or(&[][..], |a| &a.value[..]);
        match read(&response.type_url, &resource.name, bytes) {
            Ok(Read::Address(a)) => {
                next.addresses
                    .insert(resource.name.clone(), (resource.version.clone(), a));
            }
            Ok(Read::Authorization(a)) => {
                next.authorizations
                    .insert(resource.name.clone(), (resource.version.clone(), a));
            }
            Err(e) => rejected.push(e),
        }
    }
    for name in &response.removed_resources {
        if response.type_url == ADDRESS {
            next.addresses.remove(name);
        } else {
            next.authorizations.remove(name);
        }
    }
    (next, rejected)
}

/// The registry the held addresses describe, for a proxy on `node`.
pub fn registry_from(
    addresses: impl IntoIterator<Item = ReceivedAddress>,
    node: &str,
) -> Result<Registry, FieldError> {
    let mut nodes = BTreeSet::from([node.to_string()]);
    let mut workloads = Vec::new();
    let mut services = Vec::new();
    // Names many records share, one allocation each (see `Distinct::name`).
    let mut names = Distinct::default();
    for a in addresses {
        match a {
            ReceivedAddress::Workload(r) => {
                let w = r.workload;
                let identity = Identity::new(&w.trust_domain, &w.namespace, &w.service_account)
                    .map_err(|e| {
                        FieldError::new(
                            format!("workload {}/{}", w.namespace, w.name),
                            e.to_string(),
                        )
                    })?;
                nodes.insert(w.node.clone());
                workloads.push(Workload {
                    uid: w.uid.into(),
                    name: w.name.into(),
                    namespace: names.name(&w.namespace),
                    service_account: names.name(&w.service_account),
                    ips: w.ips.into(),
                    node: names.name(&w.node),
                    protocol: if w.hbone {
                        Protocol::Hbone
                    } else {
                        Protocol::Tcp
                    },
                    identity: Some(Arc::new(identity)),
                    listed: Some(Box::new(Listed {
                        authorization_policies: r.policies.into(),
                        service_ports: w
                            .services
                            .iter()
                            .map(|(key, pairs)| (key.clone(), pairs.iter().copied().collect()))
                            .collect(),
                        services: w.services.into_keys().collect(),
                    })),
                    ..Workload::default()
                });
            }
            ReceivedAddress::Service(s) => services.push(Service {
                name: s.name,
                namespace: s.namespace,
                hostname: Some(s.hostname),
                vips: s.vips,
                // A target port of 0 is kept: istiod sends it when the
                // Service names its target, and each endpoint's record then
                // carries the number (Workload::service_ports).
                ports: s.ports.into_iter().collect(),
                selector: None,
            }),
        }
    }
    Registry::from_file(RegistryFile {
        trust_domain: "cluster.local".into(),
        nodes: nodes.into_iter().map(|name| Node { name }).collect(),
        workloads,
        services,
    })
}

/// Follows the control plane until `shutdown`, swapping each accepted state
/// into `core`. `status` tells what it has done.
pub async fn follow(
    core: Arc<ProxyCore>,
    settings: XdsSettings,
    status: watch::Sender<XdsStatus>,
    shutdown: CancellationToken,
) {
    let mut held = Held::default();
    let mut backoff = Duration::from_millis(100);
    loop {
        let ended = tokio::select! {
            r = stream(&core, &settings, &mut held, &status) => r,
            _ = shutdown.cancelled() => return,
        };
        let (error, answered) = ended;
        if answered {
            backoff = Duration::from_millis(100);
        }
        warn!(control_plane = %settings.address, error = %error, retry_in = ?backoff, "xDS stream ended; serving what is held and reconnecting");
        status.send_modify(|s| s.last_error = Some(error.to_string()));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

/// One stream: connect, subscribe declaring what is held, answer every
/// response. Returns why it ended and whether anything was received.
async fn stream(
    core: &ProxyCore,
    settings: &XdsSettings,
    held: &mut Held,
    status: &watch::Sender<XdsStatus>,
) -> (ClientError, bool) {
    let token = match &settings.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                return (
                    ClientError::Address {
                        address: settings.address.clone(),
                        reason: format!("cannot read the token file {}: {e}", path.display()),
                    },
                    false,
                );
            }
        },
        None => None,
    };
    let mut client = match AdsClient::connect(
        &settings.address,
        &settings.root_pem,
        token.as_deref(),
        hbone_xds::client::node(&settings.node_id, &settings.metadata),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return (e, false),
    };
    status.send_modify(|s| s.connects += 1);
    for type_url in [ADDRESS, AUTHORIZATION] {
        if let Err(e) = client.subscribe(type_url, held.versions(type_url)).await {
            return (e, false);
        }
    }
    let mut answered = BTreeSet::new();
    loop {
        let response = match client.receive().await {
            Ok(r) => r,
            Err(e) => return (e, !answered.is_empty()),
        };
        let outcome = if response.type_url == ADDRESS || response.type_url == AUTHORIZATION {
            accept(core, settings, held, &response)
        } else {
            Err(format!("not subscribed to {}", response.type_url))
        };
        answered.insert(response.type_url.clone());
        let sent = match &outcome {
            Ok(()) => client.ack(&response).await,
            Err(reason) => client.nack(&response, reason).await,
        };
        // Ready before the status says synced: whoever waits for one sees the other.
        if answered.len() == 2 {
            core.set_waiting_for(None);
        }
        status.send_modify(|s| {
            match &outcome {
                Ok(()) => s.acks += 1,
                Err(reason) => {
                    s.nacks += 1;
                    s.last_nack = Some(reason.clone());
                }
            }
            s.synced |= answered.len() == 2;
            s.workloads = core.registry().workloads.len();
            s.services = core.registry().services.len();
            s.policies = core.policies().policies().len();
        });
        if let Err(e) = sent {
            return (e, true);
        }
    }
}

/// Applies one response to `held` and `core`; `Err` is the NACK's message.
fn accept(
    core: &ProxyCore,
    settings: &XdsSettings,
    held: &mut Held,
    response: &DeltaDiscoveryResponse,
) -> Result<(), String> {
    let (next, rejected) = apply(held, response);
    if response.type_url == ADDRESS {
        let addresses = next.addresses.values().map(|(_, a)| a.clone());
        let registry = registry_from(addresses, &core.node).map_err(|e| {
            warn!(error = %e, "the control plane's workloads are inconsistent; keeping the previous registry");
            format!("refused whole, keeping the previous state: {e}")
        })?;
        info!(
            workloads = registry.workloads.len(),
            services = registry.services.len(),
            "workloads from the control plane: new connections use them"
        );
        core.replace_registry(registry);
        *held = next;
        let revoked = core.rejudge();
        if !revoked.is_empty() {
            info!(
                streams_closed = revoked.len(),
                "open streams judged again with the workloads' new policy lists"
            );
        }
    } else {
        let policies: Vec<Authorization> = next
            .authorizations
            .values()
            .map(|(_, a)| a.clone())
            .collect();
        let count = policies.len();
        let revoked = core.replace_policies(MeshAuthorization::pushed(
            &settings.root_namespace,
            policies,
        ));
        *held = next;
        info!(
            authorization_policies = count,
            streams_closed = revoked.len(),
            "policies from the control plane: open streams judged again"
        );
    }
    if rejected.is_empty() {
        Ok(())
    } else {
        for r in &rejected {
            warn!(resource = %r.resource, field = %r.field, reason = %r.reason, "a resource from the control plane cannot be used; its last good version is kept");
        }
        Err(rejected
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("; "))
    }
}

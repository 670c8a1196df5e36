//! `policy diff --against istiod`: hbone-lab's translation of Istio
//! policies checked against istiod's own. Each policy set is applied to a
//! real kube-apiserver; what istiod then pushes is read back as a node
//! proxy reads it (delta ADS with a pod-bound ztunnel token), and each
//! `Authorization` is compared field by field with `policy translate`'s.
//!
//! Why here and not only through connections: the connection-level diff
//! feeds ztunnel hbone-lab's translation, so a translation bug would reach
//! both sides alike and never show. Here the other side is istiod itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use hbone_control_plane::tokens::PodToken;
use hbone_control_plane::world::{self, World};
use hbone_control_plane::{ControlPlane, ControlPlaneOptions, Given, Programs};
use hbone_policies::authorization::Authorization;
use hbone_policies::load::{istio_policies, parse_documents};
use hbone_xds::client::{AdsClient, node};
use hbone_xds::receive::{ReceivedAddress, address, authorization};
use thiserror::Error;

/// The type istiod serves translated policies as.
const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";
/// The node the differential's xDS client introduces itself on.
const NODE: &str = "diff-node";
/// How long istiod is given to push a changed set.
const PUSH_WITHIN: Duration = Duration::from_secs(10);

/// Why the differential could not run (not a disagreement: those are results).
#[derive(Debug, Error)]
pub enum IstiodDiffError {
    /// The programs are missing or would not start.
    #[error("the real control plane: {0}")]
    ControlPlane(#[from] hbone_control_plane::ControlPlaneError),
    /// The programs are missing.
    #[error(transparent)]
    Programs(#[from] hbone_control_plane::PeerError),
    /// The xDS stream failed.
    #[error("reading istiod's push: {0}")]
    Xds(#[from] hbone_xds::client::ClientError),
    /// A policy set does not load.
    #[error("{source_name} does not load: {message}")]
    Policies {
        /// Which set.
        source_name: String,
        /// Why.
        message: String,
    },
    /// istiod sent something hbone-lab cannot read.
    #[error("istiod sent {resource}, which does not read: {reason}")]
    Unreadable {
        /// The resource's name.
        resource: String,
        /// Why.
        reason: String,
    },
}

/// One policy that the two translations do not agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// The policy set (its name: a file, or `generated set N`).
    pub set: String,
    /// The policy's key (`namespace/name`).
    pub key: String,
    /// hbone-lab's translation (`None`: it has none by that key).
    pub ours: Option<Authorization>,
    /// istiod's (`None`: it sent none by that key).
    pub istiod: Option<Authorization>,
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |a: &Option<Authorization>| match a {
            Some(a) => format!("{a:?}"),
            None => "(none)".to_string(),
        };
        write!(
            f,
            "{}: {}\n  hbone-lab: {}\n  istiod:    {}",
            self.set,
            self.key,
            side(&self.ours),
            side(&self.istiod)
        )
    }
}

/// istiod as the oracle: a control plane, and one xDS stream reading what
/// it pushes.
pub struct IstiodTranslator {
    ads: AdsClient,
    held: BTreeMap<String, Authorization>,
    applied: Option<String>,
    _token: PodToken,
    control: ControlPlane,
}

impl IstiodTranslator {
    /// Starts etcd, kube-apiserver and istiod, and subscribes to istiod's
    /// policies as a node proxy of its one node (`diff-node`).
    pub async fn start(given: &Given) -> Result<IstiodTranslator, IstiodDiffError> {
        let mut options = ControlPlaneOptions::new(Programs::find(given)?);
        // Push as soon as a change is seen: the differential applies
        // hundreds of sets one after another.
        options
            .istiod_env
            .push(("PILOT_DEBOUNCE_AFTER".into(), "10ms".into()));
        let control = ControlPlane::start(options).await?;
        let applied = world::apply(
            &control.client,
            &World {
                nodes: vec![NODE.into()],
                ..World::default()
            },
        )
        .await?;
        let token = control.node_token(&applied, NODE).await?;
        let bearer = std::fs::read_to_string(&token.path).unwrap_or_default();
        let ads = AdsClient::connect(
            &control.istiod_url(),
            &control.root_pem,
            Some(bearer.trim()),
            node(
                &world::node_proxy_id(NODE, [127, 0, 0, 1].into()),
                &world::node_proxy_metadata(NODE),
            ),
        )
        .await?;
        ads.subscribe(AUTHORIZATION, HashMap::new()).await?;
        let mut translator = IstiodTranslator {
            ads,
            held: BTreeMap::new(),
            applied: None,
            _token: token,
            control,
        };
        // The first answer: the (empty) state before any set.
        translator.receive_one().await?;
        Ok(translator)
    }

    /// Applies one response to what is held, and ACKs it.
    async fn receive_one(&mut self) -> Result<(), IstiodDiffError> {
        let response = self.ads.receive().await?;
        apply_response(&mut self.held, &response, authorization)?;
        self.ads.ack(&response).await?;
        Ok(())
    }

    /// Makes `yaml` the only policies in the API server and returns what
    /// istiod pushes for them: once the keys it holds are `expect`, or
    /// whatever it holds once istiod has had its time to push (`PUSH_WITHIN`).
    pub async fn translate(
        &mut self,
        yaml: &str,
        source_name: &str,
        expect: &BTreeSet<String>,
    ) -> Result<Vec<Authorization>, IstiodDiffError> {
        let client = self.control.client.clone();
        if let Some(previous) = self.applied.take() {
            world::delete_yaml(&client, &previous, "the previous set").await?;
        }
        // Set first: a set refused half-way is still deleted next time.
        self.applied = Some(yaml.to_string());
        world::apply_yaml(&client, yaml, source_name).await?;
        let deadline = tokio::time::Instant::now() + PUSH_WITHIN;
        loop {
            let keys: BTreeSet<String> = self.held.keys().cloned().collect();
            if &keys == expect {
                // A push may still be on its way for a changed policy of
                // the same name: take what arrives within a moment.
                while let Ok(received) =
                    tokio::time::timeout(Duration::from_millis(150), self.receive_one()).await
                {
                    received?;
                }
                break;
            }
            match tokio::time::timeout_at(deadline, self.receive_one()).await {
                Ok(received) => received?,
                Err(_) => break,
            }
        }
        Ok(self.held.values().cloned().collect())
    }
}

/// Applies one delta response to `held`: removals, then each resource
/// decoded as `M` and read by `read` (what a proxy would hold).
fn apply_response<M, T, E>(
    held: &mut BTreeMap<String, T>,
    response: &hbone_xds::proto::discovery::DeltaDiscoveryResponse,
    read: impl Fn(&str, &M) -> Result<T, E>,
) -> Result<(), IstiodDiffError>
where
    M: prost::Message + Default,
    E: std::fmt::Display,
{
    for name in &response.removed_resources {
        held.remove(name);
    }
    for resource in &response.resources {
        let Some(any) = &resource.resource else {
            continue;
        };
        let unreadable = |reason: String| IstiodDiffError::Unreadable {
            resource: resource.name.clone(),
            reason,
        };
        let message = M::decode(any.value.as_slice()).map_err(|e| unreadable(e.to_string()))?;
        let value = read(&resource.name, &message).map_err(|e| unreadable(e.to_string()))?;
        held.insert(resource.name.clone(), value);
    }
    Ok(())
}

/// hbone-lab's translation of `yaml`, as `policy translate` prints it.
pub fn ours(yaml: &str, source_name: &str) -> Result<Vec<Authorization>, IstiodDiffError> {
    let loaded = parse_documents(yaml, source_name).map_err(|e| IstiodDiffError::Policies {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })?;
    Ok(istio_policies(&loaded, "istio-system")
        .translated()
        .policies()
        .to_vec())
}

/// Every key on which the two translations differ.
pub fn compare(set: &str, ours: &[Authorization], istiod: &[Authorization]) -> Vec<Disagreement> {
    let by_key = |list: &[Authorization]| -> BTreeMap<String, Authorization> {
        list.iter().map(|a| (a.key(), a.clone())).collect()
    };
    let (ours, istiod) = (by_key(ours), by_key(istiod));
    let keys: BTreeSet<&String> = ours.keys().chain(istiod.keys()).collect();
    keys.into_iter()
        .filter(|k| ours.get(*k) != istiod.get(*k))
        .map(|k| Disagreement {
            set: set.to_string(),
            key: k.clone(),
            ours: ours.get(k).cloned(),
            istiod: istiod.get(k).cloned(),
        })
        .collect()
}

/// What became of one policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Both translated it; these are the keys they differ on (none: agreed).
    Compared(Vec<Disagreement>),
    /// The API server refused it (a CRD validation rule hbone-lab's own
    /// check does not know): istiod never saw it.
    Refused(String),
}

/// Checks one policy set: applies it, reads istiod's translation, compares.
pub async fn check_set(
    translator: &mut IstiodTranslator,
    yaml: &str,
    set: &str,
) -> Result<Checked, IstiodDiffError> {
    let ours = ours(yaml, set)?;
    let expect: BTreeSet<String> = ours.iter().map(Authorization::key).collect();
    match translator.translate(yaml, set, &expect).await {
        Ok(theirs) => Ok(Checked::Compared(compare(set, &ours, &theirs))),
        Err(IstiodDiffError::ControlPlane(hbone_control_plane::ControlPlaneError::Api {
            source: kube::Error::Api(status),
            ..
        })) if status.code == 422 => Ok(Checked::Refused(status.message)),
        Err(e) => Err(e),
    }
}

/// The type workloads and services are served as.
const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";

/// Every `Address` a control plane serves node `node_name` — connecting to
/// `url` with `token`, subscribing, and reading until it has been quiet
/// for a second after its first answer — by resource name.
pub async fn addresses(
    url: &str,
    root_pem: &str,
    token: Option<&str>,
    node_name: &str,
) -> Result<BTreeMap<String, ReceivedAddress>, IstiodDiffError> {
    let mut ads = AdsClient::connect(
        url,
        root_pem,
        token,
        node(
            &world::node_proxy_id(node_name, [127, 0, 0, 1].into()),
            &world::node_proxy_metadata(node_name),
        ),
    )
    .await?;
    ads.subscribe(ADDRESS, HashMap::new()).await?;
    let mut held = BTreeMap::new();
    let mut first = true;
    loop {
        let wait = if first {
            PUSH_WITHIN
        } else {
            Duration::from_secs(1)
        };
        let Ok(response) = tokio::time::timeout(wait, ads.receive()).await else {
            return Ok(held);
        };
        let response = response?;
        first = false;
        apply_response(&mut held, &response, address)?;
        ads.ack(&response).await?;
    }
}

/// Where hbone-lab's own control plane and istiod describe the lab's
/// world differently: each `Address` of `namespaces`, field by field (a
/// record only one side has is a difference too). What istiod adds for
/// the cluster itself (the API server's Service and endpoint) is outside
/// those namespaces and not compared.
pub fn compare_addresses(
    ours: &BTreeMap<String, ReceivedAddress>,
    istiod: &BTreeMap<String, ReceivedAddress>,
    namespaces: &[&str],
) -> Vec<String> {
    let in_scope = |a: &ReceivedAddress| {
        let namespace = match a {
            ReceivedAddress::Workload(w) => &w.workload.namespace,
            ReceivedAddress::Service(s) => &s.namespace,
        };
        namespaces.contains(&namespace.as_str())
    };
    let names: BTreeSet<&String> = ours
        .iter()
        .chain(istiod.iter())
        .filter(|(_, a)| in_scope(a))
        .map(|(name, _)| name)
        .collect();
    let mut differences = Vec::new();
    for name in names {
        match (ours.get(name), istiod.get(name)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                differences.push(format!("{name}:\n  hbone-lab: {a:?}\n  istiod:    {b:?}"))
            }
            (Some(_), None) => differences.push(format!("{name}: only hbone-lab serves it")),
            (None, Some(_)) => differences.push(format!("{name}: only istiod serves it")),
            (None, None) => {}
        }
    }
    differences
}

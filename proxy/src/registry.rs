//! The workload registry: who runs where, as ztunnel learns it from xDS.
//!
//! Standalone there is no istiod, so the registry is a YAML file:
//!
//! ```yaml
//! trustDomain: cluster.local
//! nodes:
//!   - name: node-1
//!   - name: node-2
//! workloads:
//!   - name: hello-app
//!     namespace: demo
//!     serviceAccount: hello-app
//!     labels: {app: hello-app}
//!     ips: [127.0.2.2]
//!     node: node-2
//!     protocol: HBONE          # HBONE (meshed, the default) or TCP (not meshed)
//!     # uid: Kubernetes//Pod/demo/hello-app   # the default: how a node agent (ZDS) names it
//! services:
//!   - name: hello-app
//!     namespace: demo
//!     vips: [127.0.3.2]
//!     ports: {8000: 8000}     # service port → target port
//!     selector: {app: hello-app}
//! ```
//!
//! A source is identified by its IP; a destination by a workload IP or a
//! service VIP. A meshed destination is reached over HBONE at its own IP on
//! port 15008, as ztunnel does in its in-pod mode: the receiving proxy then
//! knows from the address a connection arrived on which workload, and so
//! which certificate, it serves.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use hbone_ca::Identity;
use hbone_policies::selector::labels_match;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::FieldError;

/// Why a registry file could not be loaded.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The file could not be read.
    #[error("cannot read registry {file}: {source}")]
    Read {
        /// The registry file's path.
        file: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// A field is malformed, or a reference, identity or address in it is wrong.
    #[error("{file}: field `{field}`: {message}")]
    Field {
        /// The registry file's path.
        file: String,
        /// The field's path, like `workloads[2].ips`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// How a workload is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Meshed: reached over HBONE, identity checked on arrival.
    #[default]
    Hbone,
    /// Not meshed: plain TCP passthrough.
    Tcp,
}

/// A node a proxy may serve (`nodes:`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    /// The node's name, as a proxy's config names it.
    pub name: String,
}

/// A workload (a pod): who it is, where it runs, how it is reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    /// The pod's name.
    pub name: Box<str>,
    /// Its Kubernetes namespace (one copy per distinct name, shared).
    #[serde(deserialize_with = "shared_name")]
    pub namespace: Arc<str>,
    /// Its service account: with the namespace and trust domain, its
    /// SPIFFE identity (one copy per distinct name, shared).
    #[serde(deserialize_with = "shared_name")]
    pub service_account: Arc<str>,
    /// Its labels, matched by service and policy selectors. Shared: the
    /// pods of one ReplicaSet carry the same labels, and the registry keeps
    /// one copy of each distinct set (a map of one label is 640 bytes).
    #[serde(default)]
    pub labels: Arc<BTreeMap<String, String>>,
    /// Its addresses, at least one; any of them identifies it as a source.
    pub ips: Box<[IpAddr]>,
    /// The node it runs on, one of those under `nodes` (shared, like the
    /// namespace: a hundred nodes for a hundred thousand pods).
    #[serde(deserialize_with = "shared_name")]
    pub node: Arc<str>,
    /// Meshed (`HBONE`, the default) or plain `TCP`.
    #[serde(default)]
    pub protocol: Protocol,
    /// The named network namespace holding this workload's sockets (in-pod
    /// mode), e.g. `/var/run/netns/pod-hello-app`: the proxy binds and dials
    /// there, through a handle it keeps beside the registry
    /// (`state::pod_netns`). A pod handed over by a node agent needs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<Box<Path>>,
    /// Filled in at load from the registry's trust domain; shared by the
    /// workloads of one service account, like the labels.
    #[serde(skip)]
    pub identity: Option<Arc<Identity>>,
    /// What its xDS record lists that a registry file leaves to selectors;
    /// `None` for a file's workloads, which then pay one pointer for it.
    #[serde(skip)]
    pub listed: Option<Box<Listed>>,
    /// The control plane's uid for it (`Kubernetes//Pod/<ns>/<name>`, the
    /// default), by which a node agent names the pod whose namespace it hands over.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub uid: Box<str>,
}

/// What a workload's xDS record lists by name, where a registry file has
/// selectors instead: istiod sends no selectors, only their results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listed {
    /// The selector-scoped policy keys that apply to it.
    pub authorization_policies: Box<[String]>,
    /// The services (`namespace/hostname`) it is an endpoint of.
    pub services: Box<[String]>,
    /// For each of those services, its port → this workload's target port,
    /// where the control plane says so per workload (istiod does when the
    /// Service's target port is a name: the number is each pod's own).
    pub service_ports: BTreeMap<String, BTreeMap<u16, u16>>,
}

impl Workload {
    /// Its SPIFFE identity, set when the registry is built (panics before).
    pub fn identity(&self) -> &Identity {
        self.identity
            .as_deref()
            .expect("identity is set when the registry loads")
    }

    /// The selector-scoped policy keys its xDS record lists (none from a file).
    pub fn authorization_policies(&self) -> &[String] {
        self.listed
            .as_deref()
            .map_or(&[], |l| &l.authorization_policies)
    }

    /// The services its xDS record says it is an endpoint of (none from a file).
    pub fn services(&self) -> &[String] {
        self.listed.as_deref().map_or(&[], |l| &l.services)
    }

    /// Its own target port for `service`'s `port`, where its xDS record gives one.
    pub fn service_target_port(&self, service: &str, port: u16) -> Option<u16> {
        self.listed
            .as_deref()?
            .service_ports
            .get(service)?
            .get(&port)
            .copied()
    }
}

/// A service: virtual IPs in front of the workloads it selects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    /// The service's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its hostname, when not `name.namespace.svc.<suffix>`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Its virtual IPs; a connection to one goes to one of its endpoints.
    pub vips: Vec<IpAddr>,
    /// Service port → target port.
    pub ports: BTreeMap<u16, u16>,
    /// The labels of its endpoints; without one, its endpoints are the
    /// workloads that name it (xDS). Kept once per distinct label map,
    /// with the workloads' label sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Arc<BTreeMap<String, String>>>,
}

impl Service {
    /// `namespace/hostname`, the key a workload's record names it by.
    pub fn key(&self, trust_domain_suffix: &str) -> String {
        format!("{}/{}", self.namespace, self.hostname(trust_domain_suffix))
    }

    /// Whether `w` is one of its endpoints.
    pub fn selects(&self, w: &Workload) -> bool {
        *w.namespace == *self.namespace
            && match &self.selector {
                Some(labels) => labels_match(labels, &w.labels),
                None => w.services().contains(&self.key("cluster.local")),
            }
    }

    /// Its hostname: the one given, else `name.namespace.svc.<trust_domain_suffix>`.
    pub fn hostname(&self, trust_domain_suffix: &str) -> String {
        self.hostname.clone().unwrap_or_else(|| {
            format!("{}.{}.svc.{trust_domain_suffix}", self.name, self.namespace)
        })
    }
}

/// The registry's YAML document, as written (see the module's example).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryFile {
    /// Trust domain of the workloads' identities (default `cluster.local`).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The nodes proxies may serve.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Every workload, on any node.
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// Every service.
    #[serde(default)]
    pub services: Vec<Service>,
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

/// Where an outbound connection goes.
#[derive(Debug, Clone)]
pub enum Destination<'a> {
    /// A known workload, possibly reached through a service.
    Workload {
        /// The workload chosen.
        workload: &'a Arc<Workload>,
        /// The workload's address and target port.
        addr: SocketAddr,
        /// The service dialed, when the address was its VIP.
        service: Option<&'a Arc<Service>>,
    },
    /// Not in the registry: passed through as plain TCP.
    External(SocketAddr),
}

/// Why a destination cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResolveError {
    /// The service at that VIP does not serve that port.
    #[error("service {service} has no port {port}")]
    NoPort {
        /// `namespace/name`.
        service: String,
        /// The port asked for.
        port: u16,
    },
    /// The service has no endpoint to send to.
    #[error("service {service} has no endpoints")]
    NoEndpoints {
        /// `namespace/name`.
        service: String,
    },
}

/// The registry, validated and indexed.
///
/// Every new connection asks it where an address goes, so the answer is a
/// hash lookup, not a scan: with 100 000 workloads known, a scan of every
/// workload and service per connection would cost more than the tunnel.
/// Anything that adds, removes or re-addresses entries builds a new
/// registry ([`Registry::from_file`]), which indexes it again.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Trust domain of the workloads' SPIFFE identities.
    pub trust_domain: String,
    /// The nodes proxies may serve.
    pub nodes: Vec<Node>,
    /// Shared, so a connection holds its endpoints for its lifetime at the
    /// cost of a reference count, not a copy of every name and label.
    pub workloads: Vec<Arc<Workload>>,
    /// Every service, shared like the workloads.
    pub services: Vec<Arc<Service>>,
    index: Index,
}

/// What an address is, by position in the registry's lists.
#[derive(Debug, Clone, Copy)]
enum Addressed {
    Workload(u32),
    Service(u32),
}

/// The lookups a connection needs, built once per registry.
#[derive(Debug, Clone, Default)]
struct Index {
    by_ip: std::collections::HashMap<IpAddr, Addressed>,
    /// The first workload of each identity (many pods share one).
    by_identity: std::collections::HashMap<Arc<Identity>, u32>,
    /// For each service (same position), its endpoints' positions.
    endpoints: Vec<Vec<u32>>,
}

impl Index {
    fn build(workloads: &[Arc<Workload>], services: &[Arc<Service>]) -> Index {
        let mut by_ip = std::collections::HashMap::with_capacity(workloads.len() + services.len());
        let mut by_identity = std::collections::HashMap::new();
        for (i, w) in workloads.iter().enumerate() {
            for ip in &w.ips {
                by_ip.insert(*ip, Addressed::Workload(i as u32));
            }
            if let Some(identity) = &w.identity {
                by_identity.entry(identity.clone()).or_insert(i as u32);
            }
        }
        for (i, s) in services.iter().enumerate() {
            for vip in &s.vips {
                by_ip.insert(*vip, Addressed::Service(i as u32));
            }
        }
        // Selectors are matched once here, not per connection, and each
        // service looks only at the workloads that carry one of its labels
        // (or name it), not at every workload: 10 000 services over
        // 100 000 workloads would otherwise be 10⁹ comparisons.
        type Key<'a> = (&'a str, &'a str, &'a str);
        let mut by_label: std::collections::HashMap<Key<'_>, Vec<u32>> = Default::default();
        let mut by_namespace: std::collections::HashMap<&str, Vec<u32>> = Default::default();
        let mut by_service: std::collections::HashMap<&str, Vec<u32>> = Default::default();
        for (i, w) in workloads.iter().enumerate() {
            let i = i as u32;
            by_namespace.entry(&w.namespace).or_default().push(i);
            for (k, v) in w.labels.iter() {
                by_label.entry((&w.namespace, k, v)).or_default().push(i);
            }
            for key in w.services() {
                by_service.entry(key).or_default().push(i);
            }
        }
        let none = Vec::new();
        let endpoints = services
            .iter()
            .map(|s| {
                let key = s.key("cluster.local");
                let candidates = match &s.selector {
                    None => by_service.get(key.as_str()),
                    Some(selector) => match selector.iter().next() {
                        None => by_namespace.get(s.namespace.as_str()),
                        Some((k, v)) => {
                            by_label.get(&(s.namespace.as_str(), k.as_str(), v.as_str()))
                        }
                    },
                };
                candidates
                    .unwrap_or(&none)
                    .iter()
                    .copied()
                    .filter(|i| s.selects(&workloads[*i as usize]))
                    .collect()
            })
            .collect();
        Index {
            by_ip,
            by_identity,
            endpoints,
        }
    }
}

thread_local! {
    /// The names read so far by the [`Registry::parse`] running on this
    /// thread, if one is.
    static NAMES_READ: std::cell::RefCell<Option<Distinct<str>>> =
        const { std::cell::RefCell::new(None) };
}

/// A name many workloads share (namespace, service account, node), read as
/// the copy the parse in progress already holds, if it holds one.
///
/// Deduplicated as it is read, not afterwards ([`Distinct`] does that for
/// what is not parsed here): each workload's own copy would be allocated
/// among the values kept, three to a workload, and freed a moment later —
/// jemalloc's 32-byte slabs, where the workloads' IP lists and uids live,
/// stayed half used (64 bytes of RSS a workload).
fn shared_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    struct Name;
    impl serde::de::Visitor<'_> for Name {
        type Value = Arc<str>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a name")
        }

        fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Arc<str>, E> {
            Ok(NAMES_READ.with_borrow_mut(|read| match read {
                Some(read) => read.name(name),
                None => Arc::from(name),
            }))
        }
    }
    d.deserialize_str(Name)
}

/// Keeps [`NAMES_READ`] for as long as it lives, however the parse ends.
struct ReadingNames;

impl ReadingNames {
    fn start() -> ReadingNames {
        NAMES_READ.set(Some(Default::default()));
        ReadingNames
    }
}

impl Drop for ReadingNames {
    fn drop(&mut self) {
        NAMES_READ.set(None);
    }
}

/// One copy of each distinct value, shared by everything that holds an
/// equal one.
pub(crate) struct Distinct<T: ?Sized>(std::collections::HashSet<Arc<T>>);

impl<T: ?Sized> Default for Distinct<T> {
    fn default() -> Self {
        Distinct(std::collections::HashSet::new())
    }
}

impl<T: Eq + std::hash::Hash + ?Sized> Distinct<T> {
    /// The copy kept of `value`: the first equal one seen, else `value`.
    fn one(&mut self, value: Arc<T>) -> Arc<T> {
        self.kept(&value, || value.clone())
    }

    /// The copy kept of a value equal to `value`, else the one `make` makes
    /// (and keeps).
    fn kept(&mut self, value: &T, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        if let Some(kept) = self.0.get(value) {
            return kept.clone();
        }
        let kept = make();
        self.0.insert(kept.clone());
        kept
    }

    /// A fresh copy of each value kept, to be shared in their place
    /// ([`Distinct::one`] with each holder's value).
    ///
    /// Why: the values kept were allocated while the file was parsed, among
    /// the parser's short-lived allocations and the equal values dropped
    /// since, so each holds a page of otherwise freed memory resident — one
    /// label map kept in ten left jemalloc's 640-byte slabs 10 % used, 580
    /// bytes of RSS a workload. Copied once all that is freed, they pack
    /// into the lowest free slots, and the pages the originals held go back.
    fn repacked(&self) -> Distinct<T>
    where
        T: ToOwned,
        Arc<T>: From<T::Owned>,
    {
        Distinct(
            self.0
                .iter()
                .map(|kept| Arc::<T>::from(T::to_owned(kept)))
                .collect(),
        )
    }
}

impl Distinct<str> {
    /// The copy kept of `name`, made now if none is: a name read or
    /// received per workload costs an allocation only the first time.
    pub(crate) fn name(&mut self, name: &str) -> Arc<str> {
        self.kept(name, || Arc::from(name))
    }
}

/// `items`, each behind an `Arc`, in a list of exactly their number.
///
/// Not `into_iter().map(Arc::new).collect()`: the standard library collects
/// that in place, into the parsed list's own allocation, which then stays
/// as large as the parsed values were (344 bytes a workload, against 8 for
/// its `Arc`) for as long as the registry lives.
fn shared<T>(items: Vec<T>) -> Vec<Arc<T>> {
    let mut out = Vec::with_capacity(items.len());
    out.extend(items.into_iter().map(Arc::new));
    out
}

impl Registry {
    /// Reads and validates the registry file at `path`.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let file = path.display().to_string();
        let max = hbone_policies::load::MAX_FILE_BYTES;
        let text = hbone_policies::load::read_bounded(path, max).map_err(|source| {
            RegistryError::Read {
                file: file.clone(),
                source,
            }
        })?;
        Self::parse(&text, &file)
    }

    /// Parses and validates a registry document; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, RegistryError> {
        let err = |FieldError { field, message }| RegistryError::Field {
            file: file.to_string(),
            field,
            message,
        };
        let reading = ReadingNames::start();
        let doc: RegistryFile = crate::config::parse_yaml(text).map_err(err)?;
        drop(reading);
        Self::from_file(doc).map_err(err)
    }

    /// Validates cross-references and computes identities (in the file's
    /// trust domain, unless a workload comes with its own, as from xDS).
    pub fn from_file(mut doc: RegistryFile) -> Result<Self, FieldError> {
        let mut seen_ips = BTreeMap::new();
        let mut label_sets = Distinct::default();
        let mut identities = Distinct::default();
        let mut names = Distinct::<str>::default();
        for (i, w) in doc.workloads.iter_mut().enumerate() {
            for name in [&mut w.namespace, &mut w.service_account, &mut w.node] {
                *name = names.one(name.clone());
            }
            if w.uid.is_empty() {
                w.uid = hbone_xds::MeshWorkload::pod_uid(&w.namespace, &w.name).into();
            }
            let identity = match w.identity.take() {
                Some(identity) => identity,
                None => Identity::new(&doc.trust_domain, &w.namespace, &w.service_account)
                    .map(Arc::new)
                    .map_err(|e| FieldError::new(format!("workloads[{i}]"), e.to_string()))?,
            };
            w.identity = Some(identities.one(identity));
            w.labels = label_sets.one(w.labels.clone());
            if !doc.nodes.iter().any(|n| *n.name == *w.node) {
                return Err(FieldError::new(
                    format!("workloads[{i}].node"),
                    format!("node {:?} is not listed under nodes", w.node),
                ));
            }
            if w.ips.is_empty() {
                return Err(FieldError::new(
                    format!("workloads[{i}].ips"),
                    "a workload needs at least one IP",
                ));
            }
            for ip in &w.ips {
                if let Some(other) = seen_ips.insert(*ip, w.name.to_string()) {
                    return Err(FieldError::new(
                        format!("workloads[{i}].ips"),
                        format!("{ip} is also used by workload {other}"),
                    ));
                }
            }
        }
        for (i, s) in doc.services.iter_mut().enumerate() {
            s.selector = s.selector.take().map(|selector| label_sets.one(selector));
            for vip in &s.vips {
                if let Some(other) = seen_ips.insert(*vip, s.name.clone()) {
                    return Err(FieldError::new(
                        format!("services[{i}].vips"),
                        format!("{vip} is also used by {other}"),
                    ));
                }
            }
        }
        // Every duplicate and the parser's own allocations are freed by now:
        // share fresh copies of the label maps kept (`Distinct::repacked`).
        let mut label_sets = label_sets.repacked();
        for w in &mut doc.workloads {
            w.labels = label_sets.one(w.labels.clone());
        }
        for s in &mut doc.services {
            s.selector = s.selector.take().map(|selector| label_sets.one(selector));
        }
        let workloads = shared(doc.workloads);
        let services = shared(doc.services);
        Ok(Registry {
            trust_domain: doc.trust_domain,
            nodes: doc.nodes,
            index: Index::build(&workloads, &services),
            workloads,
            services,
        })
    }

    /// The workload with `ip` among its addresses (`None` for a service VIP).
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        match self.index.by_ip.get(&ip)? {
            Addressed::Workload(i) => self.workloads.get(*i as usize),
            Addressed::Service(_) => None,
        }
    }

    fn service_by_vip(&self, ip: IpAddr) -> Option<(usize, &Arc<Service>)> {
        match self.index.by_ip.get(&ip)? {
            Addressed::Service(i) => Some((*i as usize, self.services.get(*i as usize)?)),
            Addressed::Workload(_) => None,
        }
    }

    /// The first workload with `identity` (several pods may share one).
    pub fn workload_by_identity(&self, identity: &Identity) -> Option<&Arc<Workload>> {
        let i = *self.index.by_identity.get(identity)?;
        self.workloads.get(i as usize)
    }

    /// Workloads on `node`.
    pub fn local_workloads<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Workload>> + 'a {
        self.workloads.iter().filter(move |w| &*w.node == node)
    }

    /// A service by VIP or by hostname (`name.namespace.svc.cluster.local`, `name.namespace`, or `name`).
    pub fn service_by_host(&self, host: &str) -> Option<&Arc<Service>> {
        let host = host.trim_end_matches('.');
        self.services.iter().find(|s| {
            let full = s.hostname("cluster.local");
            host == full
                || host == format!("{}.{}", s.name, s.namespace)
                || host == format!("{}.{}.svc", s.name, s.namespace)
                || host == s.name
        })
    }

    /// Resolves an outbound destination address (service VIP or workload IP).
    /// Services pick an endpoint by the `pick` index (for spreading load).
    pub fn resolve(&self, dst: SocketAddr, pick: usize) -> Result<Destination<'_>, ResolveError> {
        if let Some((position, service)) = self.service_by_vip(dst.ip()) {
            return self.resolve_service(position, service, dst.port(), pick);
        }
        match self.workload_by_ip(dst.ip()) {
            Some(workload) => Ok(Destination::Workload {
                workload,
                addr: dst,
                service: None,
            }),
            None => Ok(Destination::External(dst)),
        }
    }

    /// An endpoint of the service at `position` for `port`, picked by `pick`.
    fn resolve_service<'a>(
        &'a self,
        position: usize,
        service: &'a Arc<Service>,
        port: u16,
        pick: usize,
    ) -> Result<Destination<'a>, ResolveError> {
        let name = || format!("{}/{}", service.namespace, service.name);
        let target_port = *service
            .ports
            .get(&port)
            .ok_or_else(|| ResolveError::NoPort {
                service: name(),
                port,
            })?;
        let endpoints = self
            .index
            .endpoints
            .get(position)
            .map_or(&[][..], Vec::as_slice);
        if endpoints.is_empty() {
            return Err(ResolveError::NoEndpoints { service: name() });
        }
        let workload = &self.workloads[endpoints[pick % endpoints.len()] as usize];
        // 0: the target is named; the endpoint's record has its number.
        let target_port = match target_port {
            0 => workload
                .service_target_port(&service.key(&self.trust_domain), port)
                .filter(|&t| t != 0)
                .unwrap_or(port),
            n => n,
        };
        Ok(Destination::Workload {
            workload,
            addr: SocketAddr::new(workload.ips[0], target_port),
            service: Some(service),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "
nodes: [{name: n1}, {name: n2}]
workloads:
  - {name: gw, namespace: demo, serviceAccount: hello-gateway-istio, ips: [127.0.2.1], node: n1}
  - {name: app, namespace: demo, serviceAccount: hello-app, labels: {app: hello-app}, ips: [127.0.2.2], node: n2}
services:
  - {name: hello-app, namespace: demo, vips: [127.0.3.2], ports: {80: 8000}, selector: {app: hello-app}}
";

    /// istiod's way with a named target port: 0 on the Service, the number
    /// in each endpoint's record; without a record, the service port.
    #[test]
    fn a_named_target_port_is_taken_from_the_endpoint() {
        let yaml = YAML.replace("ports: {80: 8000}", "ports: {80: 8000, 81: 0}");
        let mut file: RegistryFile = serde_yaml::from_str(&yaml).unwrap();
        let addr = |r: &Registry| match r.resolve("127.0.3.2:81".parse().unwrap(), 0) {
            Ok(Destination::Workload { addr, .. }) => addr,
            other => panic!("{other:?}"),
        };
        let plain = Registry::from_file(file.clone()).unwrap();
        assert_eq!(addr(&plain), "127.0.2.2:81".parse().unwrap());
        file.workloads[1].listed = Some(Box::new(Listed {
            service_ports: BTreeMap::from([(
                "demo/hello-app.demo.svc.cluster.local".to_string(),
                BTreeMap::from([(81, 9090)]),
            )]),
            ..Listed::default()
        }));
        let named = Registry::from_file(file).unwrap();
        assert_eq!(addr(&named), "127.0.2.2:9090".parse().unwrap());
    }

    #[test]
    fn resolves_vips_workloads_and_externals() {
        let r = Registry::parse(YAML, "r.yaml").unwrap();
        match r.resolve("127.0.3.2:80".parse().unwrap(), 0).unwrap() {
            Destination::Workload {
                workload,
                addr,
                service,
            } => {
                assert_eq!(&*workload.name, "app");
                assert_eq!(addr, "127.0.2.2:8000".parse().unwrap());
                assert_eq!(service.unwrap().name, "hello-app");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.resolve("127.0.2.1:9".parse().unwrap(), 0),
            Ok(Destination::Workload { .. })
        ));
        assert!(matches!(
            r.resolve("8.8.8.8:53".parse().unwrap(), 0),
            Ok(Destination::External(_))
        ));
        assert!(
            r.resolve("127.0.3.2:81".parse().unwrap(), 0)
                .unwrap_err()
                .to_string()
                .contains("no port 81")
        );
        assert_eq!(r.local_workloads("n2").count(), 1);
        assert_eq!(
            r.workload_by_ip("127.0.2.2".parse().unwrap())
                .unwrap()
                .identity()
                .to_string(),
            "spiffe://cluster.local/ns/demo/sa/hello-app"
        );
        assert!(
            r.service_by_host("hello-app.demo.svc.cluster.local")
                .is_some()
        );
    }

    #[test]
    fn the_index_finds_what_a_scan_would() {
        let r = Registry::parse(
            "
nodes: [{name: n1}]
workloads:
  - {name: a1, namespace: demo, serviceAccount: app, labels: {app: a, tier: web}, ips: [10.0.0.1], node: n1}
  - {name: a2, namespace: demo, serviceAccount: app, labels: {app: a, tier: db}, ips: [10.0.0.2], node: n1}
  - {name: a3, namespace: other, serviceAccount: app, labels: {app: a, tier: web}, ips: [10.0.0.3], node: n1}
services:
  - {name: web, namespace: demo, vips: [10.1.0.1], ports: {80: 8080}, selector: {app: a, tier: web}}
  - {name: all, namespace: demo, vips: [10.1.0.2], ports: {80: 8080}, selector: {}}
  - {name: none, namespace: demo, vips: [10.1.0.3], ports: {80: 8080}, selector: {app: b}}
",
            "r.yaml",
        )
        .unwrap();
        let endpoint = |vip: &str, pick| match r.resolve(format!("{vip}:80").parse().unwrap(), pick)
        {
            Ok(Destination::Workload { workload, .. }) => Ok(workload.name.to_string()),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        // Both labels must match, and only in the service's namespace.
        assert_eq!(endpoint("10.1.0.1", 0).unwrap(), "a1");
        assert_eq!(endpoint("10.1.0.1", 1).unwrap(), "a1");
        // An empty selector takes the namespace's workloads, in order.
        assert_eq!(endpoint("10.1.0.2", 0).unwrap(), "a1");
        assert_eq!(endpoint("10.1.0.2", 1).unwrap(), "a2");
        assert_eq!(
            endpoint("10.1.0.3", 0),
            Err(ResolveError::NoEndpoints {
                service: "demo/none".into()
            })
        );
        // A VIP is not a workload; the first workload of an identity answers for it.
        assert!(r.workload_by_ip("10.1.0.1".parse().unwrap()).is_none());
        let app = r.workloads[1].identity().clone();
        assert_eq!(&*r.workload_by_identity(&app).unwrap().name, "a1");
    }

    /// Equal label maps and identities are kept once, and a service's
    /// selector joins the workloads' label sets; unequal ones stay apart.
    #[test]
    fn equal_labels_identities_and_names_are_kept_once() {
        let r = Registry::parse(
            "
nodes: [{name: n1}]
workloads:
  - {name: a1, namespace: demo, serviceAccount: app, labels: {app: a}, ips: [10.0.0.1], node: n1}
  - {name: a2, namespace: demo, serviceAccount: app, labels: {app: a}, ips: [10.0.0.2], node: n1}
  - {name: b1, namespace: demo, serviceAccount: b, labels: {app: b}, ips: [10.0.0.3], node: n1}
services:
  - {name: a, namespace: demo, vips: [10.1.0.1], ports: {80: 8080}, selector: {app: a}}
",
            "r.yaml",
        )
        .unwrap();
        let [a1, a2, b1] = [0, 1, 2].map(|i| &r.workloads[i]);
        assert!(Arc::ptr_eq(&a1.labels, &a2.labels));
        assert!(!Arc::ptr_eq(&a1.labels, &b1.labels));
        let selector = r.services[0].selector.as_ref().unwrap();
        assert!(Arc::ptr_eq(selector, &a1.labels));
        let [ia1, ia2, ib1] = [a1, a2, b1].map(|w| w.identity.as_ref().unwrap());
        assert!(Arc::ptr_eq(ia1, ia2));
        assert!(!Arc::ptr_eq(ia1, ib1));
        assert_eq!(ib1.to_string(), "spiffe://cluster.local/ns/demo/sa/b");
        // Names many pods share are kept once too, whichever field they are in.
        assert!(Arc::ptr_eq(&a1.namespace, &b1.namespace));
        assert!(Arc::ptr_eq(&a1.node, &b1.node));
        assert!(Arc::ptr_eq(&a1.service_account, &a2.service_account));
        assert!(!Arc::ptr_eq(&a1.service_account, &b1.service_account));
        assert!(a1.listed.is_none() && a1.services().is_empty());
    }

    /// The names read during a parse are kept only while it runs, whether
    /// it succeeds or not: the next parse (or a name read outside one)
    /// starts afresh.
    #[test]
    fn names_read_are_forgotten_when_a_parse_ends() {
        assert!(Registry::parse("workloads: [{name: a, namespace: 7", "bad.yaml").is_err());
        assert!(NAMES_READ.with_borrow(Option::is_none));
        let r = Registry::parse(YAML, "r.yaml").unwrap();
        assert!(NAMES_READ.with_borrow(Option::is_none));
        assert!(Arc::ptr_eq(
            &r.workloads[0].namespace,
            &r.workloads[1].namespace
        ));
    }

    /// A registry holds one `Arc<Workload>` per pod, a hundred thousand in a
    /// large cluster: with its two reference counts the record fills
    /// jemalloc's 160-byte size class, and a field added must not push it
    /// into the next (192; `registry_heap` counts the rest).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_workload_record_stays_in_the_160_byte_size_class() {
        assert!(
            std::mem::size_of::<Workload>() + 16 <= 160,
            "{} bytes",
            std::mem::size_of::<Workload>()
        );
    }

    /// `registry: /dev/zero` is refused at once, not read until memory
    /// runs out.
    #[test]
    fn a_registry_that_is_no_regular_file_is_refused() {
        let err = Registry::load(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let err = Registry::parse(
            "workloads:\n  - {name: a, namespace: d, serviceAcount: x}\n",
            "r.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("r.yaml: field `workloads[0]") && err.contains("serviceAcount"),
            "{err}"
        );
        let err = Registry::parse(
            "nodes: [{name: n1}]\nworkloads:\n  - {name: a, namespace: d, serviceAccount: x, ips: [127.0.0.1], node: n9}\n",
            "r.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("workloads[0].node") && err.contains("n9"),
            "{err}"
        );
    }
}

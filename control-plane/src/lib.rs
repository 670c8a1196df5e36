//! The real Istio control plane on one Linux machine, no containers: etcd,
//! kube-apiserver and istiod — built from their Go modules, never shipped
//! here — started side by side on 127.0.0.1, with the lab's world as
//! Kubernetes objects and pod-bound tokens for the node proxies.
//!
//! Why: everything hbone-lab says about istiod (its translation, its CA's
//! impersonation rules, its xDS) was read in istiod's sources; with the
//! real programs running, the lab's node proxies — hbone-lab's and a real
//! ztunnel — are fed by istiod itself, and the claims become checks.
//!
//! | module | what it holds |
//! |---|---|
//! | [`peers`] | finding the programs (flags, environment, what `scripts/control-plane-peers.sh` built) and the pinned versions |
//! | [`pki`] | the Kubernetes side's keys: cluster CA, serving and admin certificates, service-account signing key |
//! | [`process`] | a program as a supervised child: its log, readiness, stopped with the lab |
//! | [`cluster`] | starting and stopping etcd, kube-apiserver, the CRDs and istiod |
//! | [`world`] | the lab's nodes, pods and Services as API objects (pods made Running by hand: no kubelet) |
//! | [`tokens`] | the node proxies' pod-bound tokens (TokenRequest), kept fresh |

// Unsafe code is denied but in one place, which says why it is sound:
// process.rs, where a child asks to die with its parent between fork and exec.
#![deny(unsafe_code)]

pub mod cluster;
pub mod peers;
pub mod pki;
pub mod process;
pub mod tokens;
pub mod world;

pub use cluster::{ControlPlane, ControlPlaneError, ControlPlaneOptions, IstiodPorts};
pub use peers::{Given, Peer, PeerError, Programs};

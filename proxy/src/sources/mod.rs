//! Where the proxy's registry and policies come from, each swapped into
//! [`crate::state`] whole: files polled for changes ([`registry_file`],
//! [`policy_file`], both on [`file_watch`]), a Kubernetes cluster's API
//! ([`kube`]), or a control plane over delta xDS as ztunnel follows istiod
//! ([`xds`]); and in shared mode, the node agent that hands pods over ZDS
//! ([`zds`]).

pub mod file_watch;
pub mod kube;
pub mod policy_file;
pub mod registry_file;
pub mod xds;
pub mod zds;

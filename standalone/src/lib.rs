//! hbone-standalone: the whole lab on one Linux machine, without Kubernetes,
//! and what is built on it.
//!
//! - [`lab`]: the lab itself — its topology, netns plumbing, the SNI relay,
//!   the data planes and the control planes it can run on, and the running
//!   [`lab::Lab`].
//! - [`scenarios`]: the lab's connections, predicted by the policies and then tried for real.
//! - [`explain`]: one connection's story with the real values of the run.
//! - [`policy_diff`]: the same policies and connections through ztunnel and hbone-lab, compared.
//! - [`wire`]: a captured HBONE hop, decrypted and decoded with tshark.
//!
//! The benchmarks reuse the lab's topology and data planes.

#![forbid(unsafe_code)]

pub mod explain;
pub mod lab;
pub mod policy_diff;
pub mod scenarios;
pub mod wire;

//! hbone-workloads: the applications that live in the lab's pods.
//!
//! - [`dial`]: how a workload connects — directly (captured) or via SOCKS5.
//! - [`db`], [`external`], [`hello`]: hello-app on PostgreSQL with its outside checks.
//! - [`gateway`]: the standalone stand-in for the Istio gateway.
//! - [`worker`]: worker-app, the second database client.
//! - [`public_api`]: TLS stand-ins for api.github.com and api.cloudflare.com.
//! - [`http_get`]: the one HTTP GET every tool, story and test sends.
//! - [`probe`]: "does the application answer?" — how a client in a captured pod tells allowed from refused.
//! - [`peers`]: echo, sink, source and request/response load for the benchmarks.
//! - [`open_loop`]: request/response load at a fixed arrival rate, timed from each request's due time (wrk2's way).

#![forbid(unsafe_code)]

pub mod db;
pub mod dial;
pub mod external;
pub mod gateway;
pub mod hello;
pub mod http_get;
pub mod open_loop;
pub mod peers;
pub mod pgserver;
pub mod probe;
pub mod public_api;
pub mod worker;

//! hbone-bench: direct vs hbone-lab vs ztunnel on the same two-pod path.
//! (The soak, which runs faults under load on this path, is a crate of its
//! own: `hbone-soak`.)
//!
//! - [`topology`]: two pod namespaces joined by a veth, capture rules in the client pod.
//! - [`subjects`]: starting and stopping each subject (and the cost ladder's
//!   rungs below HBONE); one CA and one control plane for both meshes.
//! - [`instructions`]: instructions per request, per connection and per MiB, counted by callgrind.
//! - [`runner`]: scenarios, interleaved repetitions, medians and ratios
//!   (the measurements themselves are [`figures`]).
//! - [`scaling`]: throughput and connections/s over 1–8 parallel streams or loops, as curves.
//! - [`sweep`]: open-loop load stepped past the slowest proxy's maximum — latency against rate, and each subject's knee.
//! - [`fortio`]: the request/response scenario driven again by fortio, an independent
//!   load generator, in the same run — do the two agree on the direct path?
//! - [`proc_stats`]: CPU seconds, resident memory and context switches from /proc.
//! - [`scale`]: how the cost grows — workloads known, policies in scope, open connections.
//! - [`targets`]: issue 28's targets judged from a run's repetitions — ratio, spread, met or not.
//! - [`report`]: table and Markdown (JSON comes from serde).
//! - [`chart`]: the same results as an SVG chart.
//!
//! Criterion micro-benchmarks of the hot pieces live in `benches/benches/`.

#![forbid(unsafe_code)]

pub mod chart;
pub mod figures;
pub mod fortio;
pub mod instructions;
pub mod proc_stats;
pub mod report;
pub mod runner;
pub mod scale;
pub mod scaling;
pub mod subjects;
pub mod sweep;
pub mod targets;
pub mod topology;

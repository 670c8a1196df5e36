//! Heap bytes per known workload, counted by the allocator
//! (`cargo bench -p hbone-bench --bench registry_heap`).
//!
//! `hbone-lab bench --scale` reads the same figure from a proxy's resident
//! memory, which also carries whatever the YAML parser freed until jemalloc
//! gives it back, and drifts with the machine. This counts it exactly: the
//! registry `scale_workloads` writes is parsed under an allocator that adds
//! jemalloc's usable size of every live allocation (so size classes count
//! as they cost), and the bytes the parsed registry keeps, over those of
//! an empty one, are divided by the workloads it knows. Same input, same
//! number, on any machine: a change to the registry's types shows here to
//! the byte.
//!
//! Prints a line per size and writes `registry-heap.json` beside the other
//! benchmarks' output (Cargo's `target/tmp`).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use hbone_bench::scale::workloads::scale_registry;
use hbone_proxy::registry::Registry;
use tikv_jemallocator::Jemalloc;

/// jemalloc, as the proxy runs with, keeping count of the usable bytes live.
struct Counted;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to jemalloc as it came; the count only reads
// the usable size of pointers jemalloc has just returned or is about to free.
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is jemalloc's.
        let p = unsafe { Jemalloc.alloc(layout) };
        if !p.is_null() {
            // SAFETY: `p` is a live jemalloc allocation.
            LIVE.fetch_add(
                unsafe { tikv_jemallocator::usable_size(p) },
                Ordering::Relaxed,
            );
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { Jemalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            // SAFETY: `p` is a live jemalloc allocation.
            LIVE.fetch_add(
                unsafe { tikv_jemallocator::usable_size(p) },
                Ordering::Relaxed,
            );
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is live until the next line frees it.
        LIVE.fetch_sub(
            unsafe { tikv_jemallocator::usable_size(ptr) },
            Ordering::Relaxed,
        );
        // SAFETY: the caller's contract is jemalloc's.
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is live here.
        let old = unsafe { tikv_jemallocator::usable_size(ptr) };
        // SAFETY: the caller's contract is jemalloc's.
        let p = unsafe { Jemalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(old, Ordering::Relaxed);
            // SAFETY: `p` is a live jemalloc allocation.
            LIVE.fetch_add(
                unsafe { tikv_jemallocator::usable_size(p) },
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counted = Counted;

/// The bench's own two workloads, as `bench --scale` starts from.
const BASE: &str = "nodes: [{name: node-c}, {name: node-s}]\nworkloads:\n  - {name: client, namespace: bench, serviceAccount: client, labels: {app: client}, ips: [10.0.0.1], node: node-c}\n  - {name: server, namespace: bench, serviceAccount: server, labels: {app: server}, ips: [10.0.0.2], node: node-s}\n";

/// The heap a parsed registry of `n` scale workloads keeps, and how long
/// parsing and indexing it took.
fn kept(n: usize) -> (usize, f64) {
    let text = scale_registry(BASE, n);
    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let registry = Registry::parse(&text, "scale registry").expect("the scale registry is valid");
    let seconds = started.elapsed().as_secs_f64();
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(registry.workloads.len(), n + 2);
    drop(registry);
    (after.saturating_sub(before), seconds)
}

fn main() {
    // Criterion's flags (`--bench`) are passed to every bench target; this
    // one takes none and ignores them.
    let (empty, _) = kept(0);
    println!("registry heap, an empty scale registry: {empty} B");
    let mut rows = Vec::new();
    for n in [1_000, 10_000, 100_000] {
        let (bytes, seconds) = kept(n);
        let per = (bytes - empty) as f64 / n as f64;
        println!(
            "registry heap, {n:>7} workloads: {bytes:>11} B, {per:>6.0} B per workload (parsed and indexed in {seconds:.2} s)"
        );
        rows.push(serde_json::json!({
            "workloads": n,
            "heap_bytes": bytes,
            "bytes_per_workload": per.round(),
            "parse_seconds": seconds,
        }));
    }
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("registry-heap.json");
    let json = serde_json::json!({ "empty_registry_bytes": empty, "sizes": rows });
    match std::fs::write(&out, serde_json::to_string_pretty(&json).expect("JSON")) {
        Ok(()) => println!("wrote {}", out.display()),
        Err(e) => eprintln!("cannot write {}: {e}", out.display()),
    }
}

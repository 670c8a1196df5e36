//! Memory per known workload, counted by the allocator
//! (`cargo bench -p hbone-bench --bench registry_heap`).
//!
//! `hbone-lab bench --scale` reads the figure from a proxy's resident
//! memory, against ztunnel's, with the noise of a whole process. This
//! parses the registry `scale_workloads` writes in-process and gives two
//! figures per workload, each the growth over an empty registry:
//!
//! - **heap**: what the registry keeps, exactly — an allocator that adds
//!   jemalloc's usable size of every live allocation (size classes count
//!   as they cost). Same input, same number, on any machine: a change to
//!   the registry's types shows here to the byte.
//! - **resident**: the pages that stay resident once jemalloc has been told
//!   to give back every freed page — what a proxy's RSS settles at. Above
//!   the heap by the partly used pages: values kept among the parser's
//!   freed allocations hold their pages (this is how one label map kept in
//!   ten once cost 580 bytes a workload, see `Registry::from_file`).
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

/// Counts `p`, just returned by jemalloc, if it is an allocation.
///
/// # Safety
/// `p` is null or a live allocation of jemalloc's.
unsafe fn counted(p: *mut u8) -> *mut u8 {
    if !p.is_null() {
        // SAFETY: the caller's promise.
        LIVE.fetch_add(
            unsafe { tikv_jemallocator::usable_size(p) },
            Ordering::Relaxed,
        );
    }
    p
}

// SAFETY: every call is passed to jemalloc as it came; the count only reads
// the usable size of pointers jemalloc has just returned or is about to free.
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is jemalloc's; what it returns is
        // null or its allocation.
        unsafe { counted(Jemalloc.alloc(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { counted(Jemalloc.alloc_zeroed(layout)) }
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
        }
        // SAFETY: null or jemalloc's allocation.
        unsafe { counted(p) }
    }
}

#[global_allocator]
static ALLOCATOR: Counted = Counted;

/// The bench's own two workloads, as `bench --scale` starts from.
const BASE: &str = "nodes: [{name: node-c}, {name: node-s}]\nworkloads:\n  - {name: client, namespace: bench, serviceAccount: client, labels: {app: client}, ips: [10.0.0.1], node: node-c}\n  - {name: server, namespace: bench, serviceAccount: server, labels: {app: server}, ips: [10.0.0.2], node: node-s}\n";

/// This process's resident bytes, after jemalloc has returned every page
/// it holds free.
fn resident_after_purge() -> usize {
    // `arena.<MALLCTL_ARENAS_ALL>.purge`: every arena, nothing read or written.
    let name = c"arena.4096.purge";
    // SAFETY: a NUL-terminated name; the call takes and returns no value.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    assert_eq!(rc, 0, "jemalloc refused arena.all.purge");
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field is resident pages");
    pages * 4096
}

/// What a parsed registry of `n` scale workloads keeps (heap and resident
/// bytes), and how long parsing and indexing it took.
fn kept(n: usize) -> (usize, isize, f64) {
    let text = scale_registry(BASE, n);
    let resident = resident_after_purge();
    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let registry = Registry::parse(&text, "scale registry").expect("the scale registry is valid");
    let seconds = started.elapsed().as_secs_f64();
    let after = LIVE.load(Ordering::Relaxed);
    let grown = resident_after_purge() as isize - resident as isize;
    assert_eq!(registry.workloads.len(), n + 2);
    drop(registry);
    (after.saturating_sub(before), grown, seconds)
}

fn main() {
    // Criterion's flags (`--bench`) are passed to every bench target; this
    // one takes none and ignores them.
    let (heap0, resident0, _) = kept(0);
    println!("registry, empty scale registry: heap {heap0} B, resident {resident0} B");
    let mut rows = Vec::new();
    for n in [1_000, 10_000, 100_000] {
        let (heap, resident, seconds) = kept(n);
        let heap_per = (heap - heap0) as f64 / n as f64;
        let resident_per = (resident - resident0) as f64 / n as f64;
        println!(
            "registry, {n:>7} workloads: heap {heap_per:>5.0} B, resident {resident_per:>5.0} B per workload (parsed and indexed in {seconds:.2} s)"
        );
        rows.push(serde_json::json!({
            "workloads": n,
            "heap_bytes": heap,
            "heap_bytes_per_workload": heap_per.round(),
            "resident_bytes_per_workload": resident_per.round(),
            "parse_seconds": seconds,
        }));
    }
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("registry-heap.json");
    let json = serde_json::json!({ "empty_registry_heap_bytes": heap0, "sizes": rows });
    match std::fs::write(&out, serde_json::to_string_pretty(&json).expect("JSON")) {
        Ok(()) => println!("wrote {}", out.display()),
        Err(e) => eprintln!("cannot write {}: {e}", out.display()),
    }
}

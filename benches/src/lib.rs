//! hbone-bench: direct vs hbone-lab vs ztunnel benchmarks. Lands with issue 8.

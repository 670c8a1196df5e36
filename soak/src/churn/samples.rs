//! What a proxy holds, second by second: resident memory, descriptors, OS
//! threads and (where the proxy says) async tasks, for all of a subject's
//! processes together; and the straight line through them after warm-up,
//! whose slope says whether anything accumulates.
//!
//! A leak under churn does not show as a high peak: it shows as a slope
//! that stays positive however long the run, and as descriptors that do
//! not come back to their idle count once the load stops. Both are read
//! from /proc, the same way for hbone-lab and ztunnel.

use std::net::SocketAddr;

use hbone_bench::proc_stats::rss_bytes;
use hbone_harness::ztunnel::http_get;
use serde::Serialize;

/// One second's reading of a subject's processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the subject started.
    pub t: f64,
    /// Resident memory, bytes.
    pub rss: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// OS threads.
    pub threads: u64,
    /// Async tasks alive, where the proxy exports them
    /// (`hbone_runtime_tasks_alive`); ztunnel does not.
    pub tasks: Option<u64>,
}

/// Open descriptors of `pid`, from /proc (0 once it is gone).
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// OS threads of `pid`, from /proc/<pid>/status.
fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Threads:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The value of the gauge `name` in a Prometheus text page.
pub fn gauge(page: &str, name: &str) -> Option<u64> {
    page.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Reads `pids` now; `metrics` are the processes' metrics pages, asked
/// for their tasks alive (summed; `None` if there are none or one fails).
pub async fn read(t: f64, pids: &[u32], metrics: &[SocketAddr]) -> Sample {
    let mut tasks = (!metrics.is_empty()).then_some(0);
    for addr in metrics {
        let alive = match http_get(None, *addr, "/metrics").await {
            Ok((200, page)) => gauge(&page, "hbone_runtime_tasks_alive"),
            _ => None,
        };
        tasks = tasks.zip(alive).map(|(sum, n)| sum + n);
    }
    Sample {
        t,
        rss: rss_bytes(pids),
        fds: pids.iter().map(|p| open_fds(*p)).sum(),
        threads: pids.iter().map(|p| threads(*p)).sum(),
        tasks,
    }
}

/// The least-squares slope of `points` (x, y), in y per x; `None` for
/// fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Growth per hour of what `value` reads from each sample, fitted over
/// the samples taken at or after `from` seconds.
pub fn per_hour(
    samples: &[Sample],
    from: f64,
    value: impl Fn(&Sample) -> Option<f64>,
) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t >= from)
        .filter_map(|s| Some((s.t, value(s)?)))
        .collect();
    slope(&points).map(|per_second| per_second * 3600.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_is_the_least_squares_line_through_the_points() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        // Noise around a flat line fits flat.
        assert_eq!(
            slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 1.0), (3.0, 3.0)]),
            Some(0.4)
        );
        assert_eq!(slope(&[(0.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn growth_per_hour_counts_only_the_samples_after_warm_up() {
        let at = |t: f64, rss: u64| Sample {
            t,
            rss,
            ..Sample::default()
        };
        // A jump during warm-up, then 1 MiB every 3600 s: 1 MiB/hour.
        let mib = 1 << 20;
        let samples = [
            at(0.0, 0),
            at(10.0, 100 * mib),
            at(20.0, 100 * mib),
            at(3620.0, 101 * mib),
        ];
        let fitted = per_hour(&samples, 20.0, |s| Some(s.rss as f64 / mib as f64));
        assert!((fitted.unwrap() - 1.0).abs() < 1e-9, "{fitted:?}");
        // A subject without tasks has no task slope.
        assert_eq!(per_hour(&samples, 0.0, |s| s.tasks.map(|n| n as f64)), None);
    }

    #[test]
    fn a_gauge_is_read_by_its_exact_name() {
        let page = "# TYPE hbone_runtime_tasks_alive gauge\nhbone_runtime_tasks_alive 42\nhbone_runtime_tasks_alive_max 7\n";
        assert_eq!(gauge(page, "hbone_runtime_tasks_alive"), Some(42));
        assert_eq!(gauge(page, "tcp_sockets_open"), None);
    }

    #[test]
    fn this_process_has_descriptors_and_threads() {
        let me = std::process::id();
        assert!(open_fds(me) >= 3);
        assert!(threads(me) >= 1);
        assert_eq!(open_fds(u32::MAX), 0);
    }
}

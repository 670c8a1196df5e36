//! What the kernel says a process used: CPU seconds, resident memory and
//! context switches, read from /proc. Every figure of the benchmark that is
//! not a timing (CPU per request, memory per connection) comes from here,
//! for the proxies and the load generator alike. CPU is kept as user and
//! system time apart ([`CpuTimes`]): a proxy spending its time in the
//! kernel needs other changes than one spending it in its own code.

/// CPU time a set of processes used, split as the kernel accounts it:
/// user (the process's own code: TLS, HTTP/2, policy) and system (the
/// kernel on its behalf: sockets, copies, wake-ups). The split says where
/// a proxy's cost is, which a total hides.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    /// Seconds in user mode.
    pub user: f64,
    /// Seconds in the kernel.
    pub system: f64,
}

impl CpuTimes {
    /// User and system together.
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// What was used between `earlier` and `self`.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// utime and stime, in seconds, from one /proc/<pid>/stat line. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted from its last closing parenthesis.
fn stat_times(stat: &str) -> Option<CpuTimes> {
    let ticks = 100.0; // USER_HZ on Linux
    let after = stat.rsplit_once(") ")?.1;
    let mut fields = after.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some(CpuTimes {
        user: utime / ticks,
        system: stime / ticks,
    })
}

/// CPU time used so far by `pids` (every thread of each), from /proc;
/// a process that is gone counts nothing.
pub fn cpu_times(pids: &[u32]) -> CpuTimes {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| stat_times(&stat))
        .fold(CpuTimes::default(), |sum, t| CpuTimes {
            user: sum.user + t.user,
            system: sum.system + t.system,
        })
}

/// CPU seconds (user + system) used so far by `pids`, from /proc.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    cpu_times(pids).total()
}

/// Resident memory (bytes) of `pids`, from /proc.
pub fn rss_bytes(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum::<u64>()
        * 1024
}

/// Context switches (voluntary and not) of every thread of `pids` so far, from /proc.
pub fn context_switches(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.filter_map(Result::ok) {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            total += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_time_are_read_past_an_odd_command_name() {
        // pid, comm (with a space and a parenthesis), then fields 3…; utime
        // and stime are fields 14 and 15.
        let stat = "4242 (a) b) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(
            stat_times(stat),
            Some(CpuTimes {
                user: 2.5,
                system: 0.75
            })
        );
        assert_eq!(stat_times("4242 (truncated"), None);
    }

    #[test]
    fn this_process_has_used_some_time_and_a_gone_one_none() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(spin.elapsed());
        }
        let own = cpu_times(&[std::process::id()]);
        assert!(
            own.total() > 0.0 && own.user >= 0.0 && own.system >= 0.0,
            "{own:?}"
        );
        assert_eq!(cpu_times(&[u32::MAX]), CpuTimes::default());
        let later = CpuTimes {
            user: 3.0,
            system: 1.5,
        };
        assert_eq!(
            later.since(CpuTimes {
                user: 1.0,
                system: 1.0
            }),
            CpuTimes {
                user: 2.0,
                system: 0.5
            }
        );
    }
}

//! Process figures from /proc: resident memory (VmRSS) and CPU time (utime + stime), for the
//! broker under test (`--broker-pid`) and for this tool itself.

use std::sync::OnceLock;

/// Which process to sample.
#[derive(Clone, Copy, Debug)]
pub enum Pid {
    This,
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::This => "/proc/self".to_string(),
            Pid::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// VmRSS in KiB, or None when the process is gone.
pub fn rss_kib(pid: Pid) -> Option<u64> {
    let status = std::fs::read_to_string(format!("{}/status", pid.dir())).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds used so far (all threads), or None when the process is gone.
pub fn cpu_secs(pid: Pid) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("{}/stat", pid.dir())).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as f64
        } else {
            100.0
        }
    })
}

/// Busy CPU seconds of the whole machine so far (all cores: user, nice, system, irq, softirq,
/// steal from the first line of /proc/stat).
pub fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    Some(busy as f64 / clock_ticks())
}

/// The 1-minute load average, to tell a quiet machine from a busy one.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time of the broker, of this tool and of the whole machine, at the start of a phase.
#[derive(Clone, Copy, Debug)]
pub struct CpuMark {
    broker: Option<f64>,
    tool: Option<f64>,
    machine: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CpuUsed {
    /// Broker CPU seconds in the window (None without --broker-pid).
    pub broker_s: Option<f64>,
    pub tool_s: Option<f64>,
    /// CPU seconds of every other process on the machine in the window: anything well above
    /// zero means something else competed for the two cores and the figures are noisy.
    pub others_s: Option<f64>,
}

/// Processes whose CPU counts with the broker's (`--cpu-pid`): set once at start.
static EXTRA_CPU_PIDS: OnceLock<Vec<u32>> = OnceLock::new();

pub fn set_extra_cpu_pids(pids: Vec<u32>) {
    let _ = EXTRA_CPU_PIDS.set(pids);
}

/// The broker's CPU seconds plus those of the `--cpu-pid` processes.
fn broker_cpu_secs(broker: u32) -> Option<f64> {
    let extra = EXTRA_CPU_PIDS.get().map_or(&[][..], Vec::as_slice);
    extra
        .iter()
        .try_fold(cpu_secs(Pid::Other(broker))?, |sum, &pid| {
            Some(sum + cpu_secs(Pid::Other(pid))?)
        })
}

impl CpuMark {
    pub fn now(broker: Option<u32>) -> CpuMark {
        CpuMark {
            broker: broker.and_then(broker_cpu_secs),
            tool: cpu_secs(Pid::This),
            machine: machine_busy_secs(),
        }
    }

    pub fn since(&self, broker: Option<u32>) -> CpuUsed {
        let now = CpuMark::now(broker);
        let broker_s = diff(self.broker, now.broker);
        let tool_s = diff(self.tool, now.tool);
        let others_s = diff(self.machine, now.machine)
            .map(|m| (m - broker_s.unwrap_or(0.0) - tool_s.unwrap_or(0.0)).max(0.0));
        CpuUsed {
            broker_s,
            tool_s,
            others_s,
        }
    }
}

fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(b? - a?)
}

/// Raise the soft open-files limit to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    let soft = lim.rlim_cur as u64;
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_figures() {
        assert!(rss_kib(Pid::This).unwrap() > 0);
        assert!(cpu_secs(Pid::This).unwrap() >= 0.0);
        assert!(rss_kib(Pid::Other(u32::MAX)).is_none());
        assert!(machine_busy_secs().unwrap() > 0.0);
        assert!(load_average().is_some());
    }
}

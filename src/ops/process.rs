//! Figures about this process from /proc/self: resident memory, open file descriptors, CPU time.
//! Read at scrape time only; each returns None where /proc is not there (non-Linux).

/// Clock ticks per second in /proc's CPU fields: USER_HZ, which the Linux ABI fixes at 100 for
/// every architecture a broker runs on (sysconf(_SC_CLK_TCK) reports the same constant).
const USER_HZ: f64 = 100.0;

/// Resident set size in bytes (VmRSS).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// User + system CPU seconds of all threads so far.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: fields are counted after the last ')'.
    let mut rest = stat[stat.rfind(')')? + 1..].split_ascii_whitespace();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Open file descriptors. Since Linux 6.2 the size `stat` reports for /proc/self/fd is the
/// count, at the cost of one syscall; older kernels report 0 there, and then the entries are
/// counted (one per socket: about 10 ms of CPU with 19,000 sessions, measured with
/// `crbroker-bench run --scrape`, hence the fast path).
pub fn open_fds() -> Option<u64> {
    match std::fs::metadata("/proc/self/fd").ok()?.len() {
        0 => {
            let dir = std::fs::read_dir("/proc/self/fd").ok()?;
            // The iterator's own descriptor is among the entries; do not count it.
            Some((dir.count() as u64).saturating_sub(1))
        }
        count => Some(count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_figures() {
        assert!(resident_bytes().unwrap() > 0);
        assert!(cpu_seconds().unwrap() >= 0.0);
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        // At least the file just opened (other test threads may hold more), and no more than
        // the entries of /proc/self/fd (which include read_dir's own descriptor).
        let fds = open_fds().unwrap();
        let entries = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        assert!(fds >= 1 && fds <= entries, "{fds} of {entries}");
        drop(file);
    }
}

//! The server's own cost, read from `/proc/<pid>`: CPU time (utime + stime of all its threads, from `stat`, in clock
//! ticks of 1/`CLK_TCK` s, usually 10 ms) and resident memory (`statm`).

use std::io;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// utime + stime, microseconds.
    pub cpu_us: u64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Parses utime + stime (clock ticks) from the text of `/proc/<pid>/stat`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')' are unambiguous.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Reads process `pid`.
pub fn sample(pid: u32) -> io::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc/PID/stat"))?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let rss_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc/PID/statm"))?;
    // SAFETY: sysconf only reads a configuration value.
    let (tck, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let tck = if tck > 0 { tck as u64 } else { 100 };
    let page = if page > 0 { page as u64 } else { 4096 };
    Ok(Sample {
        cpu_us: ticks * 1_000_000 / tck,
        rss_bytes: rss_pages * page,
    })
}

/// This process's own CPU time (user + system), microseconds.
pub fn self_cpu_us() -> u64 {
    sample(std::process::id()).map(|s| s.cpu_us).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_tricky_command_name() {
        let stat = "4242 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 123 45 0 0 20 0 1 0 100 2000 300";
        assert_eq!(parse_stat_ticks(stat), Some(168));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
    }
}

//! Independent readings of /proc, for the tests and fixtures that check leaktrace against what
//! the kernel says at the same moment (plain text parsing, none of leaktrace's code).

use std::collections::BTreeMap;

/// The parent of `pid`, from /proc/PID/stat.
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may hold spaces: the fields after it start past the last ')'.
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every live descendant of `root`, from /proc (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    let all: Vec<(u32, Option<u32>)> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .map(|pid| (pid, ppid(pid)))
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        let children: Vec<u32> = all
            .iter()
            .filter(|(p, pp)| *pp == Some(parent) && !found.contains(p))
            .map(|(p, _)| *p)
            .collect();
        found.extend(children);
        i += 1;
    }
    found.remove(0);
    found
}

/// The processes a `leaktrace run` traces: its live descendants, but its own watchdog.
pub fn traced_by(leaktrace: u32) -> Vec<u32> {
    descendants(leaktrace)
        .into_iter()
        .filter(|pid| !is_watchdog(*pid))
        .collect()
}

/// Whether `pid` is leaktrace's watchdog (`leaktrace __watchdog`).
pub fn is_watchdog(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == b"__watchdog"))
}

/// The fields of /proc/PID/smaps_rollup (`Pss`, `Pss_Anon`, ...), in bytes; None if the
/// process is gone.
pub fn rollup(pid: u32) -> Option<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let (field, rest) = line.split_once(':')?;
                let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
                Some((field.to_string(), kib * 1024))
            })
            .collect(),
    )
}

/// The PSS that `root` and its descendants own: Pss_Anon + Pss_Shmem, summed.
pub fn tree_owned_pss(root: u32) -> u64 {
    std::iter::once(root)
        .chain(descendants(root))
        .filter_map(rollup)
        .map(|fields| fields["Pss_Anon"] + fields["Pss_Shmem"])
        .sum()
}

//! /proc sampling: what each process holds now, from `smaps_rollup` (PSS: shared pages divided
//! among the processes that share them, so sums over a tree are honest) and `status` (the
//! kernel's resident counters). A process vanishing mid-read is normal and yields nothing.

use serde::{Deserialize, Serialize};

/// One process's memory at one moment, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcSample {
    pub rss: u64,
    pub pss: u64,
    pub pss_anon: u64,
    pub pss_file: u64,
    pub pss_shmem: u64,
    pub swap: u64,
    /// From /proc/PID/status: RssAnon, RssFile, RssShmem, VmSwap.
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
    pub vm_swap: u64,
}

/// Reads `/proc/PID/smaps_rollup` and `/proc/PID/status`; None if the process is gone (or is a
/// zombie, which has no memory left to show).
pub fn sample(pid: u32) -> Option<ProcSample> {
    let process = procfs::process::Process::new(pid as i32).ok()?;
    let rollup = process.smaps_rollup().ok()?;
    let totals = &rollup.memory_map_rollup.0.first()?.extension.map;
    let field = |name: &str| totals.get(name).copied().unwrap_or(0);
    let status = process.status().ok()?;
    let kib = |value: Option<u64>| value.unwrap_or(0) * 1024;
    Some(ProcSample {
        rss: field("Rss"),
        pss: field("Pss"),
        pss_anon: field("Pss_Anon"),
        pss_file: field("Pss_File"),
        pss_shmem: field("Pss_Shmem"),
        swap: field("Swap"),
        rss_anon: kib(status.rssanon),
        rss_file: kib(status.rssfile),
        rss_shmem: kib(status.rssshmem),
        vm_swap: kib(status.vmswap),
    })
}

/// The command line, the executable's path and comm of a process, for its role.
pub struct Identity {
    pub cmdline: Vec<String>,
    pub exe: Option<String>,
    pub comm: String,
}

pub fn identity(pid: u32) -> Option<Identity> {
    let process = procfs::process::Process::new(pid as i32).ok()?;
    let comm = process.stat().ok()?.comm;
    let cmdline = process.cmdline().unwrap_or_default();
    let exe = process.exe().ok().map(|p| p.display().to_string());
    Some(Identity { cmdline, exe, comm })
}

/// The HOME of a process, from its environment (where Chromium keeps its default profile).
pub fn home_of(pid: u32) -> Option<std::path::PathBuf> {
    let environ = procfs::process::Process::new(pid as i32)
        .ok()?
        .environ()
        .ok()?;
    environ
        .get(std::ffi::OsStr::new("HOME"))
        .map(std::path::PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process_and_nothing_for_a_missing_one() {
        let own = sample(std::process::id()).expect("own sample");
        assert!(own.rss > 0 && own.pss > 0 && own.pss <= own.rss);
        assert!(own.rss_anon > 0);
        assert!(sample(u32::MAX / 2).is_none());
        let me = identity(std::process::id()).unwrap();
        assert!(!me.cmdline.is_empty());
    }
}

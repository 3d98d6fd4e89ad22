//! The trace document (schema `leaktrace/1`): what a session saw, as written with `-o` and read
//! back by `leaktrace report`, and the files it is written to. Its keys are a contract others
//! script against: add, never rename.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    io::Write,
    os::unix::fs::{OpenOptionsExt, fchown},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracer_common::{ClassFlow, ProcessFlows, RegionClass};

use super::{
    cycle::{CompactedCycles, Segment},
    findings::Analysis,
    spill::Cycles,
};
use crate::collect::{
    browser::{BrowserSummary, MemoryDump},
    processes::{Process, RoleTotals, TreeSample},
    roles::Role,
    sampler::RollupCost,
};

pub const SCHEMA: &str = "leaktrace/1";

#[derive(Debug, Error)]
pub enum TraceFileError {
    #[error("refusing to write {0}: it is a symbolic link")]
    Symlink(String),
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a leaktrace trace")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has schema {found:?}; this leaktrace reads {SCHEMA:?}")]
    Schema { path: String, found: String },
}

/// Why a trace ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The launched command exited.
    CommandExited,
    /// The attached process exited.
    TargetExited,
    /// `--duration` elapsed.
    Duration,
    /// SIGINT (Ctrl-C).
    Interrupted,
    /// SIGTERM.
    Terminated,
    /// `--cycles N` complete cycles were seen.
    CyclesDone,
    /// It has not: a report written while the trace goes on (`--report-every`, SIGUSR1).
    Running,
}

impl EndReason {
    pub fn describe(self) -> &'static str {
        match self {
            EndReason::CommandExited => "the command exited",
            EndReason::TargetExited => "the traced process exited",
            EndReason::Duration => "--duration elapsed",
            EndReason::Interrupted => "interrupted (SIGINT)",
            EndReason::Terminated => "terminated (SIGTERM)",
            EndReason::CyclesDone => "--cycles complete",
            EndReason::Running => "still running (a report written during the trace)",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub schema: String,
    /// The launched command, or the attached process's command line.
    pub command: Vec<String>,
    /// "run" or "attach".
    pub mode: String,
    pub root_pid: u32,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub duration_s: f64,
    pub ebpf: bool,
    /// Whether address-space flows were counted: eBPF on a kernel with `bpf_find_vma` (5.17+).
    /// Traces written before this key have flows whenever `ebpf` is true: see [`Trace::has_flows`].
    #[serde(default = "absent_means_yes")]
    pub flows: bool,
    /// Where `processes[].resident` comes from: "kernel" (rss_stat, eBPF) or "proc" (samples).
    #[serde(default)]
    pub resident_source: String,
    /// Seconds between /proc samples.
    #[serde(default)]
    pub interval_s: f64,
    /// What this trace could not see, in plain words (e.g. no eBPF without root).
    #[serde(default)]
    pub warnings: Vec<String>,
    pub ended_by: EndReason,
    /// The launched command's exit status (128 + signal when killed), when it was seen.
    pub exit_code: Option<i32>,
    /// Every way the kernel side can lose an event, with its count (zero included).
    pub events_lost: BTreeMap<String, u64>,
    pub processes: Vec<Process>,
    /// The sum over all processes.
    pub totals: Totals,
    /// The tree's PSS over time, at most a few hundred points however long the trace.
    #[serde(default)]
    pub samples: Vec<TreeSample>,
    /// The worker's cycles, when markers cut the trace into them: a long trace keeps its
    /// recent cycles in full and the older ones compacted.
    #[serde(default)]
    pub cycles: Cycles,
    /// The detail of the compacted cycles, summed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted: Option<CompactedCycles>,
    /// How the trace was cut into cycles, and what went wrong with the markers.
    #[serde(default)]
    pub markers: MarkerSummary,
    /// The DevTools side: endpoint, reconnections, failed calls, notes, and the last view.
    #[serde(default)]
    pub browser: BrowserSummary,
    /// With `attach --follow-name/--follow-cmdline`: each instance of the worker followed, in
    /// order (a supervisor restarted it with a new pid). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
    /// With `--memory-dumps`: Chromium's memory-infra dumps, at the first cycle end with a
    /// DevTools connection and then at cycles 2, 4, 8, ... (see `session::dumps`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_dumps: Vec<MemoryDump>,
    /// Fits of the cycle series, the phase growth, and the budget check.
    #[serde(default)]
    pub analysis: Analysis,
    /// What leaktrace itself cost while tracing: the observer's own footprint.
    #[serde(default)]
    pub tracer: TracerCost,
}

/// leaktrace's own footprint over the trace, read from the kernel when the trace ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TracerCost {
    /// Peak resident memory of the leaktrace process (VmHWM), in bytes.
    pub peak_rss: u64,
    /// CPU time leaktrace used, user plus system, in seconds.
    pub cpu_s: f64,
    /// Reading PSS: what smaps_rollup cost, and how often PSS was estimated instead.
    pub smaps_rollup: RollupCost,
    /// Reading regions: what the smaps readings at cycle ends cost.
    #[serde(default)]
    pub regions: crate::collect::regions::RegionCost,
}

impl TracerCost {
    /// This process's, now, with what its readings of smaps_rollup cost.
    pub fn of_self(smaps_rollup: RollupCost) -> TracerCost {
        let peak_rss = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map_or(0, |kib| kib * 1024);
        // SAFETY: getrusage fills the struct it is given.
        let usage = unsafe {
            let mut usage = std::mem::zeroed::<libc::rusage>();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        TracerCost {
            peak_rss,
            cpu_s: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            smaps_rollup,
            regions: Default::default(),
        }
    }
}

/// What cut the trace into cycles.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MarkerSummary {
    /// The marker sources in use: "regex", "socket", "log", "interval".
    pub sources: Vec<String>,
    /// The socket path given to the command as LEAKTRACE_MARKER (run mode).
    pub socket: Option<String>,
    pub cycles_seen: u64,
    pub phases_seen: u64,
    /// Marker lines that could not be understood (counted, warned about once).
    pub malformed: u64,
    /// Markers still queued when the trace ended that there was no time to take in (a flood
    /// faster than leaktrace's snapshots).
    pub dropped: u64,
    /// Markers that came while no instance of a followed worker ran (between one's exit and
    /// the next one's start): in no cycle, and counted here.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub between_instances: u64,
    pub warmup: u32,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    pub address_space: BTreeMap<String, ClassFlow>,
    pub brk_growth: i64,
    /// The tree's PSS at the last sample that found it alive: the sum over live processes,
    /// never summed RSS.
    pub pss: u64,
    /// When that sample was taken, in seconds since the start.
    pub pss_at_s: f64,
    pub by_role: BTreeMap<Role, RoleTotals>,
}

impl Process {
    pub fn set_flows(&mut self, flows: &ProcessFlows) {
        self.address_space = address_space(flows);
        self.brk_growth = flows.brk_growth;
    }

    pub fn class(&self, class: RegionClass) -> ClassFlow {
        self.address_space
            .get(class.name())
            .copied()
            .unwrap_or_default()
    }

    /// Some of its calls could not be attributed to a class (the mm's lock was busy): its
    /// per-class figures are partial, its total over the classes still exact.
    pub fn class_split_partial(&self) -> bool {
        let unattributed = self.class(RegionClass::Unattributed);
        unattributed.mapped + unattributed.unmapped + unattributed.released > 0
    }
}

/// The per-class map of a process's flows, with every class present.
fn absent_means_yes() -> bool {
    true
}

impl Trace {
    /// Whether the trace holds address-space flows.
    pub fn has_flows(&self) -> bool {
        self.ebpf && self.flows
    }
}

pub fn address_space(flows: &ProcessFlows) -> BTreeMap<String, ClassFlow> {
    RegionClass::ALL
        .iter()
        .map(|class| (class.name().to_string(), flows.classes[*class as usize]))
        .collect()
}

/// Sums the flows of all processes; PSS and roles come from the last tree sample.
pub fn totals(processes: &[Process], last_sample: Option<&TreeSample>) -> Totals {
    let mut totals = Totals {
        address_space: address_space(&ProcessFlows::default()),
        brk_growth: 0,
        pss: last_sample.map_or(0, |s| s.pss),
        pss_at_s: last_sample.map_or(0.0, |s| s.t_s),
        by_role: last_sample.map(|s| s.by_role.clone()).unwrap_or_default(),
    };
    for process in processes {
        for (class, flow) in &process.address_space {
            totals
                .address_space
                .entry(class.clone())
                .or_default()
                .add(flow);
        }
        totals.brk_growth += process.brk_growth;
    }
    totals
}

impl Trace {
    /// Writes the trace as JSON, never through a symlink; under sudo the file belongs to the
    /// invoking user.
    pub fn write(&self, path: &Path) -> Result<(), TraceFileError> {
        self.write_into(ReportFile::create(path)?)
    }

    /// Writes the trace as JSON into a file opened before (see [`ReportFile`]).
    ///
    /// Streamed to the file, never held whole in memory. Indented up to [`PRETTY_CYCLES`]
    /// cycles, for people who open it; past that, compact, since indentation doubled the bytes
    /// of a long trace.
    pub fn write_into(&self, file: ReportFile) -> Result<(), TraceFileError> {
        let ReportFile { path, file } = file;
        let write_error = |source| TraceFileError::Write {
            path: path.display().to_string(),
            source,
        };
        let mut out = std::io::BufWriter::new(file);
        let written = if self.cycles.count() <= PRETTY_CYCLES {
            serde_json::to_writer_pretty(&mut out, self)
        } else {
            serde_json::to_writer(&mut out, self)
        };
        written.map_err(|e| write_error(e.into()))?;
        out.write_all(b"\n").map_err(write_error)?;
        out.flush().map_err(write_error)
    }

    pub fn read(path: &Path) -> Result<Trace, TraceFileError> {
        let shown = path.display().to_string();
        let read_error = |source| TraceFileError::Read {
            path: shown.clone(),
            source,
        };
        // A device or a pipe (`report /dev/zero`) would be read until memory runs out.
        if !std::fs::metadata(path).map_err(read_error)?.is_file() {
            return Err(read_error(std::io::Error::other("not a regular file")));
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        // The schema first (ignoring every other key), so another document gets a clear error
        // rather than a missing field; then the trace itself, straight from the text.
        #[derive(Deserialize)]
        struct Header {
            schema: Option<String>,
        }
        let parse_error = |source| TraceFileError::Parse {
            path: shown.clone(),
            source,
        };
        let header: Header = serde_json::from_str(&text).map_err(parse_error)?;
        let found = header.schema.unwrap_or_else(|| "none".into());
        if found != SCHEMA {
            return Err(TraceFileError::Schema { path: shown, found });
        }
        serde_json::from_str(&text).map_err(parse_error)
    }
}

/// Traces with more cycles than this are written without indentation.
pub const PRETTY_CYCLES: usize = 1000;

/// Writes a report file, never through a symlink; under sudo it belongs to the invoking user.
pub fn write_file(path: &Path, contents: &[u8]) -> Result<(), TraceFileError> {
    ReportFile::create(path)?.write_all(contents)
}

/// An output file (the trace, its Trace Event twin, the HTML page), opened when leaktrace
/// starts and written when the trace ends: a path that cannot be written fails before anything
/// runs, not after an hour of tracing.
#[derive(Debug)]
pub struct ReportFile {
    path: PathBuf,
    file: std::fs::File,
}

impl ReportFile {
    /// Creates (or truncates) a report file, never through a symlink; under sudo it belongs to
    /// the invoking user.
    pub fn create(path: &Path) -> Result<ReportFile, TraceFileError> {
        Self::open(path, false)
    }

    /// Creates a file that does not exist yet (a fallback in a shared directory).
    pub fn create_new(path: &Path) -> Result<ReportFile, TraceFileError> {
        Self::open(path, true)
    }

    /// An unnamed file (O_TMPFILE) in `path`'s directory, to be given `path` by [`publish`]
    /// once it is whole: nothing half-written ever has a name, and a file never named is freed
    /// by the kernel however leaktrace ends. Returns it twice: to write into, and to name.
    pub fn unnamed(path: &Path) -> Result<(ReportFile, std::fs::File), TraceFileError> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let write_error = |source| TraceFileError::Write {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(dir)
            .map_err(write_error)?;
        chown_to_invoking_user(&file).map_err(write_error)?;
        let twin = file.try_clone().map_err(write_error)?;
        Ok((
            ReportFile {
                path: path.to_path_buf(),
                file,
            },
            twin,
        ))
    }

    fn open(path: &Path, new: bool) -> Result<ReportFile, TraceFileError> {
        let shown = path.display().to_string();
        let write_error = |source| TraceFileError::Write {
            path: shown.clone(),
            source,
        };
        let mut options = OpenOptions::new();
        options
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        if new {
            options.create_new(true);
        } else {
            options.create(true).truncate(true);
        }
        let file = match options.open(path) {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(TraceFileError::Symlink(shown));
            }
            other => other.map_err(write_error)?,
        };
        chown_to_invoking_user(&file).map_err(write_error)?;
        Ok(ReportFile {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write_all(mut self, contents: &[u8]) -> Result<(), TraceFileError> {
        self.file
            .write_all(contents)
            .map_err(|source| TraceFileError::Write {
                path: self.path.display().to_string(),
                source,
            })
    }
}

/// Under sudo, files leaktrace writes belong to the user who ran it.
fn chown_to_invoking_user(file: &std::fs::File) -> std::io::Result<()> {
    if let (Ok(uid), Ok(gid)) = (std::env::var("SUDO_UID"), std::env::var("SUDO_GID"))
        && let (Ok(uid), Ok(gid)) = (uid.parse(), gid.parse())
    {
        fchown(file, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Syncs an unnamed file made by [`ReportFile::unnamed`] and gives it `path`, which must not
/// exist yet (linkat through /proc/self/fd: the name appears with the whole file behind it).
pub fn publish(file: &std::fs::File, path: &Path) -> std::io::Result<()> {
    use std::os::{fd::AsRawFd, unix::ffi::OsStrExt};
    file.sync_all()?;
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .expect("no NUL in a number");
    let to = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a NUL in the path"))?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Formats a Unix time as RFC 3339 UTC (e.g. 2026-11-29T23:20:24Z).
pub fn rfc3339(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_unix_times_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_994_424), "2026-11-29T23:20:24Z");
    }

    #[test]
    fn net_counts_commits_as_growth_and_unmaps_as_shrinkage() {
        let flow = ClassFlow {
            mapped: 10,
            unmapped: 3,
            committed: 5,
            uncommitted: 4,
            released: 7,
            calls: 1,
        };
        assert_eq!(flow.net(), 8);
    }

    #[test]
    fn refuses_to_write_through_a_symlink() {
        let dir = std::env::temp_dir().join(format!("leaktrace-symlink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("target");
        let link = dir.join("link.json");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let trace = Trace {
            schema: SCHEMA.into(),
            command: vec!["true".into()],
            mode: "run".into(),
            root_pid: 1,
            started_at: rfc3339(0),
            duration_s: 0.0,
            ebpf: false,
            flows: false,
            resident_source: "proc".into(),
            interval_s: 1.0,
            warnings: vec![],
            ended_by: EndReason::CommandExited,
            exit_code: Some(0),
            events_lost: BTreeMap::new(),
            processes: vec![],
            totals: Totals::default(),
            samples: vec![],
            cycles: Cycles::default(),
            compacted: None,
            segments: Vec::new(),
            memory_dumps: Vec::new(),
            markers: MarkerSummary::default(),
            browser: BrowserSummary::default(),
            analysis: Analysis::default(),
            tracer: TracerCost::default(),
        };
        assert!(matches!(
            trace.write(&link),
            Err(TraceFileError::Symlink(_))
        ));
        assert!(!target.exists(), "nothing may be written through the link");
        trace.write(&dir.join("plain.json")).unwrap();
        assert_eq!(Trace::read(&dir.join("plain.json")).unwrap(), trace);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

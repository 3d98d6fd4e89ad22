//! /proc sampling: what each process holds now, from `smaps_rollup` (PSS: shared pages divided
//! among the processes that share them, so sums over a tree are honest) and `status` (the
//! kernel's resident counters). A process vanishing mid-read is normal and yields nothing.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

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
    let mut sample = status(pid)?;
    add_rollup(pid, &mut sample).then_some(sample)
}

/// The kernel's resident counters from `/proc/PID/status`: cheap (no mmap lock) and exact to
/// the page (the per-CPU parts are summed since Linux 6.16). Read at every boundary of every
/// process, so the four lines are picked out by hand: procfs's parser, which builds a map of all
/// ~55 fields, was a sixth of leaktrace's CPU on a fast Chromium worker (perf). A process without
/// memory (a zombie) has none of the lines: zeros.
fn status(pid: u32) -> Option<ProcSample> {
    // One read: the file is ~1.5 KiB and the counters come in its first half.
    let mut buffer = [0u8; 4096];
    let mut file = std::fs::File::open(format!("/proc/{pid}/status")).ok()?;
    let len = std::io::Read::read(&mut file, &mut buffer).ok()?;
    let mut sample = ProcSample::default();
    let mut found = 0;
    for line in buffer[..len].split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let field = match &line[..colon] {
            b"RssAnon" => &mut sample.rss_anon,
            b"RssFile" => &mut sample.rss_file,
            b"RssShmem" => &mut sample.rss_shmem,
            b"VmSwap" => &mut sample.vm_swap,
            _ => continue,
        };
        // "    1234 kB"
        let value = std::str::from_utf8(&line[colon + 1..]).ok()?;
        let kib: u64 = value.trim().strip_suffix("kB")?.trim_end().parse().ok()?;
        *field = kib * 1024;
        found += 1;
        if found == 4 {
            break;
        }
    }
    Some(sample)
}

/// Adds the PSS figures of `/proc/PID/smaps_rollup` (which walks every mapping under the
/// process's mmap lock: ~2 ms for a renderer); false if the process is gone.
fn add_rollup(pid: u32, sample: &mut ProcSample) -> bool {
    let Ok(rollup) = procfs::process::Process::new(pid as i32).and_then(|p| p.smaps_rollup())
    else {
        return false;
    };
    let Some(totals) = rollup.memory_map_rollup.0.first() else {
        return false;
    };
    let field = |name: &str| totals.extension.map.get(name).copied().unwrap_or(0);
    sample.rss = field("Rss");
    sample.pss = field("Pss");
    sample.pss_anon = field("Pss_Anon");
    sample.pss_file = field("Pss_File");
    sample.pss_shmem = field("Pss_Shmem");
    sample.swap = field("Swap");
    true
}

/// The CPU time this thread has used, in seconds: what a read costs, without the time it
/// waited for a lock or a core.
fn thread_cpu_s() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// Now, on CLOCK_BOOTTIME: the clock of the kernel programs' event times.
pub fn boot_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The memory of a tree's processes, read the moment a marker was read: a worker may close its
/// browser or exit right after its last marker, so the reading cannot wait for the session's
/// loop. Every process's status first (cheap and exact), then their smaps_rollup.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// When the marker was read, and when the reading was done (CLOCK_BOOTTIME).
    pub at_ns: u64,
    pub done_ns: u64,
    /// Every process that could be read, by pid.
    pub samples: HashMap<u32, ProcSample>,
}

/// How much a reading of the tree reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// Every process's smaps_rollup: the start and the end of the trace (PSS can move without
    /// the resident counters, when another process starts or stops sharing pages).
    Full,
    /// smaps_rollup where the resident counters moved and the process's wait is over (see
    /// [`Rollup::wait`]) or the figures are older than [`ROLLUP_MAX_AGE`], stalest first, within
    /// [`ROLLUP_SHARE`] (PSS estimated elsewhere): cycle ends, and the samples every
    /// `--interval` while no cycles are cut.
    Budgeted,
    /// The resident counters alone (status), PSS estimated from them: phase boundaries.
    Counters,
}

/// Reads the traced tree's memory from any thread: the session keeps its list of live pids
/// current, and the readers of the command's output read the tree the moment a marker comes.
///
/// smaps_rollup walks every page table of a process under its mmap lock (~2 ms a renderer,
/// ~6 ms a browser process; 83% of leaktrace's CPU on a fast Chromium worker when it was read
/// at every boundary). So it is read for a process only when its resident counters moved, less
/// often while the estimates keep matching what it reads, and only within a budget: at most
/// [`ROLLUP_SHARE`] of one core over the trace, after a first [`ROLLUP_BURST`]. Where it is not
/// read, PSS is estimated from the last reading and the change of the counters since (see
/// [`estimate`]); the trace counts both (`tracer`).
#[derive(Clone, Debug, Default)]
pub struct TreeReader(Arc<Mutex<TreeState>>);

#[derive(Debug, Default)]
struct TreeState {
    pids: Vec<u32>,
    /// The last smaps_rollup of each process.
    rollups: HashMap<u32, Rollup>,
    budget: RollupBudget,
}

/// A process's last smaps_rollup, and when to read it again.
#[derive(Clone, Copy, Debug)]
struct Rollup {
    /// Its figures, with the counters of that moment.
    sample: ProcSample,
    at: Instant,
    /// How long the next reading waits when the counters move: nothing at first; doubled (from
    /// [`ROLLUP_FIRST_WAIT`] up to [`ROLLUP_MAX_AGE`]) at each reading that finds the estimate
    /// held, back to nothing at one that finds it off. Most of a browser's processes fault
    /// and free private memory at every cycle, where the estimate is exact, so their readings
    /// (~6 ms for a browser process) thin out; a process whose pages are shared in ways the
    /// counters do not show is read as often as the budget allows.
    wait: Duration,
}

impl Rollup {
    /// A process's first reading: nothing to compare it with, so no wait.
    fn first(sample: ProcSample) -> Rollup {
        Rollup {
            sample,
            at: Instant::now(),
            wait: Duration::ZERO,
        }
    }

    /// Whether the process is due a reading now that its counters read `now`.
    fn due(&self, now: &ProcSample) -> bool {
        let age = self.at.elapsed();
        (!same_counters(&self.sample, now) && age >= self.wait) || age >= ROLLUP_MAX_AGE
    }

    /// The next reading: `read` (taken with the counters of `status`), and its wait from how
    /// close this reading's estimate came.
    fn next(&self, status: &ProcSample, read: ProcSample) -> Rollup {
        let estimated = estimate(&self.sample, status);
        let owned = |s: &ProcSample| s.pss_anon + s.pss_shmem;
        let held =
            owned(&estimated).abs_diff(owned(&read)) as f64 <= ESTIMATE_HELD * owned(&read) as f64;
        Rollup {
            sample: read,
            at: Instant::now(),
            wait: if held {
                (self.wait * 2).clamp(ROLLUP_FIRST_WAIT, ROLLUP_MAX_AGE)
            } else {
                Duration::ZERO
            },
        }
    }
}

/// How old a process's PSS figures may be when its resident counters have not moved: PSS can
/// change without them (another process starts or stops sharing its pages).
pub const ROLLUP_MAX_AGE: Duration = Duration::from_secs(10);
/// The wait after the first reading that finds the estimate held (see [`Rollup::wait`]).
const ROLLUP_FIRST_WAIT: Duration = Duration::from_millis(250);
/// How close an estimate of a process's owned PSS (anonymous and shared memory) must come to
/// the reading, as a share of it, to count as held: the zoo's leaks are told apart at 3%.
const ESTIMATE_HELD: f64 = 0.01;
/// The share of one core smaps_rollup may take, averaged over the trace.
pub const ROLLUP_SHARE: f64 = 0.02;
/// What smaps_rollup may take before the share applies: a short trace reads it at every cycle
/// end.
pub const ROLLUP_BURST: Duration = Duration::from_millis(200);

/// What reading smaps_rollup has cost, and how often PSS was estimated instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RollupCost {
    /// smaps_rollup files read.
    pub reads: u64,
    /// The CPU time they took, in seconds (kernel time walking page tables).
    pub seconds: f64,
    /// Process readings whose PSS was estimated from the resident counters instead.
    pub estimates: u64,
}

#[derive(Debug)]
struct RollupBudget {
    started: Instant,
    cost: RollupCost,
}

impl Default for RollupBudget {
    fn default() -> Self {
        RollupBudget {
            started: Instant::now(),
            cost: RollupCost::default(),
        }
    }
}

impl RollupBudget {
    fn allows(&self) -> bool {
        let allowed =
            ROLLUP_BURST.as_secs_f64() + ROLLUP_SHARE * self.started.elapsed().as_secs_f64();
        self.cost.seconds < allowed
    }
}

impl TreeReader {
    fn state(&self) -> std::sync::MutexGuard<'_, TreeState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live pids, as the session knows them now.
    pub fn set_pids(&self, pids: Vec<u32>) {
        let mut state = self.state();
        state.rollups.retain(|pid, _| pids.contains(pid));
        state.pids = pids;
    }

    /// What smaps_rollup has cost so far.
    pub fn cost(&self) -> RollupCost {
        self.state().budget.cost
    }

    /// Reads every live process now, for a boundary whose marker was read at `at_ns`.
    pub fn read(&self, at_ns: u64, depth: Depth) -> Reading {
        let pids = self.state().pids.clone();
        self.read_pids(&pids, at_ns, depth)
    }

    /// Reads `pids` (every status first, then smaps_rollup as `depth` allows) as a [`Reading`].
    pub fn read_pids(&self, pids: &[u32], at_ns: u64, depth: Depth) -> Reading {
        let statuses: Vec<(u32, ProcSample)> = pids
            .iter()
            .filter_map(|&pid| Some((pid, status(pid)?)))
            .collect();
        let mut state = self.state();
        // Stalest first: a process never read, then the oldest reading.
        let mut order: Vec<(Option<Instant>, usize)> = statuses
            .iter()
            .enumerate()
            .map(|(i, (pid, ..))| (state.rollups.get(pid).map(|r| r.at), i))
            .collect();
        order.sort();
        let mut samples = HashMap::with_capacity(statuses.len());
        for (_, i) in order {
            let (pid, status) = &statuses[i];
            let mut sample = *status;
            let last = state.rollups.get(pid).copied();
            let read = match (depth, &last) {
                (Depth::Full, _) => true,
                // A process never read has no figures to estimate from.
                (_, None) => true,
                (Depth::Budgeted, Some(last)) => last.due(&sample) && state.budget.allows(),
                (Depth::Counters, _) => false,
            };
            match last {
                _ if read => {
                    let started = thread_cpu_s();
                    let ok = add_rollup(*pid, &mut sample);
                    let cost = &mut state.budget.cost;
                    cost.seconds += thread_cpu_s() - started;
                    cost.reads += 1;
                    if ok {
                        let rollup = last.map_or_else(
                            || Rollup::first(sample),
                            |last| last.next(status, sample),
                        );
                        state.rollups.insert(*pid, rollup);
                        samples.insert(*pid, sample);
                    }
                }
                Some(last) if !same_counters(&last.sample, &sample) => {
                    state.budget.cost.estimates += 1;
                    samples.insert(*pid, estimate(&last.sample, &sample));
                }
                Some(last) => {
                    samples.insert(*pid, last.sample);
                }
                None => {}
            }
        }
        Reading {
            at_ns,
            done_ns: boot_ns(),
            samples,
        }
    }
}

/// A process's PSS now, from its last smaps_rollup (`last`) and its resident counters now
/// (`now`, from status): anonymous pages are the process's own, so their PSS moves with the
/// counter; shared-memory and file pages move in the proportion PSS bore to resident memory at
/// the last reading. Exact for private memory, close for the rest, and corrected at the next
/// reading.
pub fn estimate(last: &ProcSample, now: &ProcSample) -> ProcSample {
    let moved = |pss: u64, then: u64, now: u64| -> u64 {
        let share = if then > 0 {
            pss as f64 / then as f64
        } else {
            1.0
        };
        (pss as f64 + (now as f64 - then as f64) * share)
            .max(0.0)
            .round() as u64
    };
    let pss_anon = (last.pss_anon + now.rss_anon).saturating_sub(last.rss_anon);
    let pss_shmem = moved(last.pss_shmem, last.rss_shmem, now.rss_shmem);
    let pss_file = moved(last.pss_file, last.rss_file, now.rss_file);
    ProcSample {
        rss: now.rss_anon + now.rss_file + now.rss_shmem,
        pss: pss_anon + pss_shmem + pss_file,
        pss_anon,
        pss_file,
        pss_shmem,
        swap: (last.swap + now.vm_swap).saturating_sub(last.vm_swap),
        ..*now
    }
}

/// Whether two samples have the same resident counters (status): nothing was faulted in or
/// freed in between.
fn same_counters(a: &ProcSample, b: &ProcSample) -> bool {
    (a.rss_anon, a.rss_file, a.rss_shmem, a.vm_swap)
        == (b.rss_anon, b.rss_file, b.rss_shmem, b.vm_swap)
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

    #[test]
    fn status_by_hand_reads_what_procfs_reads() {
        // A sleeping process: its counters hold still between the two readings.
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = sleeper.id();
        std::thread::sleep(Duration::from_millis(100));
        let ours = status(pid).expect("a live process's status");
        let theirs = procfs::process::Process::new(pid as i32)
            .and_then(|p| p.status())
            .unwrap();
        let kib = |v: Option<u64>| v.unwrap() * 1024;
        assert_eq!(
            (ours.rss_anon, ours.rss_file, ours.rss_shmem, ours.vm_swap),
            (
                kib(theirs.rssanon),
                kib(theirs.rssfile),
                kib(theirs.rssshmem),
                kib(theirs.vmswap)
            )
        );
        assert!(ours.rss_anon > 0 && ours.rss_file > 0);
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert!(status(pid).is_none());
    }

    #[test]
    fn a_phase_boundary_estimates_private_growth_from_the_counters() {
        const MIB: u64 = 1 << 20;
        let pid = std::process::id();
        let reader = TreeReader::default();
        reader.set_pids(vec![pid]);
        let before = reader.read(0, Depth::Full).samples[&pid];
        // 64 MiB of this process's own, touched: resident, anonymous, private.
        let block = vec![1u8; 64 * MIB as usize];
        let estimated = reader.read(0, Depth::Counters).samples[&pid];
        let actual = sample(pid).expect("own sample");
        assert_eq!(block.iter().map(|b| *b as u64).sum::<u64>(), 64 * MIB);
        let cost = reader.cost();
        assert_eq!((cost.reads, cost.estimates), (1, 1));
        // Other tests run alongside: within 1 MiB of smaps_rollup read at the same moment, where
        // the last reading is 16 MiB off.
        assert!(
            actual.pss_anon >= before.pss_anon + 15 * MIB,
            "{before:?} {actual:?}"
        );
        assert!(
            estimated.pss_anon.abs_diff(actual.pss_anon) < MIB,
            "estimated {} against {}",
            estimated.pss_anon,
            actual.pss_anon
        );
        assert!(estimated.pss.abs_diff(actual.pss) < MIB);
    }

    /// A perl process that grows by 8 MiB of its own, touched memory, or forks a child that
    /// shares its pages, at each line it is sent, and answers when it has.
    struct Grower {
        perl: std::process::Child,
        answers: std::io::BufReader<std::process::ChildStdout>,
    }

    impl Grower {
        const SCRIPT: &str = r#"
            $| = 1; my @kept; my $parent = $$;
            print "ready\n";
            while (my $line = <STDIN>) {
                if ($line =~ /grow/) { push @kept, "x" x (8 << 20); }
                elsif (fork() == 0) {
                    # Shares the parent's pages until the parent is gone.
                    select(undef, undef, undef, 0.05) while getppid() == $parent;
                    exit 0;
                }
                print "done\n";
            }
        "#;

        fn start() -> Grower {
            use std::process::{Command, Stdio};
            let mut perl = Command::new("perl")
                .args(["-e", Self::SCRIPT])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("perl");
            let mut answers = std::io::BufReader::new(perl.stdout.take().unwrap());
            let mut line = String::new();
            std::io::BufRead::read_line(&mut answers, &mut line).unwrap();
            assert_eq!(line, "ready\n");
            Grower { perl, answers }
        }

        fn send(&mut self, what: &str) {
            use std::io::Write;
            writeln!(self.perl.stdin.as_mut().unwrap(), "{what}").unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(&mut self.answers, &mut line).unwrap();
            assert_eq!(line, "done\n");
        }
    }

    impl Drop for Grower {
        fn drop(&mut self) {
            let _ = self.perl.kill();
            let _ = self.perl.wait();
        }
    }

    #[test]
    fn a_process_whose_estimates_hold_is_read_less_often() {
        let mut grower = Grower::start();
        let pid = grower.perl.id();
        let reader = TreeReader::default();
        reader.set_pids(vec![pid]);
        let reads = |reader: &TreeReader| reader.cost().reads;
        reader.read(0, Depth::Full);
        // Private growth: the estimate holds, so the next reading waits ROLLUP_FIRST_WAIT.
        grower.send("grow");
        reader.read(0, Depth::Budgeted);
        assert_eq!(reads(&reader), 2);
        grower.send("grow");
        let estimated = reader.read(0, Depth::Budgeted).samples[&pid];
        assert_eq!(reads(&reader), 2, "read again within the wait");
        let actual = sample(pid).expect("the grower's sample");
        assert!(
            estimated.pss_anon.abs_diff(actual.pss_anon) < actual.pss_anon / 100,
            "estimated {estimated:?} against {actual:?}"
        );
        // The child shares the parent's pages: the parent's PSS halves, its counters stay, and
        // the next reading finds the estimate off, so the one after does not wait.
        grower.send("fork");
        std::thread::sleep(ROLLUP_FIRST_WAIT);
        grower.send("grow");
        reader.read(0, Depth::Budgeted);
        assert_eq!(reads(&reader), 3);
        grower.send("grow");
        reader.read(0, Depth::Budgeted);
        assert_eq!(
            reads(&reader),
            4,
            "read at once after an estimate that was off"
        );
    }
}

//! `cargo xtask bench`: what leaktrace costs the process it traces, next to bpftrace; then what
//! it costs a bystander (`bystander`), a real Bun + puppeteer worker (`worker`), and itself on
//! long traces (`long_trace`). The storm comes first:
//!
//! The workload is the `storm` fixture, a single-threaded loop of nothing but the memory syscalls
//! leaktrace counts (mmap, munmap, brk, mremap, mprotect, madvise), so every call pays the
//! tracer's per-syscall cost and nothing dilutes it. It runs three ways:
//!
//! - untraced, the baseline;
//! - under `leaktrace run -q`;
//! - under bpftrace with a script that only counts the same syscalls per pid, at entry and exit,
//!   the cheapest useful tracer one could write by hand: the yardstick.
//!
//! Each run is timed by the seconds storm reports for its own loop, which leaves out the
//! tracers' start-up (loading and attaching eBPF) and teardown (reading maps, the report): what
//! is compared is the slowdown of the traced program while it is traced. The wall time of the
//! whole command is shown as well, for information.
//!
//! Machines drift (CPU frequency, caches, noisy neighbours on a VM), so the variants are
//! interleaved rather than run in blocks, and the order within a round changes every round: each
//! variant runs first, second and third equally often, so a slow minute lands on all of them
//! instead of making one look worse. The ratio is median over median, which one outlier cannot
//! move. Each run starts once the run before has left the kernel (`settle`): a run right after
//! a traced one would still pay the tracepoints' slow path. Speed is measured here and never
//! asserted in tests.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

/// The issue's goal for leaktrace, as a slowdown of the traced program.
const TARGET_RATIO: f64 = 1.35;

/// The memory syscalls storm makes; bpftrace counts exactly these.
const SYSCALLS: [&str; 6] = ["mmap", "munmap", "brk", "mprotect", "madvise", "mremap"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Untraced,
    Leaktrace,
    Bpftrace,
}

const VARIANTS: [Variant; 3] = [Variant::Untraced, Variant::Leaktrace, Variant::Bpftrace];

/// Every order of the three variants; round `r` uses `ORDERS[r % 6]`. The first three are the
/// rotations, so three rounds already put each variant in each position once; the last three
/// also swap who runs right after whom (a tracer's teardown can slow the next run).
const ORDERS: [[usize; 3]; 6] = [
    [0, 1, 2],
    [1, 2, 0],
    [2, 0, 1],
    [0, 2, 1],
    [2, 1, 0],
    [1, 0, 2],
];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Untraced => "untraced",
            Variant::Leaktrace => "leaktrace",
            Variant::Bpftrace => "bpftrace",
        }
    }
}

/// One run of storm: its own loop time, the command's wall time, and what storm said it did.
struct Sample {
    secs: f64,
    wall: f64,
    calls: u64,
    /// bpftrace only: the calls it counted at entry for storm's pid.
    counted: Option<u64>,
}

struct Bins {
    storm: PathBuf,
    leaktrace: PathBuf,
    cycler: PathBuf,
}

pub fn run(workspace: &Path, rounds: usize, long_cycles: &[u64]) -> Result<()> {
    ensure!(rounds > 0, "bench needs at least one round");
    // Checked before the build so a missing prerequisite fails in a second, not after minutes.
    ensure!(
        is_root(),
        "bench loads eBPF programs (leaktrace and bpftrace) and must run as root: \
         run `sudo cargo xtask bench`"
    );
    check_bpftrace()?;

    let bins = build(workspace)?;
    let script = bpftrace_script(true);

    // A warm-up round, not counted: it faults in the binaries and the kernel's BPF paths, and
    // fails fast if a variant does not work at all.
    eprintln!("bench: warm-up round (not counted)");
    for variant in VARIANTS {
        measure(variant, &bins, &script)?;
    }

    let mut samples: [Vec<Sample>; 3] = Default::default();
    for round in 0..rounds {
        let mut line = format!("bench: round {}/{rounds}:", round + 1);
        for index in ORDERS[round % ORDERS.len()] {
            let variant = VARIANTS[index];
            let sample = measure(variant, &bins, &script)?;
            line += &format!(" {} {:.3} s", variant.name(), sample.secs);
            samples[index].push(sample);
        }
        eprintln!("{line}");
    }

    print_table(&samples, rounds);
    bystander(&bins, rounds)?;
    worker(workspace, &bins, rounds)?;
    for &cycles in long_cycles {
        long_trace(&bins, cycles)?;
    }
    Ok(())
}

/// Cycles of the real worker's runs.
const WORKER_CYCLES: &str = "60";

/// The worker's runs side by side: untraced, traced, and traced without DevTools.
const WORKER_VARIANTS: [&str; 3] = ["untraced", "leaktrace", "leaktrace --cdp off"];

/// The scraper fixture (Bun + puppeteer-core driving Debian's Chromium, `--leak none`) doing
/// 60 cycles as fast as it can (`--interval-ms 0`), markers at every phase in its log lines:
/// untraced, traced with DevTools on, and traced with `--cdp off` (the markers' snapshots
/// alone), alternated like the storm. Each run's wall time twice: of the whole command
/// (leaktrace's start-up and finish included), and of the worker itself (GNU time around it,
/// in every variant); and leaktrace's own CPU, from its trace.
fn worker(workspace: &Path, bins: &Bins, rounds: usize) -> Result<()> {
    let dir = workspace.join("tests/fixtures/scraper");
    let bun = dir.join("node_modules/.bin/bun");
    ensure!(
        bun.is_file(),
        "{} is missing: `cargo xtask setup` installs it",
        bun.display()
    );
    ensure!(
        Path::new(GNU_TIME).is_file(),
        "{GNU_TIME} is missing: `cargo xtask setup` installs it (apt package time)"
    );
    let scratch = env::temp_dir().join(format!("leaktrace-bench-worker-{}", std::process::id()));
    let (times, json) = (
        scratch.with_extension("time"),
        scratch.with_extension("json"),
    );
    // The worker, timed by GNU time, from `program` on.
    let worker = |command: &mut Command| {
        command
            .args(["-f", "%e", "-o"])
            .arg(&times)
            .arg(&bun)
            .args(["run", "worker.ts", "--leak", "none"])
            .args(["--cycles", WORKER_CYCLES, "--interval-ms", "0"])
            .current_dir(&dir);
    };
    let traced = |cdp: &str| {
        let mut command = Command::new(&bins.leaktrace);
        command
            // No --cycles: the trace ends when the worker exits after its last cycle (stopping
            // it at its 60th marker would stop GNU time before it wrote).
            .args(["run", "-q", "--cdp", cdp])
            .args(["--cycle-regex", r"cycle \d+ done"])
            .args(["--phase-regex", r"^phase (\w+)", "-o"])
            .arg(&json)
            .args(["--", GNU_TIME]);
        worker(&mut command);
        command
    };
    // Per variant: whole-command walls, the worker's own walls, leaktrace's share of a core.
    let mut walls: [Vec<f64>; 3] = Default::default();
    let mut own: [Vec<f64>; 3] = Default::default();
    let mut cpu: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for index in ORDERS[round % ORDERS.len()] {
            let mut command = match index {
                0 => {
                    let mut command = Command::new(GNU_TIME);
                    worker(&mut command);
                    command
                }
                1 => traced("auto"),
                _ => traced("off"),
            };
            settle(bins);
            let started = Instant::now();
            let out = command.output()?;
            ensure!(
                out.status.success(),
                "{} worker run failed: {}",
                WORKER_VARIANTS[index],
                String::from_utf8_lossy(&out.stderr)
            );
            walls[index].push(started.elapsed().as_secs_f64());
            own[index].push(std::fs::read_to_string(&times)?.trim().parse()?);
            if index > 0 {
                let trace = std::fs::read_to_string(&json)?;
                cpu[index].push(json_number(&trace, "cpu_s")? / json_number(&trace, "duration_s")?);
            }
        }
    }
    let _ = std::fs::remove_file(&times);
    let _ = std::fs::remove_file(&json);
    print_worker(rounds, [walls, own, cpu]);
    Ok(())
}

/// The worker's table: per variant, the whole command's and the worker's own wall time against
/// the untraced run, and leaktrace's share of a core (medians over the rounds).
fn print_worker(rounds: usize, [mut walls, mut own, mut cpu]: [[Vec<f64>; 3]; 3]) {
    println!(
        "\nworker: the Bun + puppeteer scraper, {WORKER_CYCLES} cycles as fast as it can, markers \
         at every phase; median of {rounds}\n{:<22} {:>17} {:>17} {:>16}",
        "", "whole command", "worker itself", "leaktrace CPU"
    );
    let (whole, itself) = (median(&mut walls[0].clone()), median(&mut own[0].clone()));
    for index in 0..WORKER_VARIANTS.len() {
        let (w, o) = (median(&mut walls[index]), median(&mut own[index]));
        let share = if cpu[index].is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}% of a core", 100.0 * median(&mut cpu[index]))
        };
        println!(
            "{:<22} {w:>8.2} s {:>6.2}x {o:>8.2} s {:>6.2}x {share:>16}",
            WORKER_VARIANTS[index],
            w / whole,
            o / itself
        );
    }
}

/// GNU time, which times the worker in the worker benchmark.
const GNU_TIME: &str = "/usr/bin/time";

/// The first number after `"key":` in a trace's JSON (compact past 1000 cycles).
fn json_number(text: &str, key: &str) -> Result<f64> {
    let at = text
        .find(&format!("\"{key}\":"))
        .with_context(|| format!("no {key} in the trace"))?;
    let rest = text[at + key.len() + 3..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
        .unwrap_or(rest.len());
    Ok(rest[..end].parse()?)
}

/// A fast worker (`cycler --fixed`: 3 socket markers a cycle, a few ms each) traced for `cycles`
/// cycles: leaktrace's own peak RSS and CPU (from the trace's `tracer` key), how long it took to
/// finish after the worker exited, the JSON's bytes per cycle, and how long `report` takes.
fn long_trace(bins: &Bins, cycles: u64) -> Result<()> {
    let json = env::temp_dir().join(format!("leaktrace-bench-long-{}.json", std::process::id()));
    let started = Instant::now();
    let out = Command::new(&bins.leaktrace)
        .args(["run", "-q", "-o"])
        .arg(&json)
        .arg("--")
        .arg(&bins.cycler)
        .args(["--cycles", &cycles.to_string(), "--markers", "socket"])
        .args(["--exit-at-once", "--fixed"])
        .output()?;
    let wall = started.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "long trace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json)?;
    let number = |key| json_number(&text, key);
    let (duration, peak, cpu) = (number("duration_s")?, number("peak_rss")?, number("cpu_s")?);
    let started = Instant::now();
    let report = Command::new(&bins.leaktrace)
        .arg("report")
        .arg(&json)
        .output()?;
    let report_s = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&json);
    ensure!(report.status.success(), "leaktrace report failed");
    println!(
        "\nlong trace, {} cycles of a fast worker (cycler --fixed, socket markers): \
         leaktrace peak RSS {:.0} MiB, CPU {cpu:.1} s over {duration:.1} s traced, \
         finished {:.2} s after the worker, JSON {:.0} bytes per cycle, `report` {report_s:.2} s",
        thousands(cycles),
        peak / 1048576.0,
        (wall - duration).max(0.0),
        text.len() as f64 / cycles as f64,
    );
    Ok(())
}

/// The tax on a process leaktrace does not trace: a `getppid` loop (storm `--getppid`) alone,
/// then while `leaktrace run -- sleep` traces something else, while bpftrace runs the storm's
/// script on its own `sleep`, and while it runs the entry half alone: once any syscall
/// tracepoint is attached every syscall on the host takes the kernel's slow path, so that is the
/// least any tracer on syscall tracepoints costs a bystander here. Rotated round by round; each
/// tracer is given time to attach before the loop starts.
fn bystander(bins: &Bins, rounds: usize) -> Result<()> {
    const NAMES: [&str; 4] = [
        "untraced",
        "leaktrace",
        "bpftrace",
        "bpftrace, entries only",
    ];
    // A full path: bpftrace -c refuses a name that matches two binaries (/bin and /usr/bin).
    const SLEEP: &str = "/usr/bin/sleep";
    const ATTACH: std::time::Duration = std::time::Duration::from_secs(3);
    let run_loop = || -> Result<f64> {
        let out = Command::new(&bins.storm).arg("--getppid").output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (calls, secs) = parse_storm(&stdout).context("no storm line from --getppid")?;
        Ok(secs / calls as f64 * 1e9)
    };
    // Each tracer runs `SLEEP <seconds>` and ends when it exits (bpftrace ignores SIGINT while
    // its command runs): the loop runs meanwhile, then the sleep is ended by its unique command
    // line.
    let traced = |tracer: &mut Command, seconds: &str| -> Result<f64> {
        let mut child = tracer
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        std::thread::sleep(ATTACH);
        // A tracer that failed to start would make the bystander look free.
        let running = child.try_wait()?.is_none();
        let result = run_loop();
        let _ = Command::new("pkill")
            .args(["-x", "-f", &format!("{SLEEP} {seconds}")])
            .status();
        child.wait()?;
        ensure!(running, "{tracer:?} ended before the bystander loop ran");
        result
    };
    let (both_script, entries_script) = (bpftrace_script(true), bpftrace_script(false));
    // bpftrace takes its command as one string and splits it.
    let bpftrace = |script: &str, seconds: &str| -> Result<f64> {
        let command = format!("{SLEEP} {seconds}");
        traced(
            Command::new("bpftrace").args(["-e", script, "-c", &command]),
            seconds,
        )
    };
    let mut ns: [Vec<f64>; NAMES.len()] = Default::default();
    for round in 0..rounds {
        for turn in 0..NAMES.len() {
            let index = (round + turn) % NAMES.len();
            settle(bins);
            let sample = match index {
                0 => run_loop()?,
                1 => traced(
                    Command::new(&bins.leaktrace).args(["run", "-q", "--", SLEEP, "600"]),
                    "600",
                )?,
                2 => bpftrace(&both_script, "601")?,
                _ => bpftrace(&entries_script, "602")?,
            };
            ns[index].push(sample);
        }
    }
    println!(
        "\nbystander: a getppid loop outside the traced tree, ns per call (median of {rounds})"
    );
    let baseline = median(&mut ns[0].clone());
    for (name, samples) in NAMES.iter().zip(ns.iter_mut()) {
        let med = median(samples);
        println!("{name:<24} {med:>8.1} ns {:>6.2}x", med / baseline);
    }
    Ok(())
}

/// Effective uid 0, read from /proc so xtask needs no libc.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            // Real, effective, saved, filesystem: the effective uid decides what we may load.
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn check_bpftrace() -> Result<()> {
    match Command::new("bpftrace").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => bail!(
            "`bpftrace --version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "bpftrace is not installed; the benchmark compares against it. \
             `cargo xtask setup` installs it (apt package bpftrace)"
        ),
        Err(e) => Err(e).context("cannot run bpftrace"),
    }
}

fn build(workspace: &Path) -> Result<Bins> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "-p",
            "tracer",
            "-p",
            "leaktrace-tests",
        ])
        .current_dir(workspace);
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    ensure!(status.success(), "{command:?} failed ({status})");

    // Cargo honours CARGO_TARGET_DIR, relative to where it runs: so do we.
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(|dir| workspace.join(dir))
        .unwrap_or_else(|| workspace.join("target"))
        .join("release");
    let bins = Bins {
        storm: target.join("storm"),
        leaktrace: target.join("leaktrace"),
        cycler: target.join("cycler"),
    };
    for bin in [&bins.storm, &bins.leaktrace, &bins.cycler] {
        ensure!(bin.is_file(), "the build did not produce {}", bin.display());
    }
    // As /proc/PID/exe names it (see `settle`).
    let leaktrace = bins.leaktrace.canonicalize()?;
    Ok(Bins { leaktrace, ..bins })
}

/// Counts the storm's memory syscalls at entry and (with `exits`) at exit, per pid, filtered to
/// the child bpftrace starts (`cpid`): roughly the work a syscall-counting tracer must do, done
/// the simplest way.
fn bpftrace_script(exits: bool) -> String {
    let probes = |phase: &str| {
        SYSCALLS
            .iter()
            .map(|name| format!("tracepoint:syscalls:sys_{phase}_{name}"))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    let mut script = format!(
        "{}\n/pid == cpid/ {{ @calls[pid] = count(); }}\n",
        probes("enter")
    );
    if exits {
        script += &format!(
            "{}\n/pid == cpid/ {{ @returns[pid] = count(); }}\n",
            probes("exit")
        );
    }
    script
}

fn measure(variant: Variant, bins: &Bins, script: &str) -> Result<Sample> {
    settle(bins);
    let mut command = match variant {
        Variant::Untraced => Command::new(&bins.storm),
        Variant::Leaktrace => {
            let mut command = Command::new(&bins.leaktrace);
            command.args(["run", "-q", "--"]).arg(&bins.storm);
            command
        }
        Variant::Bpftrace => {
            // bpftrace splits -c on whitespace, so the path must not contain any.
            let storm = bins.storm.to_str().context("storm's path is not UTF-8")?;
            ensure!(
                !storm.contains(char::is_whitespace),
                "bpftrace -c cannot run a path with spaces: {storm}"
            );
            let mut command = Command::new("bpftrace");
            command.args(["-e", script, "-c", storm]);
            command
        }
    };
    let start = Instant::now();
    let out = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    let wall = start.elapsed().as_secs_f64();
    check_output(variant, &command, &out)?;

    let stdout = String::from_utf8_lossy(&out.stdout);
    let (calls, secs) = parse_storm(&stdout).with_context(|| {
        format!(
            "{} run: no storm line in its output:\n{stdout}",
            variant.name()
        )
    })?;
    let counted = if variant == Variant::Bpftrace {
        let counted = map_total(&stdout, "@calls[");
        // Without this the yardstick might have traced nothing and look free.
        ensure!(
            counted > 0,
            "bpftrace counted no memory syscalls for storm's pid: the comparison would be \
             meaningless. Its output:\n{stdout}"
        );
        Some(counted)
    } else {
        None
    };
    Ok(Sample {
        secs,
        wall,
        calls,
        counted,
    })
}

fn check_output(variant: Variant, command: &Command, out: &Output) -> Result<()> {
    ensure!(
        out.status.success(),
        "{} run {command:?} failed ({}):\n{}{}",
        variant.name(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Waits until the previous run's tracer has left the kernel: no process runs the bench's
/// leaktrace (the copy of it that holds its links until it has exited, see the README's "The
/// tail") or bpftrace, then a moment more. Until then every syscall on the host still takes the
/// tracepoints' slow path, and whatever runs next, traced or not, would pay for the run before.
fn settle(bins: &Bins) {
    const POLL: Duration = Duration::from_millis(50);
    const GIVE_UP: Duration = Duration::from_secs(10);
    const DETACH: Duration = Duration::from_millis(300);
    let started = Instant::now();
    while tracer_running(&bins.leaktrace) && started.elapsed() < GIVE_UP {
        std::thread::sleep(POLL);
    }
    std::thread::sleep(DETACH);
}

fn tracer_running(leaktrace: &Path) -> bool {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return false;
    };
    processes.flatten().any(|process| {
        let path = process.path();
        std::fs::read_link(path.join("exe")).is_ok_and(|exe| exe == leaktrace)
            || std::fs::read_to_string(path.join("comm"))
                .is_ok_and(|comm| comm.trim() == "bpftrace")
    })
}

/// `storm: <calls> syscalls in <secs> s` → (calls, secs).
fn parse_storm(stdout: &str) -> Option<(u64, f64)> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("storm: "))?;
    let (calls, rest) = line.split_once(" syscalls in ")?;
    let secs = rest.strip_suffix(" s")?;
    Some((calls.parse().ok()?, secs.parse().ok()?))
}

/// The sum of a bpftrace map's values, from its exit dump (`@calls[1234]: 675012`).
fn map_total(stdout: &str, prefix: &str) -> u64 {
    stdout
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
        .sum()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn print_table(samples: &[Vec<Sample>; 3], rounds: usize) {
    let calls = samples[0][0].calls;
    println!(
        "storm: {} memory syscalls per run, {rounds} rounds, order alternated",
        thousands(calls)
    );
    println!("variant        median s   min s   ratio   wall s (median, for information)");
    let mut baseline = f64::NAN;
    let mut leaktrace_ratio = f64::NAN;
    for (variant, runs) in VARIANTS.iter().zip(samples) {
        let mut secs: Vec<f64> = runs.iter().map(|s| s.secs).collect();
        let mut wall: Vec<f64> = runs.iter().map(|s| s.wall).collect();
        let min = secs.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(&mut secs);
        if *variant == Variant::Untraced {
            baseline = med;
        }
        let ratio = med / baseline;
        if *variant == Variant::Leaktrace {
            leaktrace_ratio = ratio;
        }
        println!(
            "{:<12} {med:>10.3} {min:>7.3} {ratio:>6.2}x {:>8.3}",
            variant.name(),
            median(&mut wall)
        );
    }
    // Every bpftrace run was checked non-zero; show one so the reader can see it traced storm
    // (it also counts the runtime's own start-up mmaps, hence a little more than storm's loop).
    if let Some(counted) = samples[2].last().and_then(|s| s.counted) {
        println!(
            "bpftrace counted {} {} calls from storm's pid in its last run (storm's loop made {})",
            thousands(counted),
            SYSCALLS.join("/"),
            thousands(calls)
        );
    }
    let verdict = if leaktrace_ratio <= TARGET_RATIO {
        "met"
    } else {
        "NOT met"
    };
    println!(
        "Target: leaktrace <= {TARGET_RATIO:.2}x untraced; measured {leaktrace_ratio:.2}x \
         ({verdict})."
    );
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

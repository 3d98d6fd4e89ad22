//! The command line: parse, run the library, print, and map errors to exit codes.
//!
//! Exit codes: 0 ok; 1 error (also: an output that could not be written when the trace ended,
//! after the report was printed and the trace saved elsewhere); 2 usage error, before anything
//! runs (from clap, and a bad regex, `--cycle-log` or output path); 3 budget exceeded.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::{
    collect::markers::LineRules,
    diagnostics::{Verbosity, with_causes},
    doctor,
    render::{diff, report},
    session,
    trace::{ReportFile, Trace},
};

const ABOUT: &str = "Which process, and which kind of memory in it, keeps growing.";
const LONG_ABOUT: &str = "\
leaktrace follows a process tree in the kernel (eBPF) and counts how each process's address \
space moves: mmap, munmap, brk, mremap, mprotect and madvise, per region class (heap, anon, \
reserved, shared, file, exec, stack), to the byte. Needs root for eBPF; `leaktrace doctor` \
says what this machine supports.";

#[derive(Debug, Parser)]
#[command(name = "leaktrace", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Launch a command and trace it and every process it starts.
    ///
    /// The command is held before exec until every probe is attached, so nothing it does is
    /// missed. Under sudo it runs as the invoking user (SUDO_UID/SUDO_GID and that user's
    /// groups). Its stdout and stderr pass through unchanged; the report goes to stderr.
    #[command(arg_required_else_help = true)]
    Run {
        #[command(flatten)]
        trace: TraceArgs,
        /// Run the command as root even when leaktrace was started with sudo.
        #[arg(long)]
        as_root: bool,
        /// The command and its arguments (put them after `--`).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// Attach to a running process and trace it and its descendants.
    ///
    /// Ends on --duration, Ctrl-C/SIGTERM, or when the process exits; with --follow-name or
    /// --follow-cmdline, a worker that exits is followed to its next instance instead.
    Attach {
        /// The process to trace (its live descendants are traced too). With --follow-name or
        /// --follow-cmdline it may be left out: the one running process the rule matches.
        #[arg(long, value_name = "PID",
              required_unless_present_any = ["follow_name", "follow_cmdline"])]
        pid: Option<u32>,
        /// Follow the worker across restarts by its process name (/proc/PID/comm, e.g. `^node$`,
        /// `^bun$`): when it exits, wait for the next process whose name matches RE (a
        /// supervisor restarting it with a new pid), attach to it and go on in a new segment
        /// of the trace. The fits are of the latest segment; the report lists every one.
        #[arg(long, value_name = "RE", conflicts_with = "follow_cmdline")]
        follow_name: Option<String>,
        /// The same by command line (its arguments joined by spaces, e.g. `node .*worker\.js`).
        /// Of several matching processes, the topmost (not a child of another match) is the
        /// worker.
        #[arg(long, value_name = "RE")]
        follow_cmdline: Option<String>,
        #[command(flatten)]
        trace: TraceArgs,
    },
    /// Print the report of a saved trace (a JSON file written with -o).
    Report {
        /// The trace file.
        #[arg(value_name = "TRACE.json")]
        trace: PathBuf,
        /// As Markdown, to paste into an issue: the answers, and the full report folded.
        #[arg(long)]
        markdown: bool,
        /// Every table (cycles, phases, each process, address space, regions) rather than the
        /// short report that fits a screen.
        #[arg(long, conflicts_with = "markdown")]
        full: bool,
        /// Also write Chrome Trace Event Format JSON to FILE.
        #[arg(long, value_name = "FILE")]
        trace_events: Option<PathBuf>,
        /// Also write one self-contained HTML page with plots to FILE.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Compare two saved traces, before and after a fix: every series' rate side by side, and
    /// whether it is fixed, improved, unchanged, regressed or new growth.
    Diff {
        #[arg(value_name = "BEFORE.json")]
        before: PathBuf,
        #[arg(value_name = "AFTER.json")]
        after: PathBuf,
        /// Exit 3 when AFTER's tree (its owned PSS) grows faster than RATE (5MiB/day, 200KiB/cycle).
        #[arg(long, value_name = "RATE")]
        budget: Option<crate::analysis::Budget>,
    },
    /// Say what this machine supports and what is missing, with fixes. Exit 1 if something is.
    Doctor,
    /// Trace the built-in leaky worker (the `zoo` fixture, driving Chromium) and print the report.
    ///
    /// The worker is built by `cargo xtask demo`, which also installs Chromium if it is missing.
    Demo {
        /// The leak to show: none, worker-heap, worker-external, pages, contexts, in-page,
        /// accelerating, cleanup-only, sawtooth.
        #[arg(long, default_value = "pages")]
        leak: String,
        /// Cycles of the worker to trace.
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(2..))]
        cycles: u32,
        /// Where to leave leaktrace-demo.json and leaktrace-demo.html.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// leaktrace's own watchdog in `run` mode (see `session::watchdog`): not for users.
    #[command(name = session::watchdog::SUBCOMMAND, hide = true)]
    Watchdog,
}

#[derive(Debug, Args)]
struct TraceArgs {
    /// Also write Chrome Trace Event Format JSON to FILE (open it in Perfetto or chrome://tracing).
    /// Opened before the command starts, like -o.
    #[arg(long, value_name = "FILE")]
    trace_events: Option<PathBuf>,
    /// Write the trace as JSON (schema leaktrace/1) to FILE. Opened before the command starts
    /// (a path that cannot be written exits 2 at once), never through a symlink; if writing it
    /// fails at the end, the trace is saved in the temporary directory instead (path printed).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Also write the HTML report (as `report --html`) to FILE when the trace ends; with
    /// --report-dir, also a page beside each report written on the way. Opened before the
    /// command starts, like -o.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Write the trace so far as a report into DIR every --report-every and on SIGUSR1
    /// (`kill -USR1 PID`), as `leaktrace-PID-TIME-NNNNNN.json` (and `.html` with --html):
    /// written under a temporary name and renamed, so DIR only ever holds whole reports and a
    /// crash or kill -9 loses at most one period. DIR must exist.
    #[arg(long, value_name = "DIR")]
    report_dir: Option<PathBuf>,
    /// How often to write a report into --report-dir (e.g. 10m, 1h).
    #[arg(long, value_name = "D", value_parser = parse_duration, requires = "report_dir")]
    report_every: Option<Duration>,
    /// How many of the latest reports to keep in --report-dir; older ones leaktrace wrote are
    /// removed.
    #[arg(long, value_name = "N", default_value_t = 5, requires = "report_dir",
          value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    /// Trace until stopped (Ctrl-C, SIGTERM) or until the command or the attached process
    /// exits, for days if need be: leaktrace's memory stays flat (older cycles on disk, the fits
    /// on a bounded digest, exited processes folded per role). Refuses --duration and --cycles;
    /// pair it with --report-dir/--report-every and --metrics-addr to see the trace as it goes.
    #[arg(long, conflicts_with_all = ["duration", "cycles"])]
    continuous: bool,
    /// Stop after this long (e.g. 30s, 5m, 2h; a bare number is seconds).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Do not load eBPF programs: follow the process tree through /proc only (as without root).
    #[arg(long)]
    no_ebpf: bool,
    /// Time between /proc samples (smaps_rollup, status) of every traced process.
    #[arg(long, value_name = "D", value_parser = parse_interval, default_value = "1s")]
    interval: Duration,
    /// End a cycle at each line of the command's output (stdout or stderr) matching RE; with
    /// --cycle-log, at each matching line of the log.
    #[arg(long, value_name = "RE")]
    cycle_regex: Option<String>,
    /// Start a phase at each matching line, named by the group `phase`, else the first group.
    #[arg(long, value_name = "RE")]
    phase_regex: Option<String>,
    /// Take the worker's own figures from any line of its output (or --cycle-log) matching RE:
    /// each named group is a figure of the cycle under way, and may carry a unit (12.5MB,
    /// 3.2 MiB, 4096). E.g. for a line `mem heapUsed=45.6MB external=1.2MB`:
    /// 'heapUsed=(?P<heapUsed>\S+) external=(?P<external>\S+)'. heapUsed, external and
    /// arrayBuffers tell the worker's JS heap from its off-heap memory in the verdict.
    #[arg(long, value_name = "RE")]
    figures_regex: Option<String>,
    /// Follow this log's appends for markers (surviving rotation): lines matching the regexes,
    /// or without them lines `cycle` / `phase NAME`. For attach mode.
    #[arg(long, value_name = "FILE")]
    cycle_log: Option<PathBuf>,
    /// Read markers and figures from the output of this shell command, as from a log: where
    /// an attached worker's output goes (`journalctl -f -n0 -o cat -u scraper`, `docker logs
    /// -f --since 0s scraper`, `tail -n0 -F FILE`). Run as the invoking user, restarted a
    /// second after it exits, stopped with the trace.
    #[arg(long, value_name = "CMD")]
    cycle_cmd: Option<String>,
    /// End a cycle every D, when the worker gives no markers.
    #[arg(long, value_name = "D", value_parser = parse_interval)]
    cycle_every: Option<Duration>,
    /// Stop after N complete cycles.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    cycles: Option<u32>,
    /// Mark the first N cycles as warm-up.
    #[arg(long, value_name = "N", default_value_t = 0)]
    warmup: u32,
    /// Print an interim analysis on stderr every K complete cycles (0: never).
    #[arg(long, value_name = "K", default_value_t = 20)]
    analyze_every: u32,
    /// The browser's DevTools endpoint: `auto` finds it on the traced Chromium's command line
    /// (--remote-debugging-port, DevToolsActivePort), `off`, or a ws:// or http://host:port URL.
    /// leaktrace only reads: pages, contexts, URLs, JS heaps, Chromium's process list.
    #[arg(long, value_name = "auto|off|URL", default_value = "auto")]
    cdp: crate::collect::browser::CdpMode,
    /// Record page URLs without their query strings and fragments.
    #[arg(long)]
    redact_urls: bool,
    /// Find which renderer process holds each page. No DevTools call says; the way that works
    /// (a one-off timeline trace per page) starts Chromium's tracing service, a utility process
    /// that stays in the traced browser and grows: off unless asked for.
    #[arg(long)]
    page_renderers: bool,
    /// Ask Chromium for its own account of its memory (memory-infra: v8, blink_gc,
    /// partition_alloc, malloc, ... per process) at a few cycle ends, to say which allocator
    /// grew. The first dump starts Chromium's tracing service (a utility process of ~37 MB that
    /// stays) and each takes the browser 70-200 ms: off unless asked for.
    #[arg(long)]
    memory_dumps: bool,
    /// A Node worker's inspector (`node --inspect=HOST:PORT`, given as http://HOST:PORT or a
    /// ws:// URL): its Runtime.getHeapUsage at every cycle end becomes the worker figures
    /// inspect.heapUsed and inspect.heapTotal.
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    worker_inspect: Option<String>,
    /// Serve the trace's figures so far at http://HOST:PORT/metrics for Prometheus (OpenMetrics
    /// text): resident memory per role, growth per cycle and per day with the fit's trust, the
    /// verdict, the browser's counts, lost events, the worker's figures. A port alone listens on
    /// 127.0.0.1; listen elsewhere only where the network is trusted (see the README).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// Fail (exit 3) when the PSS the tree owns (anonymous and shared memory; file-backed pages
    /// are page cache) grows faster than RATE after warm-up: 5MiB/day, 200KiB/cycle, 1MB/hour.
    #[arg(long, value_name = "RATE")]
    budget: Option<crate::analysis::Budget>,
    /// Say more about what leaktrace is doing, on stderr (`-v`: what it traces with which
    /// options, where it wrote the trace).
    #[arg(short, long)]
    verbose: bool,
    /// Print no report and no warnings (errors still go to stderr).
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// Print the full report at the end (every table: cycles, phases, each process, address
    /// space, regions) rather than the short one that fits a screen.
    #[arg(long, conflicts_with = "quiet")]
    full: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string());
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (try 30s, 5m or 2h)"))
}

fn parse_endpoint(text: &str) -> Result<String, String> {
    match text.parse::<crate::collect::browser::CdpMode>() {
        Ok(crate::collect::browser::CdpMode::Url(url)) => Ok(url),
        _ => Err(format!("{text:?}: expected a ws:// or http:// URL")),
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < Duration::from_millis(10) {
        return Err("the interval must be at least 10ms".into());
    }
    Ok(interval)
}

/// Writes to stderr or stdout; a closed pipe is not an error.
/// Prints on stdout or stderr. Colour (ANSI styles in `text`) stays on a terminal and is
/// stripped when the stream is piped or `NO_COLOR` is set (anstream decides).
fn print(to_stderr: bool, text: &str) -> Result<()> {
    let result = if to_stderr {
        anstream::stderr().lock().write_all(text.as_bytes())
    } else {
        anstream::stdout().lock().write_all(text.as_bytes())
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot print the report"),
    }
}

/// A trace's report: the short one, as wide as the terminal allows (at most
/// [`report::summary::WIDTH`]), or the full one.
fn print_report(to_stderr: bool, trace: &Trace, full: bool) -> Result<()> {
    if full {
        return print(to_stderr, &report::render_full(trace));
    }
    let fd = if to_stderr {
        libc::STDERR_FILENO
    } else {
        libc::STDOUT_FILENO
    };
    print(to_stderr, &report::render(trace, terminal_width(fd)))
}

/// The columns of the terminal `fd` is, or [`report::summary::WIDTH`] when it is none.
fn terminal_width(fd: i32) -> usize {
    // SAFETY: winsize is plain integers, for which all zeroes is a value.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize, which `size` is; on a non-terminal it fails.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        report::summary::WIDTH
    }
}

/// A mistake in the command line found before anything runs: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// What `run` and `attach` write, opened before the trace starts.
struct Outputs {
    json: Option<ReportFile>,
    trace_events: Option<ReportFile>,
    html: Option<ReportFile>,
    metrics: Option<crate::render::metrics::Endpoint>,
}

/// Where a long trace's older cycles wait on disk: beside the JSON they will be copied into
/// (the temporary directory is often memory, on Debian 13 a tmpfs), else the temporary one.
fn spill_dir(output: Option<&Path>) -> PathBuf {
    output
        .and_then(Path::parent)
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }
        })
        .map_or_else(std::env::temp_dir, Path::to_path_buf)
}

/// Everything that can be checked before anything runs: the regexes, the log to follow, and
/// every output path (opened now, never through a symlink, and kept open).
fn check_before_start(args: &TraceArgs) -> Result<Outputs, UsageError> {
    LineRules::new(
        args.cycle_regex.as_deref(),
        args.phase_regex.as_deref(),
        args.figures_regex.as_deref(),
    )
    .map_err(|e| UsageError(with_causes(&e)))?;
    if let Some(log) = &args.cycle_log {
        std::fs::File::open(log)
            .map_err(|e| UsageError(format!("cannot read --cycle-log {}: {e}", log.display())))?;
    }
    if let Some(dir) = &args.report_dir {
        check_report_dir(dir)?;
    }
    let open = |path: &Option<PathBuf>, option: &str| {
        path.as_deref()
            .map(|path| {
                ReportFile::create(path)
                    .map_err(|e| UsageError(format!("{option}: {}", with_causes(&e))))
            })
            .transpose()
    };
    Ok(Outputs {
        json: open(&args.output, "--output")?,
        trace_events: open(&args.trace_events, "--trace-events")?,
        html: open(&args.html, "--html")?,
        metrics: args
            .metrics_addr
            .as_deref()
            .map(crate::render::metrics::Endpoint::bind)
            .transpose()
            .map_err(UsageError)?,
    })
}

/// The report directory: an existing directory (not a symlink to one) that leaktrace can
/// create files in, tried with a file made and removed at once.
fn check_report_dir(dir: &Path) -> Result<(), UsageError> {
    let shown = dir.display();
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(UsageError(format!(
                "--report-dir {shown} is a symlink: give the directory itself"
            )));
        }
        Ok(_) => {
            return Err(UsageError(format!(
                "--report-dir {shown} is not a directory"
            )));
        }
        Err(e) => return Err(UsageError(format!("--report-dir {shown}: {e}"))),
    }
    let probe = dir.join(format!(".leaktrace-probe-{}", std::process::id()));
    ReportFile::create_new(&probe)
        .map_err(|e| UsageError(format!("--report-dir {shown}: {}", with_causes(&e))))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes the trace into `file`; if that fails, says so and saves it in the temporary
/// directory instead. False when the file could not be written.
fn write_or_save(trace: &Trace, file: ReportFile) -> bool {
    let path = file.path().to_path_buf();
    let Err(error) = trace.write_into(file) else {
        tracing::debug!("wrote {}", path.display());
        return true;
    };
    eprintln!("leaktrace: error: {}", with_causes(&error));
    let fallback = std::env::temp_dir().join(format!(
        "leaktrace-{}-{}.json",
        std::process::id(),
        trace.started_at.replace(':', "")
    ));
    match ReportFile::create_new(&fallback).and_then(|file| trace.write_into(file)) {
        Ok(()) => eprintln!(
            "leaktrace: the trace is saved in {} instead",
            fallback.display()
        ),
        Err(e) => eprintln!(
            "leaktrace: error: the trace could not be saved in {} either: {}",
            fallback.display(),
            with_causes(&e)
        ),
    }
    false
}

/// `--follow-name` or `--follow-cmdline`, compiled (a bad regex is a usage error).
fn follow_rule(
    name: Option<&str>,
    cmdline: Option<&str>,
) -> Result<Option<crate::collect::target::Follow>, UsageError> {
    use crate::collect::target::Follow;
    let compile = |option: &str, re: &str| {
        regex::Regex::new(re).map_err(|e| UsageError(format!("{option}: {e}")))
    };
    Ok(match (name, cmdline) {
        (Some(re), _) => Some(Follow::Name(compile("--follow-name", re)?)),
        (None, Some(re)) => Some(Follow::Cmdline(compile("--follow-cmdline", re)?)),
        (None, None) => None,
    })
}

/// The pid of the one worker instance `rule` finds running now: none, or several, is a usage
/// error (the user says which with --pid).
fn the_one_instance(rule: &crate::collect::target::Follow) -> Result<u32> {
    let found = rule.instances()?;
    match found.as_slice() {
        [one] => Ok(one.pid),
        [] => Err(UsageError(format!("no running process {}", rule.describe())).into()),
        several => {
            let list: Vec<String> = several
                .iter()
                .map(|p| {
                    format!(
                        "{} ({})",
                        p.pid,
                        crate::collect::target::cmdline(p.pid).join(" ")
                    )
                })
                .collect();
            Err(UsageError(format!(
                "{} processes {}: {}; give the one to start from with --pid",
                several.len(),
                rule.describe(),
                list.join(", ")
            ))
            .into())
        }
    }
}

/// Traces, writes and prints; the exit code says whether the budget held.
fn run_trace(
    target: session::Target,
    args: &TraceArgs,
    as_root: bool,
    follow: Option<crate::collect::target::Follow>,
) -> Result<ExitCode> {
    let outputs = check_before_start(args)?;
    crate::diagnostics::init(Verbosity::of(args.quiet, args.verbose));
    if args.continuous && args.report_dir.is_none() && args.metrics_addr.is_none() && !args.quiet {
        eprintln!(
            "leaktrace: note: --continuous without --report-dir or --metrics-addr: nothing is \
             written until the trace ends (Ctrl-C); `kill -USR1` needs --report-dir"
        );
    }
    let announce = match target {
        session::Target::Run(_) => args.verbose,
        session::Target::Attach(_) => !args.quiet,
    };
    let options = session_options(args, as_root, announce, &outputs, follow);
    tracing::debug!("tracing {target:?} with {options:?}");
    let mut trace = session::trace(target, options)?;
    let warmup = (args.warmup > 0).then_some(args.warmup as usize);
    trace.analysis = crate::analysis::analyze(&trace, warmup, args.budget);
    let written = write_outputs(&trace, outputs);
    if !args.quiet {
        print_report(true, &trace, args.full)?;
    }
    Ok(if written {
        budget_exit_code(&trace)
    } else {
        ExitCode::from(exit::ERROR)
    })
}

/// What the session is told, from the command line.
fn session_options(
    args: &TraceArgs,
    as_root: bool,
    announce: bool,
    outputs: &Outputs,
    follow: Option<crate::collect::target::Follow>,
) -> session::Options {
    session::Options {
        duration: args.duration,
        ebpf: !args.no_ebpf,
        as_root,
        announce,
        progress: !args.quiet,
        interval: args.interval,
        markers: session::MarkerOptions {
            cycle_regex: args.cycle_regex.clone(),
            phase_regex: args.phase_regex.clone(),
            figures_regex: args.figures_regex.clone(),
            cycle_log: args.cycle_log.clone(),
            cycle_cmd: args.cycle_cmd.clone(),
            cycle_every: args.cycle_every,
            cycles: args.cycles,
            warmup: args.warmup,
            analyze_every: args.analyze_every,
        },
        cdp: args.cdp.clone(),
        redact_urls: args.redact_urls,
        page_renderers: args.page_renderers,
        memory_dumps: args.memory_dumps,
        worker_inspect: args.worker_inspect.clone(),
        spill_dir: spill_dir(args.output.as_deref()),
        metrics: outputs.metrics.clone(),
        reports: args.report_dir.clone().map(|dir| session::ReportSchedule {
            dir,
            every: args.report_every,
            keep: args.keep as usize,
            html: args.html.is_some(),
            warmup: (args.warmup > 0).then_some(args.warmup as usize),
            budget: args.budget,
        }),
        follow,
    }
}

/// Writes the trace's files. One output failing never stops the others, nor the report; false
/// when one failed.
fn write_outputs(trace: &Trace, outputs: Outputs) -> bool {
    let mut written = true;
    if let Some(file) = outputs.trace_events
        && let Err(error) = crate::render::trace_events::write_into(trace, file)
    {
        eprintln!("leaktrace: error: {}", with_causes(&error));
        written = false;
    }
    if let Some(file) = outputs.html
        && let Err(error) = file.write_all(crate::render::html::render_html(trace).as_bytes())
    {
        eprintln!("leaktrace: error: {}", with_causes(&error));
        written = false;
    }
    if let Some(file) = outputs.json {
        written &= write_or_save(trace, file);
    }
    written
}

/// The demo: the zoo worker next to this binary, traced over its cycles. Leaves the trace
/// and its HTML page in `dir` and says what to try next.
fn demo(leak: &str, cycles: u32, dir: &Path) -> Result<ExitCode> {
    let me = std::env::current_exe().context("cannot find leaktrace's own path")?;
    let worker = me.with_file_name("zoo");
    if !worker.is_file() {
        anyhow::bail!(
            "the demo worker {} is not built: run `cargo xtask demo`",
            worker.display()
        );
    }
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        anyhow::bail!("the demo drives Chromium, which is not installed: run `cargo xtask setup`");
    }
    // Opened first: a directory that cannot be written fails before the demo runs.
    let dir = std::fs::canonicalize(dir)
        .with_context(|| format!("cannot use {} for the demo's files", dir.display()))?;
    let (json_path, html_path) = (
        dir.join("leaktrace-demo.json"),
        dir.join("leaktrace-demo.html"),
    );
    let json = ReportFile::create(&json_path)?;
    let html = ReportFile::create(&html_path)?;
    crate::diagnostics::init(Verbosity::Normal);
    eprintln!(
        "leaktrace demo: {cycles} cycles of a scraper whose leak is `{leak}`; the report follows."
    );
    let command = vec![
        worker.display().to_string(),
        "--leak".into(),
        leak.into(),
        "--cycles".into(),
        cycles.to_string(),
    ];
    let mut trace = session::trace(session::Target::Run(command), session::Options::default())?;
    trace.analysis = crate::analysis::analyze(&trace, None, None);
    print_report(false, &trace, false)?;
    let mut written = write_or_save(&trace, json);
    if let Err(error) = html.write_all(crate::render::html::render_html(&trace).as_bytes()) {
        eprintln!("leaktrace: error: {}", with_causes(&error));
        written = false;
    }
    let (json, html) = (json_path.display(), html_path.display());
    print(
        false,
        &format!(
            "\nwritten: {json}\n         {html} (open it in a browser: the plots of every cycle)\n\
             try next:\n  leaktrace report --full {json}      (every table)\n  \
             leaktrace report --markdown {json}  (to paste into an issue)\n  \
             leaktrace demo --leak none --dir /tmp             (the same worker without its leak)\n  \
             leaktrace diff {json} /tmp/leaktrace-demo.json\n"
        ),
    )?;
    Ok(if written {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::ERROR)
    })
}

const EXIT_CODES: &str = "Exit codes: 0 ok; 1 error (also an output that could not be written, after the \
report was printed and the trace saved elsewhere); 2 usage error, before anything runs; 3 a \
budget was given and the growth exceeded it.";

/// The exit codes besides 0 (a contract, see ARCHITECTURE.md; `--help` lists them,
/// [`EXIT_CODES`]).
mod exit {
    /// An error: a trace or report that could not be made or written whole.
    pub const ERROR: u8 = 1;
    /// A command line that makes no sense.
    pub const USAGE: u8 = 2;
    /// A budget was given and the growth exceeded it.
    pub const BUDGET_EXCEEDED: u8 = 3;
}

/// [`exit::BUDGET_EXCEEDED`] when a budget was given and the growth exceeded it; 0 otherwise.
fn budget_exit_code(trace: &Trace) -> ExitCode {
    match &trace.analysis.budget {
        Some(budget) if !budget.pass => ExitCode::from(exit::BUDGET_EXCEEDED),
        _ => ExitCode::SUCCESS,
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run {
            trace,
            as_root,
            command,
        } => run_trace(session::Target::Run(command), &trace, as_root, None),
        Command::Attach {
            pid,
            follow_name,
            follow_cmdline,
            trace,
        } => attach(pid, follow_name, follow_cmdline, &trace),
        Command::Report {
            trace,
            markdown,
            full,
            trace_events,
            html,
        } => {
            let trace = Trace::read(&trace)?;
            report_saved(&trace, markdown, full, trace_events, html)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff {
            before,
            after,
            budget,
        } => diff_saved(&Trace::read(&before)?, &Trace::read(&after)?, budget),
        Command::Demo { leak, cycles, dir } => demo(&leak, cycles, &dir),
        Command::Watchdog => Ok(session::watchdog::watch()),
        Command::Doctor => {
            let checks = doctor::diagnose();
            print(false, &doctor::render(&checks))?;
            Ok(if checks.iter().any(|c| !c.ok) {
                ExitCode::from(exit::ERROR)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// `attach`: by pid, or the one process a follow rule matches.
fn attach(
    pid: Option<u32>,
    follow_name: Option<String>,
    follow_cmdline: Option<String>,
    trace: &TraceArgs,
) -> Result<ExitCode> {
    if trace.cycle_log.is_none() && (trace.cycle_regex.is_some() || trace.phase_regex.is_some()) {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "attach cannot read the process's output: --cycle-regex and --phase-regex apply to --cycle-log FILE",
            )
            .exit();
    }
    let follow = follow_rule(follow_name.as_deref(), follow_cmdline.as_deref())?;
    let pid = match (pid, &follow) {
        (Some(pid), _) => pid,
        (None, Some(rule)) => the_one_instance(rule)?,
        (None, None) => unreachable!("clap requires --pid without a follow rule"),
    };
    run_trace(session::Target::Attach(pid), trace, false, follow)
}

/// `report`: a saved trace, as text or Markdown, and as HTML or Trace Event Format if asked.
fn report_saved(
    trace: &Trace,
    markdown: bool,
    full: bool,
    trace_events: Option<PathBuf>,
    html: Option<PathBuf>,
) -> Result<()> {
    if let Some(path) = html {
        crate::trace::write_file(&path, crate::render::html::render_html(trace).as_bytes())?;
    }
    if let Some(path) = trace_events {
        crate::render::trace_events::write(trace, &path)?;
    }
    if markdown {
        print(false, &report::markdown(trace, &report::render_full(trace)))
    } else {
        print_report(false, trace, full)
    }
}

/// `diff`: two saved traces side by side; with a budget, exit 3 when the second exceeds it.
fn diff_saved(
    before: &Trace,
    after: &Trace,
    budget: Option<crate::analysis::Budget>,
) -> Result<ExitCode> {
    let comparison = diff::compare(before, after);
    print(false, &diff::render(before, after, &comparison))?;
    if let (Some(budget), Some(tree)) = (budget, after.analysis.tree()) {
        let check = budget.check(tree, after.analysis.cycle_s);
        print(
            false,
            &format!(
                "budget on AFTER: {}\n",
                if check.pass { "pass" } else { "EXCEEDED" }
            ),
        )?;
        if !check.pass {
            return Ok(ExitCode::from(exit::BUDGET_EXCEEDED));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The whole program: parse (usage errors exit 2), run, and map errors to exit 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("leaktrace: error: {error:#}");
            let usage = error.downcast_ref::<UsageError>().is_some();
            ExitCode::from(if usage { exit::USAGE } else { exit::ERROR })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn run_takes_the_command_after_double_dash() {
        let cli =
            Cli::try_parse_from(["leaktrace", "run", "-o", "t.json", "--", "ls", "-l"]).unwrap();
        let Command::Run { command, trace, .. } = cli.command else {
            panic!("not run")
        };
        assert_eq!(command, ["ls", "-l"]);
        assert_eq!(trace.output, Some(PathBuf::from("t.json")));
    }
}

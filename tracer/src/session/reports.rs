//! Reports written while the trace goes on (`--report-every`, SIGUSR1): the trace so far, as
//! the final one would read, into `--report-dir`, keeping the last `--keep`.
//!
//! Each is written into an unnamed file in the directory, synced, then given its name, so the
//! directory only ever holds whole reports, and nothing half-written is left behind: a
//! `kill -9` of leaktrace, or of the machine, loses at most what happened since the last one. Writing runs on a blocking thread, so the worker's markers
//! are never held up by it; while one is being written the next one due is skipped.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::task::JoinHandle;

use crate::{
    analysis::Budget,
    diagnostics::with_causes,
    trace::{ReportFile, Trace, publish},
};

/// When and where the reports go.
#[derive(Clone, Debug)]
pub struct ReportSchedule {
    pub dir: PathBuf,
    /// `--report-every`; without it, only SIGUSR1 writes one.
    pub every: Option<Duration>,
    /// How many of the latest to keep (at least 1).
    pub keep: usize,
    /// An HTML page beside each JSON (`--html`).
    pub html: bool,
    /// The analysis's settings, as for the final report.
    pub warmup: Option<usize>,
    pub budget: Option<Budget>,
}

type Written = Result<PathBuf, String>;

/// The reports written so far, and the one being written.
pub(super) struct Reports {
    schedule: ReportSchedule,
    /// The file names start with this: `leaktrace-PID-TIME`.
    stem: String,
    sequence: u64,
    written: VecDeque<PathBuf>,
    writing: Option<JoinHandle<Written>>,
}

impl Reports {
    pub(super) fn new(schedule: ReportSchedule, started_at: &str) -> Reports {
        Reports {
            schedule,
            stem: format!(
                "leaktrace-{}-{}",
                std::process::id(),
                started_at.replace([':', '-'], "")
            ),
            sequence: 0,
            written: VecDeque::new(),
            writing: None,
        }
    }

    pub(super) fn every(&self) -> Option<Duration> {
        self.schedule.every
    }

    /// Whether the last report is still being written.
    pub(super) fn busy(&self) -> bool {
        self.writing.as_ref().is_some_and(|w| !w.is_finished())
    }

    /// Writes `trace` (the trace so far) in the background. Returns what became of the one
    /// before, if it finished since.
    pub(super) async fn write(&mut self, mut trace: Trace) -> Option<Written> {
        let before = self.collect().await;
        self.sequence += 1;
        let path = self
            .schedule
            .dir
            .join(format!("{}-{:06}.json", self.stem, self.sequence));
        let html = self.schedule.html;
        // Those that make way for it, removed just before it is named: never more than `keep`.
        let keep = self.schedule.keep.max(1);
        let old: Vec<PathBuf> = std::iter::from_fn(|| {
            (self.written.len() >= keep).then(|| self.written.pop_front())?
        })
        .collect();
        let (warmup, budget) = (self.schedule.warmup, self.schedule.budget);
        // The analysis too, off the session's thread: on a long trace it takes a moment.
        self.writing = Some(tokio::task::spawn_blocking(move || {
            trace.analysis = crate::analysis::analyze(&trace, warmup, budget);
            write_atomically(&trace, &path, html, &old)
        }));
        before
    }

    /// Waits for the report being written, if any. Returns what became of it.
    pub(super) async fn collect(&mut self) -> Option<Written> {
        let written = match self.writing.take()?.await {
            Ok(written) => written,
            Err(e) => Err(format!("the report writer stopped: {e}")),
        };
        if let Ok(path) = &written {
            self.written.push_back(path.clone());
        }
        Some(written)
    }
}

/// Writes the trace (and its HTML page) into unnamed files and syncs them; then removes the
/// `old` reports it replaces and names the new ones, the JSON last, so that a JSON in the
/// directory always has its page.
fn write_atomically(trace: &Trace, path: &Path, html: bool, old: &[PathBuf]) -> Written {
    let unnamed = |path: &Path, write: &dyn Fn(ReportFile) -> Result<(), String>| {
        let (file, twin) = ReportFile::unnamed(path).map_err(|e| with_causes(&e))?;
        write(file).map(|()| (twin, path.to_path_buf()))
    };
    let mut files = Vec::new();
    if html {
        let page = crate::render::html::render_html(trace);
        files.push(unnamed(&path.with_extension("html"), &|file| {
            file.write_all(page.as_bytes()).map_err(|e| with_causes(&e))
        })?);
    }
    files.push(unnamed(path, &|file| {
        trace.write_into(file).map_err(|e| with_causes(&e))
    })?);
    for old in old {
        let _ = std::fs::remove_file(old);
        let _ = std::fs::remove_file(old.with_extension("html"));
    }
    for (file, path) in &files {
        publish(file, path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // The names themselves survive a crash once the directory is synced.
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(path.to_path_buf())
}

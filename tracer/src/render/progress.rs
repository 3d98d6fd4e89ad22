//! Live progress on stderr while tracing: cycle k of N, elapsed time, the tree's PSS now and its
//! growth per cycle so far. Drawn only on a terminal, never with `-q`; the command's output
//! passing through is written with the bar suspended, so it is never garbled.

use std::{io::Write, time::Duration};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::units::bytes;

#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    target_cycles: Option<u32>,
}

impl Progress {
    pub fn new(enabled: bool, target_cycles: Option<u32>) -> Progress {
        let bar = enabled.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("leaktrace {spinner} {msg}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            crate::diagnostics::around_bar(Some(bar.clone()));
            bar
        });
        Progress { bar, target_cycles }
    }

    /// Writes the command's output with the bar out of the way.
    pub fn pass(&self, to_stderr: bool, bytes: &[u8]) {
        let write = || {
            if to_stderr {
                crate::collect::markers::write_stream(&mut std::io::stderr().lock(), bytes);
            } else {
                crate::collect::markers::write_stream(&mut std::io::stdout().lock(), bytes);
            }
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    /// `owned`: the PSS the tree owns (growth is judged on it) at the complete cycles' ends.
    pub fn update(&self, elapsed: Duration, pss_now: u64, owned: &CycleEnds) {
        let Some(bar) = &self.bar else { return };
        let done = owned.count;
        let cycle = match self.target_cycles {
            Some(target) => format!("cycle {} of {target}", done + 1),
            None => format!("cycle {}", done + 1),
        };
        let growth = if done >= 2 {
            let per_cycle = (owned.last as i64 - owned.first as i64) / (done as i64 - 1);
            format!(", owned {}/cycle so far", bytes(per_cycle, true))
        } else {
            String::new()
        };
        bar.set_message(format!(
            "{cycle}, {:.0} s, tree PSS {}{growth}",
            elapsed.as_secs_f64(),
            bytes(pss_now as i64, false)
        ));
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            crate::diagnostics::around_bar(None);
            bar.finish_and_clear();
            let _ = std::io::stderr().flush();
        }
    }
}

/// A figure at the first and the latest cycle end, and how many cycles ended: what the progress
/// line reads, in constant memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct CycleEnds {
    count: usize,
    first: u64,
    last: u64,
}

impl CycleEnds {
    pub fn push(&mut self, value: u64) {
        if self.count == 0 {
            self.first = value;
        }
        self.last = value;
        self.count += 1;
    }
}

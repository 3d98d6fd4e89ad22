//! Live progress on stderr while tracing: cycle k of N, elapsed time, the tree's PSS now and its
//! growth per cycle so far. Drawn only on a terminal, never with `-q`; the command's output
//! passing through is written with the bar suspended, so it is never garbled.

use std::{io::Write, time::Duration};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::bytes;

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
            bar
        });
        Progress { bar, target_cycles }
    }

    /// Writes the command's output with the bar out of the way.
    pub fn pass(&self, to_stderr: bool, bytes: &[u8]) {
        let write = || {
            if to_stderr {
                crate::markers::write_stream(&mut std::io::stderr().lock(), bytes);
            } else {
                crate::markers::write_stream(&mut std::io::stdout().lock(), bytes);
            }
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    /// `owned_at_cycle_ends`: the PSS the tree owns (growth is judged on it) at the end of each
    /// complete cycle so far.
    pub fn update(&self, elapsed: Duration, pss_now: u64, owned_at_cycle_ends: &[u64]) {
        let Some(bar) = &self.bar else { return };
        let done = owned_at_cycle_ends.len();
        let cycle = match self.target_cycles {
            Some(target) => format!("cycle {} of {target}", done + 1),
            None => format!("cycle {}", done + 1),
        };
        let growth = match (owned_at_cycle_ends.first(), owned_at_cycle_ends.last()) {
            (Some(first), Some(last)) if done >= 2 => {
                let per_cycle = (*last as i64 - *first as i64) / (done as i64 - 1);
                format!(", owned {}/cycle so far", bytes(per_cycle, true))
            }
            _ => String::new(),
        };
        bar.set_message(format!(
            "{cycle}, {:.0} s, tree PSS {}{growth}",
            elapsed.as_secs_f64(),
            bytes(pss_now as i64, false)
        ));
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            let _ = std::io::stderr().flush();
        }
    }
}

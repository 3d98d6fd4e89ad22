//! Following a worker across restarts (`attach --follow-name` / `--follow-cmdline`): when the
//! attached process exits, the cycle under way is cut, and leaktrace waits for the next
//! instance the rule matches (a supervisor restarting it with a new pid), attaches to it and
//! its tree, and goes on in a new segment of the trace. The fits are of the latest segment:
//! a restart gives the worker's memory back, and a fit across instances would measure that.

use std::time::{Duration, Instant};

use super::{collectors::Collectors, cutting::Cutting, error::SessionError};
use crate::collect::{
    browser::BrowserReader,
    target::{self, Follow},
};

/// How often /proc is searched for the next instance while none runs: every process's
/// command line is read, so not every tick.
const SEARCH_EVERY: Duration = Duration::from_millis(250);

pub(super) struct Following {
    rule: Follow,
    /// When the last instance started (seconds since boot): the next one starts later.
    started: f64,
    /// While no instance runs: when the last was found gone, and when /proc was last searched.
    waiting: Option<Instant>,
}

impl Following {
    /// Following from the instance the trace attached to, its first segment.
    pub(super) fn new(rule: Follow, collectors: &Collectors, cutting: &mut Cutting) -> Following {
        let root = collectors.root_pid();
        cutting.start_instance(root, 0.0);
        Following {
            rule,
            started: target::proc_info(root).map_or(0.0, |p| p.start_time),
            waiting: None,
        }
    }

    /// At each tick with the root gone: ends its segment, then looks for the next instance
    /// and, once one runs, attaches to it.
    pub(super) fn on_root_gone(
        &mut self,
        collectors: &mut Collectors,
        cutting: &mut Cutting,
        browser: &mut BrowserReader,
    ) {
        let Some(searched) = self.waiting else {
            let (end_s, end, _) = collectors.snapshot();
            let pid = cutting.end_instance(end_s, end);
            tracing::info!(
                "the worker (pid {pid}) exited; waiting for the next process {}",
                self.rule.describe()
            );
            self.waiting = Some(Instant::now());
            return;
        };
        if searched.elapsed() < SEARCH_EVERY {
            return;
        }
        self.waiting = Some(Instant::now());
        if let Err(e) = self.attach_next(collectors, cutting, browser) {
            tracing::warn!("the next instance: {e}");
        }
    }

    fn attach_next(
        &mut self,
        collectors: &mut Collectors,
        cutting: &mut Cutting,
        browser: &mut BrowserReader,
    ) -> Result<(), SessionError> {
        // A process started after the last instance, and not one of its tree that outlived it.
        let traced = collectors.table().live_pids();
        let next = self
            .rule
            .instances()?
            .into_iter()
            .rev()
            .find(|p| p.start_time >= self.started && !traced.contains(&p.pid));
        let Some(next) = next else { return Ok(()) };
        if !collectors.follow_root(next.pid) {
            // Gone again before it could be tracked: the next search finds its successor.
            return Ok(());
        }
        let (now_s, start, _) = collectors.snapshot();
        cutting.start_segment(now_s, start);
        let instance = cutting.start_instance(next.pid, now_s);
        browser.start_over();
        self.started = next.start_time;
        self.waiting = None;
        tracing::info!(
            "following pid {} (instance {instance} of the worker)",
            next.pid
        );
        Ok(())
    }
}

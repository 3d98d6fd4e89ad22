//! Following a worker across restarts (`attach --follow-name` / `--follow-cmdline`): when the
//! attached process exits, the cycle under way is cut, and leaktrace waits for the next
//! instance the rule matches (a supervisor restarting it with a new pid), attaches to it and
//! its tree, and goes on in a new segment of the trace. The fits are of the latest segment:
//! a restart gives the worker's memory back, and a fit across instances would measure that.

use std::time::{Duration, Instant};

use super::{SessionError, collectors::Collectors, cutting::Cutting};
use crate::{
    collect::browser::BrowserReader,
    collect::target::{self, Follow},
    trace::Segment,
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
        let root = collectors.root_pid;
        cutting.segments.push(Segment {
            root_pid: root,
            command: target::cmdline(root),
            start_s: 0.0,
            end_s: None,
            first_cycle: 1,
        });
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
            cutting.timeline.end_segment(end_s, end);
            let segment = cutting
                .segments
                .last_mut()
                .expect("the first is made at start");
            segment.end_s = Some(end_s);
            let pid = segment.root_pid;
            let exits = cutting.segments.len() as u64;
            if let Some(metrics) = &cutting.metrics {
                metrics.update(|live| live.worker_exits = exits);
            }
            tracing::info!(
                "the worker (pid {pid}) exited; waiting for the next process {}",
                self.rule.describe()
            );
            self.waiting = Some(Instant::now());
            cutting.between_instances = true;
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
        let traced = collectors.table.live_pids();
        let next = self
            .rule
            .instances()?
            .into_iter()
            .rev()
            .find(|p| p.start_time >= self.started && !traced.contains(&p.pid));
        let Some(next) = next else { return Ok(()) };
        collectors.root_pid = next.pid;
        collectors.table.set_root(next.pid);
        if collectors.seed_tree().is_err() {
            // Gone again before it could be tracked: the next search finds its successor.
            return Ok(());
        }
        // A child forked while we were seeding: look once more.
        let _ = collectors.seed_tree();
        let (now_s, start, _) = collectors.snapshot();
        cutting.timeline.start_segment(now_s, start);
        browser.start_over();
        self.started = next.start_time;
        self.waiting = None;
        cutting.between_instances = false;
        cutting.segments.push(Segment {
            root_pid: next.pid,
            command: target::cmdline(next.pid),
            start_s: now_s,
            end_s: None,
            first_cycle: cutting.timeline.complete_cycles() as u32 + 1,
        });
        tracing::info!(
            "following pid {} (instance {} of the worker)",
            next.pid,
            cutting.segments.len()
        );
        Ok(())
    }
}

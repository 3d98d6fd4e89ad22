//! Leaving nothing behind: a command the session launched, and every descendant that outlives
//! it, gets SIGTERM, then SIGKILL after a grace period.

use std::process::ExitStatus;

use super::{KILL_GRACE, TICK, collectors::Collectors, status_code};
use crate::{collect::target, trace::EndReason};

/// SIGTERM to every traced process still alive, SIGKILL to those alive after the grace period.
pub(super) async fn stop_leftovers(collectors: &mut Collectors) {
    for next_signal in [libc::SIGTERM, libc::SIGKILL] {
        let leftovers = collectors.table().live();
        let signalled = leftovers
            .iter()
            .filter(|(pid, start)| target::signal_if_same(*pid, *start, next_signal))
            .count();
        if signalled == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + KILL_GRACE;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(TICK).await;
            collectors.follow();
            collectors.reap();
            if collectors
                .table()
                .live()
                .iter()
                .all(|(pid, _)| !target::is_alive(*pid))
            {
                return;
            }
        }
    }
}

/// Waits for every child leaktrace still has, so none is left a zombie: as the subreaper of the
/// command's tree it inherits every orphan (Chromium's processes when the worker dies), and
/// after leaktrace exits nothing may reap them (a container's init often does not). Called
/// once the command's own status is in, and its tree stopped.
pub(super) async fn reap_children() {
    let deadline = tokio::time::Instant::now() + KILL_GRACE;
    loop {
        // SAFETY: waitpid with a null status pointer; WNOHANG never blocks.
        let reaped = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if reaped > 0 {
            continue;
        }
        // -1: no child left (ECHILD); 0: children still running after the grace period.
        if reaped < 0 || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Stops a command the session launched. After Ctrl-C the terminal already sent it SIGINT, so
/// it first gets a grace period; otherwise SIGTERM at once. SIGKILL ends the escalation.
pub(super) async fn stop_command(
    pid: u32,
    status_rx: &mut tokio::sync::oneshot::Receiver<std::io::Result<ExitStatus>>,
    ended_by: EndReason,
) -> Option<i32> {
    let escalation: &[i32] = if ended_by == EndReason::Interrupted {
        &[libc::SIGTERM, libc::SIGKILL]
    } else {
        target::signal(pid, libc::SIGTERM);
        &[libc::SIGKILL]
    };
    for next_signal in escalation {
        if let Ok(waited) = tokio::time::timeout(KILL_GRACE, &mut *status_rx).await {
            return waited.ok()?.ok().map(status_code);
        }
        target::signal(pid, *next_signal);
    }
    status_rx.await.ok()?.ok().map(status_code)
}

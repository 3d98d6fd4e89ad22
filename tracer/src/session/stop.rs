//! Leaving nothing behind: a command the session launched, and every descendant that outlives
//! it, gets SIGTERM, then SIGKILL after a grace period.

use std::{process::ExitStatus, time::Duration};

use super::collectors::Collectors;
use crate::{collect::target, trace::EndReason};

/// How long a stopped command gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How often, while waiting for them, stopped processes are looked at.
const POLL: Duration = Duration::from_millis(50);

/// A command's exit status as a shell reports it: its code, or 128 + the signal that killed it.
pub(super) fn status_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

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
            tokio::time::sleep(POLL).await;
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
        tokio::time::sleep(POLL).await;
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

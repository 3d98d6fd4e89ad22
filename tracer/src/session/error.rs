//! Why a session could not start, or stopped early.

use thiserror::Error;

use crate::collect::{kernel::KernelError, markers::MarkerError, target::TargetError};

#[derive(Debug, Error)]
pub enum SessionError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Markers(#[from] MarkerError),
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("cannot wait for the command")]
    Wait(#[source] std::io::Error),
    #[error("cannot start leaktrace's watchdog (/proc/self/exe)")]
    Watchdog(#[source] std::io::Error),
    #[error("cannot serve --metrics-addr")]
    Metrics(#[source] std::io::Error),
}

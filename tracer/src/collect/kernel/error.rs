//! What can go wrong on the kernel side, each with what to do about it.

use aya::{maps::MapError, programs::ProgramError};
use thiserror::Error;

use super::{btf::BtfError, hooks::Hook, tracefs::TracefsError};

#[derive(Debug, Error)]
pub enum KernelError {
    #[error(
        "eBPF needs root (CAP_BPF and CAP_PERFMON): run leaktrace with sudo, or pass --no-ebpf"
    )]
    NotPrivileged,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(
        "this kernel cannot follow a process tree with eBPF ({0}); `leaktrace doctor` says what is missing, --no-ebpf traces from /proc"
    )]
    Unsupported(String),
    #[error(
        "this leaktrace was built without its eBPF programs (the BPF toolchain was missing): run `cargo xtask setup`, rebuild, or pass --no-ebpf"
    )]
    NotBuilt,
    #[error("{var}={value} is not valid: {wants}")]
    BadEnv {
        var: &'static str,
        value: String,
        wants: &'static str,
    },
    #[error("cannot load the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("cannot attach {} ({})", .hook.program, .hook.description)]
    Attach {
        hook: &'static Hook,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map {name} is missing or of the wrong type")]
    MissingMap {
        name: &'static str,
        #[source]
        source: Option<MapError>,
    },
    #[error("eBPF map {name}: {action} failed")]
    MapOperation {
        name: &'static str,
        action: &'static str,
        #[source]
        source: MapError,
    },
}

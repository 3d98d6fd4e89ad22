//! `leaktrace doctor`: what this machine supports and what is missing, in plain words, each
//! problem with its fix. Every hook is really loaded and attached, then detached.

use std::fmt::Write as _;

use crate::kernel::{self, AttachPoint, HOOKS, Kernel, btf::VMLINUX_BTF, tracefs};

/// One line of the diagnosis.
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do when not ok.
    pub fix: Option<String>,
}

fn check(name: impl Into<String>, result: Result<String, (String, String)>) -> Check {
    match result {
        Ok(detail) => Check {
            name: name.into(),
            ok: true,
            detail,
            fix: None,
        },
        Err((detail, fix)) => Check {
            name: name.into(),
            ok: false,
            detail,
            fix: Some(fix),
        },
    }
}

pub fn diagnose() -> Vec<Check> {
    let mut checks = Vec::new();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    checks.push(check("kernel", Ok(format!("Linux {}", release.trim()))));
    checks.push(check(
        "architecture",
        if cfg!(target_arch = "x86_64") {
            Ok("x86_64".into())
        } else {
            Err((
                "not x86_64".into(),
                "leaktrace reads x86_64 syscall registers; use an x86_64 machine".into(),
            ))
        },
    ));
    let root = kernel::is_privileged();
    checks.push(check(
        "privileges",
        if root {
            Ok("running as root".into())
        } else {
            Err((
                "not root: eBPF programs cannot be loaded".into(),
                "run `sudo leaktrace ...`".into(),
            ))
        },
    ));
    checks.push(check(
        "BTF",
        if std::path::Path::new(VMLINUX_BTF).exists() {
            Ok(format!("{VMLINUX_BTF} present"))
        } else {
            Err((
                format!("{VMLINUX_BTF} missing"),
                "use a kernel built with CONFIG_DEBUG_INFO_BTF=y".into(),
            ))
        },
    ));
    let tracefs = tracefs::mount_point();
    checks.push(check(
        "tracefs",
        match &tracefs {
            Ok(path) => Ok(format!("mounted at {}", path.display())),
            Err(e) => Err((
                e.to_string(),
                "mount -t tracefs nodev /sys/kernel/tracing".into(),
            )),
        },
    ));
    if root {
        checks.push(check(
            "kernel offsets",
            kernel::kernel_config(std::process::id())
                .map(|_| {
                    "task_struct, mm_struct, vm_area_struct, pt_regs and tracepoint fields found"
                        .into()
                })
                .map_err(|e| {
                    (
                        format!("{e:#}"),
                        "this kernel's BTF lacks a field leaktrace reads; please report it".into(),
                    )
                }),
        ));
        let loaded = Kernel::load();
        for hook in &HOOKS {
            let result = match &loaded {
                Ok(_) => Ok("loads and attaches".to_string()),
                Err(kernel::KernelError::Attach { hook: failed, source }) if std::ptr::eq(*failed, hook) => {
                    Err((format!("{source:#}"), "see the verifier message above; this kernel may lack a helper (bpf_find_vma needs 5.17)".into()))
                }
                Err(e) => Err((format!("not attached: {e:#}"), "fix the first failing check".into())),
            };
            checks.push(check(
                format!("hook {}", hook_name(hook)),
                result.map(|ok| format!("{ok}: {}", hook.description)),
            ));
        }
    } else if let Ok(path) = &tracefs {
        // Without root we can still say whether the tracepoints exist.
        for hook in &HOOKS {
            let (category, event) = match hook.attach {
                AttachPoint::Btf(name) => ("raw_syscalls", name),
                AttachPoint::Tracepoint(category, event) => (category, event),
            };
            checks.push(check(
                format!("hook {}", hook_name(hook)),
                if tracefs::has_event(path, category, event) {
                    Ok(format!(
                        "tracepoint exists (not loaded: not root): {}",
                        hook.description
                    ))
                } else {
                    Err((
                        format!("tracepoint {category}:{event} missing"),
                        "use a kernel with CONFIG_FTRACE_SYSCALLS and tracepoints".into(),
                    ))
                },
            ));
        }
    }
    checks
}

fn hook_name(hook: &kernel::Hook) -> String {
    match hook.attach {
        AttachPoint::Btf(name) => format!("tp_btf/{name}"),
        AttachPoint::Tracepoint(category, event) => format!("{category}:{event}"),
    }
}

pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for check in checks {
        let mark = if check.ok { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "{mark} {:<32} {}", check.name, check.detail);
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "     {:<32} fix: {fix}", "");
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        let _ = writeln!(out, "\neverything leaktrace needs is here");
    } else {
        let _ = writeln!(
            out,
            "\n{failed} problem(s): leaktrace cannot trace with eBPF until they are fixed (--no-ebpf still works)"
        );
    }
    out
}

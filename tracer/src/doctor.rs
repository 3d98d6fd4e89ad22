//! `leaktrace doctor`: what this machine supports and what is missing, in plain words, each
//! problem with its fix. Every hook is really loaded and attached, then detached.

use std::fmt::Write as _;

use crate::collect::kernel::{
    self, AttachPoint, Features, Kernel, KernelError,
    btf::VMLINUX_BTF,
    features::{HookSupport, Support},
    tracefs,
};

/// One line of the diagnosis.
pub struct Check {
    pub name: String,
    /// False only for what stops leaktrace from tracing with eBPF (doctor then exits 1).
    pub ok: bool,
    /// Works, with less than on the newest kernels (a hook this kernel cannot attach).
    pub degraded: bool,
    pub detail: String,
    /// Lines under the check: what it needs and what this kernel has.
    pub notes: Vec<String>,
    /// What to do when not ok, or what leaktrace does instead when degraded.
    pub fix: Option<String>,
}

fn check(name: impl Into<String>, result: Result<String, (String, String)>) -> Check {
    match result {
        Ok(detail) => Check {
            name: name.into(),
            ok: true,
            degraded: false,
            detail,
            notes: Vec::new(),
            fix: None,
        },
        Err((detail, fix)) => Check {
            name: name.into(),
            ok: false,
            degraded: false,
            detail,
            notes: Vec::new(),
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
        hooks(&mut checks);
    }
    checks
}

/// Per hook: what it needs, what this kernel has, and whether it really loads and attaches
/// (everything is loaded, attached and detached again, so the verifier has its say).
fn hooks(checks: &mut Vec<Check>) {
    let features = match Features::probe(std::process::id()) {
        Ok(features) => features,
        Err(e) => {
            checks.push(check(
                "kernel features",
                Err((
                    format!("{e:#}"),
                    "leaktrace needs the kernel's BTF and tracefs; --no-ebpf works without".into(),
                )),
            ));
            return;
        }
    };
    let loaded = Kernel::load();
    for support in &features.hooks {
        let hook = support.hook;
        let mut result = match (&loaded, support.attaches()) {
            (_, false) if support.essential() => check(
                "",
                Err((
                    format!(
                        "cannot attach: this kernel lacks {}",
                        support.missing().join("; ")
                    ),
                    support.without().into(),
                )),
            ),
            (_, false) => Check {
                degraded: true,
                fix: Some(format!("instead: {}", support.without())),
                ..check(
                    "",
                    Ok(format!(
                        "not attached: this kernel lacks {}",
                        support.missing().join("; ")
                    )),
                )
            },
            (Ok(_), true) => check("", Ok(format!("loads and attaches: {}", hook.description))),
            (
                Err(KernelError::Attach {
                    hook: failed,
                    source,
                }),
                true,
            ) if std::ptr::eq(*failed, hook) => check(
                "",
                Err((
                    verifier_excerpt(&format!("{source:#}")),
                    "the verifier refused it on this kernel; please report this output".into(),
                )),
            ),
            (Err(e), true) => check(
                "",
                Err((
                    format!("not attached: {e:#}"),
                    "fix the failing check above".into(),
                )),
            ),
        };
        result.name = format!("hook {}", hook_name(hook));
        result.notes = needs(support);
        checks.push(result);
    }
}

/// A refused load's message: its first lines and the end of the verifier's log, where the
/// reason is (the whole log runs to hundreds of lines).
fn verifier_excerpt(message: &str) -> String {
    const HEAD: usize = 2;
    const TAIL: usize = 12;
    let lines: Vec<&str> = message.lines().collect();
    if lines.len() <= HEAD + TAIL + 1 {
        return message.to_string();
    }
    format!(
        "{}\n[... {} lines of the verifier's log ...]\n{}",
        lines[..HEAD].join("\n"),
        lines.len() - HEAD - TAIL,
        lines[lines.len() - TAIL..].join("\n")
    )
}

/// `needs <what>: <found>`, and the fallback in use where there is one.
fn needs(support: &HookSupport) -> Vec<String> {
    support
        .needs
        .iter()
        .map(|need| match &need.support {
            Support::Native => format!("needs {}: {}", need.what, need.found),
            Support::Fallback(instead) => {
                format!("needs {}: {}; instead {instead}", need.what, need.found)
            }
            Support::Missing => format!("needs {}: MISSING, {}", need.what, need.found),
        })
        .collect()
}

fn hook_name(hook: &kernel::Hook) -> String {
    match hook.attach {
        AttachPoint::Btf(name) => format!("tp_btf/{name}"),
        AttachPoint::Tracepoint(category, event) => format!("{category}:{event}"),
        AttachPoint::Syscalls(prefix) => format!("syscalls:{prefix}_*"),
    }
}

pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for check in checks {
        let mark = match (check.ok, check.degraded) {
            (false, _) => "FAIL",
            (true, true) => "off ",
            (true, false) => "ok  ",
        };
        let _ = writeln!(out, "{mark} {:<32} {}", check.name, check.detail);
        for note in &check.notes {
            let _ = writeln!(out, "       {note}");
        }
        match &check.fix {
            Some(fix) if check.degraded => {
                let _ = writeln!(out, "       {fix}");
            }
            Some(fix) => {
                let _ = writeln!(out, "     {:<32} fix: {fix}", "");
            }
            None => {}
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    let degraded = checks.iter().filter(|c| c.degraded).count();
    if failed == 0 && degraded > 0 {
        let _ = writeln!(
            out,
            "\nleaktrace traces with eBPF here, without the {degraded} hook(s) marked off (see what replaces them)"
        );
    } else if failed == 0 {
        let _ = writeln!(out, "\neverything leaktrace needs is here");
    } else {
        let _ = writeln!(
            out,
            "\n{failed} problem(s): leaktrace cannot trace with eBPF until they are fixed (--no-ebpf still works)"
        );
    }
    out
}

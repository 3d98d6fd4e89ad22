//! What this kernel offers the eBPF programs, probed before anything is loaded.
//!
//! Kernels differ in exactly the things the programs touch: struct layouts (read from BTF, as
//! always), tracepoint record fields (tracefs), which helpers exist, and which tracepoints can be
//! attached as tp_btf. Each hook lists what it needs as a [`Need`]; a need is met natively, met
//! by a fallback the kernel offers, or not met, and then the hook stays detached and leaktrace
//! says what it does instead. `leaktrace doctor` prints this table; [`super::Kernel::load`]
//! follows it. Measured on Debian's kernels (see README, "Kernels"):
//!
//! | need                              | 5.10 | 6.1 | 6.12 | 6.16+ |
//! |-----------------------------------|------|-----|------|-------|
//! | `sched_process_exit.group_dead`   | no: `task->signal->live` instead | no | no | yes |
//! | `rss_stat` counters               | `atomic_long_t` | `atomic_long_t` | `percpu_counter` | same |
//! | `bpf_find_vma`, `bpf_loop` (5.17) | no: `mm_rb` walk instead | yes | yes | yes |

use tracer_common::{KernelConfig, RSS_COUNTERS, syscall_record};

/// Comma-separated features to treat as missing, so an older kernel's fallbacks can be tried
/// (and tested) on a new one: `bpf_find_vma`, `bpf_loop`, `mm_rb`, `group_dead`.
pub const PRETEND_MISSING_ENV: &str = "LEAKTRACE_PRETEND_MISSING";

use super::{
    btf::{Btf, BtfError},
    error::KernelError,
    hooks::{AttachPoint, HOOKS, Hook, MEMORY_SYSCALLS},
    tracefs,
};

/// How one need of a hook is met on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    /// As the programs were written for.
    Native,
    /// The kernel lacks the first choice; this replaces it without losing anything.
    Fallback(String),
    /// Not available: the hook stays detached.
    Missing,
}

/// One thing a hook needs, and what this kernel has.
#[derive(Clone, Debug)]
pub struct Need {
    pub what: &'static str,
    /// What was found (or, when missing, what is not there).
    pub found: String,
    pub support: Support,
}

/// A hook and its needs on this kernel.
#[derive(Debug)]
pub struct HookSupport {
    pub hook: &'static Hook,
    /// The program to load: the hook's own, or its fallback program when a need takes it.
    pub program: &'static str,
    pub needs: Vec<Need>,
}

impl HookSupport {
    pub fn attaches(&self) -> bool {
        self.needs.iter().all(|n| n.support != Support::Missing)
    }

    /// What a detached hook costs the trace, in plain words.
    pub fn without(&self) -> &'static str {
        match self.hook.program {
            "syscall_enter" | "syscall_exit" => {
                "address-space flows are not counted (the trace says so); processes, resident \
                 memory and /proc samples are traced as usual"
            }
            "rss_stat" => "resident memory comes from the /proc samples instead of the kernel",
            _ => "the process tree cannot be followed in the kernel: use --no-ebpf",
        }
    }

    /// What is missing, in plain words.
    pub fn missing(&self) -> Vec<&'static str> {
        self.needs
            .iter()
            .filter(|n| n.support == Support::Missing)
            .map(|n| n.what)
            .collect()
    }

    /// Hooks leaktrace cannot trace with eBPF without.
    pub fn essential(&self) -> bool {
        !matches!(
            self.hook.program,
            "syscall_enter" | "syscall_exit" | "rss_stat"
        )
    }
}

/// The probe's result: the programs' configuration, and what attaches.
pub struct Features {
    pub config: KernelConfig,
    /// Which counter index holds which kind of resident memory; `None` without `rss_stat`.
    pub rss: Option<RssIndices>,
    pub hooks: Vec<HookSupport>,
}

impl Features {
    /// Probes BTF and tracefs; fails only when neither can be read at all.
    pub fn probe(own_tgid: u32) -> Result<Features, KernelError> {
        let btf = Btf::from_sys_fs()?;
        let tracefs = tracefs::mount_point()?;
        let pretend = std::env::var(PRETEND_MISSING_ENV).unwrap_or_default();
        let mut probe = Probe {
            btf: &btf,
            tracefs: &tracefs,
            pretend_missing: pretend.split(',').map(str::trim).collect(),
            config: KernelConfig {
                own_tgid,
                // With vm.overcommit_memory=2 the kernel ignores MAP_NORESERVE.
                noreserve_honoured: u32::from(
                    std::fs::read_to_string("/proc/sys/vm/overcommit_memory")
                        .map_or(true, |v| v.trim() != "2"),
                ),
                ..KernelConfig::default()
            },
        };
        let hooks: Vec<HookSupport> = HOOKS
            .iter()
            .map(|hook| {
                let needs = probe.needs_of(hook);
                let fallback = needs
                    .iter()
                    .any(|n| matches!(n.support, Support::Fallback(_)));
                HookSupport {
                    hook,
                    program: hook
                        .fallback_program
                        .filter(|_| fallback)
                        .unwrap_or(hook.program),
                    needs,
                }
            })
            .collect();
        let rss_attaches = hooks
            .iter()
            .any(|h| h.hook.program == "rss_stat" && h.attaches());
        let rss = if rss_attaches {
            RssIndices::from_btf(&btf).ok()
        } else {
            None
        };
        Ok(Features {
            config: probe.config,
            rss,
            hooks,
        })
    }

    pub fn attaches(&self, hook: &Hook) -> bool {
        self.hooks
            .iter()
            .any(|h| std::ptr::eq(h.hook, hook) && h.attaches())
    }

    /// Whether the syscall hooks attach, so address-space flows are counted.
    pub fn flows(&self) -> bool {
        self.hooks
            .iter()
            .filter(|h| matches!(h.hook.program, "syscall_enter" | "syscall_exit"))
            .all(HookSupport::attaches)
    }

    /// One sentence per detached hook, for the trace's warnings.
    pub fn losses(&self) -> Vec<String> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for hook in self.hooks.iter().filter(|h| !h.attaches()) {
            let without = hook.without();
            if seen.contains(&without) {
                continue;
            }
            seen.push(without);
            out.push(format!(
                "this kernel lacks {}: {without}",
                hook.missing().join("; ")
            ));
        }
        out
    }
}

/// Which of the kernel's counters holds which kind of resident memory.
#[derive(Clone, Copy, Debug)]
pub struct RssIndices {
    pub anon: usize,
    pub file: usize,
    pub shmem: usize,
    pub swap: usize,
}

impl RssIndices {
    fn from_btf(btf: &Btf) -> Result<RssIndices, BtfError> {
        let index = |name: &str| {
            btf.enum_value(name)
                .map(|v| (v as usize).min(RSS_COUNTERS - 1))
        };
        Ok(RssIndices {
            anon: index("MM_ANONPAGES")?,
            file: index("MM_FILEPAGES")?,
            shmem: index("MM_SHMEMPAGES")?,
            swap: index("MM_SWAPENTS")?,
        })
    }
}

/// Probing state: the sources, and the configuration filled in as needs are met.
struct Probe<'a> {
    btf: &'a Btf,
    tracefs: &'a std::path::Path,
    /// From [`PRETEND_MISSING_ENV`].
    pretend_missing: Vec<&'a str>,
    config: KernelConfig,
}

/// A need that is met natively or missing.
fn need(what: &'static str, found: Result<String, String>) -> Need {
    match found {
        Ok(found) => Need {
            what,
            found,
            support: Support::Native,
        },
        Err(found) => Need {
            what,
            found,
            support: Support::Missing,
        },
    }
}

impl Probe<'_> {
    fn needs_of(&mut self, hook: &Hook) -> Vec<Need> {
        let mut needs = vec![self.attach_point(hook)];
        match hook.program {
            "syscall_enter" | "syscall_exit" => {
                needs.push(self.syscall_fields());
                needs.push(self.vma_lookup());
            }
            "task_newtask" => needs.push(self.fields(
                "task_struct fields",
                &[("task_struct", "pid"), ("task_struct", "mm")],
                |c, o| (c.task_pid, c.task_mm) = (o[0], o[1]),
            )),
            "sched_process_exit" => {
                needs.push(self.fields(
                    "task_struct.exit_code",
                    &[("task_struct", "exit_code")],
                    |c, o| c.task_exit_code = o[0],
                ));
                needs.push(self.group_dead());
            }
            "rss_stat" => {
                needs.push(self.fields(
                    "mm_struct.owner (CONFIG_MEMCG)",
                    &[("mm_struct", "owner"), ("task_struct", "tgid")],
                    |c, o| (c.mm_owner, c.task_tgid) = (o[0], o[1]),
                ));
                needs.push(self.rss_counters());
            }
            _ => {}
        }
        needs
    }

    /// tp_btf needs the tracepoint's BTF prototype; a classic tracepoint its tracefs directory.
    fn attach_point(&self, hook: &Hook) -> Need {
        match hook.attach {
            AttachPoint::Btf(name) => {
                let typedef = format!("btf_trace_{name}");
                need(
                    "tp_btf attach point",
                    if self.btf.has_typedef(&typedef) {
                        Ok(format!("{typedef} in BTF"))
                    } else {
                        Err(format!("no {typedef} in BTF"))
                    },
                )
            }
            AttachPoint::Syscalls(prefix) => self.syscall_records(prefix),
            AttachPoint::Tracepoint(category, event) => need(
                "tracepoint",
                if tracefs::has_event(self.tracefs, category, event) {
                    Ok(format!("{category}:{event}"))
                } else {
                    Err(format!("no {category}:{event} in tracefs"))
                },
            ),
        }
    }

    fn pretends_missing(&self, feature: &str) -> bool {
        self.pretend_missing.contains(&feature)
    }

    /// Every memory syscall's `syscalls:<prefix>_<name>` tracepoint (CONFIG_FTRACE_SYSCALLS),
    /// with the record layout the programs read at fixed offsets: the syscall number at 8, then
    /// the arguments from 16 (entry) or the return value at 16 (exit).
    fn syscall_records(&self, prefix: &str) -> Need {
        const WHAT: &str = "the memory syscalls' tracepoints (CONFIG_FTRACE_SYSCALLS)";
        for name in MEMORY_SYSCALLS {
            let event = format!("{prefix}_{name}");
            let Ok(fields) = tracefs::fields(self.tracefs, "syscalls", &event) else {
                return need(WHAT, Err(format!("no syscalls:{event} in tracefs")));
            };
            let after_nr: Vec<u32> = fields
                .iter()
                .skip_while(|(field, _)| field != "__syscall_nr")
                .map(|(_, offset)| *offset)
                .collect();
            let expected = (0..after_nr.len() - 1).map(|i| (syscall_record::ARGS + 8 * i) as u32);
            let layout_ok = after_nr.first() == Some(&(syscall_record::NR as u32))
                && after_nr.len() >= 2
                && after_nr[1..].iter().copied().eq(expected);
            if !layout_ok {
                return need(
                    WHAT,
                    Err(format!(
                        "syscalls:{event} has an unexpected record layout: {fields:?}"
                    )),
                );
            }
        }
        need(
            WHAT,
            Ok(format!(
                "syscalls:{prefix}_{{{}}}, records as expected",
                MEMORY_SYSCALLS.join(",")
            )),
        )
    }

    /// A helper exists when the kernel's `enum bpf_func_id` names it (`BPF_FUNC_<name>`).
    fn has_helper(&self, name: &str) -> bool {
        !self.pretends_missing(&format!("bpf_{name}"))
            && self.btf.enum_value(&format!("BPF_FUNC_{name}")).is_ok()
    }

    /// How the syscall hooks find the VMAs a range covers: `bpf_find_vma` in `bpf_loop`
    /// (5.17+), or else, while the mm still has them (before 6.1), `mm_rb` and `vm_next`.
    fn vma_lookup(&mut self) -> Need {
        const WHAT: &str =
            "a VMA lookup: bpf_find_vma and bpf_loop (Linux 5.17), or mm_rb (before 6.1)";
        let missing: Vec<&str> = ["find_vma", "loop", "task_pt_regs"]
            .into_iter()
            .filter(|name| !self.has_helper(name))
            .collect();
        if missing.is_empty() {
            // The arguments of mmap and mremap are read at return from the task's registers.
            let regs = self.fields(
                WHAT,
                &[
                    ("pt_regs", "di"),
                    ("pt_regs", "si"),
                    ("pt_regs", "dx"),
                    ("pt_regs", "r10"),
                ],
                |c, o| c.regs_args.copy_from_slice(o),
            );
            if regs.support == Support::Native {
                return need(
                    WHAT,
                    Ok("BPF_FUNC_find_vma, BPF_FUNC_loop, BPF_FUNC_task_pt_regs".into()),
                );
            }
        }
        let helpers = missing
            .iter()
            .map(|name| format!("no BPF_FUNC_{name}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rbtree = self.fields(
            WHAT,
            &[
                ("mm_struct", "mm_rb"),
                ("vm_area_struct", "vm_rb"),
                ("vm_area_struct", "vm_next"),
                ("rb_node", "rb_left"),
                ("rb_node", "rb_right"),
            ],
            |c, o| {
                (c.mm_rb, c.vma_rb, c.vma_next, c.rb_left, c.rb_right) =
                    (o[0], o[1], o[2], o[3], o[4])
            },
        );
        if rbtree.support == Support::Native && !self.pretends_missing("mm_rb") {
            return Need {
                what: WHAT,
                found: helpers,
                support: Support::Fallback(
                    "walks mm->mm_rb and vm_next with probe reads, up to 32 VMAs per call and \
                     without the mm's lock (a range another thread changes at that very moment \
                     can be misattributed; munmap counts it in vma_unattributed)"
                        .into(),
                ),
            };
        }
        need(
            WHAT,
            Err(format!("{helpers}, and no mm_struct.mm_rb (6.1 and later)")),
        )
    }

    /// Looks up `fields`; when all exist, `store` puts their offsets into the configuration.
    fn fields(
        &mut self,
        what: &'static str,
        fields: &[(&str, &str)],
        store: impl FnOnce(&mut KernelConfig, &[u32]),
    ) -> Need {
        let mut offsets = Vec::with_capacity(fields.len());
        let mut missing = Vec::new();
        for (strukt, field) in fields {
            match self.btf.field_offset(strukt, field) {
                Ok(offset) => offsets.push(offset),
                Err(_) => missing.push(format!("{strukt}.{field}")),
            }
        }
        if !missing.is_empty() {
            return need(what, Err(format!("BTF lacks {}", missing.join(", "))));
        }
        store(&mut self.config, &offsets);
        need(what, Ok("in BTF".into()))
    }

    /// The syscall hooks read the VMAs and the brk heap.
    fn syscall_fields(&mut self) -> Need {
        const FIELDS: [(&str, &str); 11] = [
            ("task_struct", "mm"),
            ("mm_struct", "start_brk"),
            ("mm_struct", "brk"),
            ("mm_struct", "total_vm"),
            ("vm_area_struct", "vm_start"),
            ("vm_area_struct", "vm_end"),
            ("vm_area_struct", "vm_flags"),
            ("vm_area_struct", "vm_file"),
            ("file", "f_inode"),
            ("inode", "i_sb"),
            ("super_block", "s_magic"),
        ];
        self.fields("mm, VMA and file fields", &FIELDS, |c, o| {
            c.task_mm = o[0];
            (c.mm_start_brk, c.mm_brk, c.mm_total_vm) = (o[1], o[2], o[3]);
            (c.vma_start, c.vma_end, c.vma_flags, c.vma_file) = (o[4], o[5], o[6], o[7]);
            (c.file_inode, c.inode_sb, c.sb_magic) = (o[8], o[9], o[10]);
        })
    }

    /// `sched_process_exit` fires per thread; the process is gone with its last thread. Since
    /// 6.16 the record says so (`group_dead`); before, `task->signal->live` (the count of live
    /// threads, decremented before the tracepoint) is 0 from the last thread's exit on.
    fn group_dead(&mut self) -> Need {
        const WHAT: &str = "the end of a whole process (not one thread)";
        let record =
            tracefs::field_offset(self.tracefs, "sched", "sched_process_exit", "group_dead");
        if let Ok(offset) = record
            && !self.pretends_missing("group_dead")
        {
            self.config.exit_group_dead = offset;
            return need(WHAT, Ok("group_dead in the tracepoint record".into()));
        }
        let signal = self.btf.field_offset("task_struct", "signal");
        let live = self.btf.field_offset("signal_struct", "live");
        match (signal, live) {
            (Ok(signal), Ok(live)) => {
                self.config.exit_from_signal = 1;
                self.config.task_signal = signal;
                self.config.signal_live = live;
                Need {
                    what: WHAT,
                    found: match record {
                        Ok(_) => format!("group_dead treated as missing ({PRETEND_MISSING_ENV})"),
                        Err(_) => "no group_dead in the tracepoint record".into(),
                    },
                    support: Support::Fallback(
                        "reads task->signal->live, 0 once the last thread exits".into(),
                    ),
                }
            }
            _ => need(
                WHAT,
                Err("neither group_dead in the record nor signal_struct.live in BTF".into()),
            ),
        }
    }

    /// `mm->rss_stat` is an array of `percpu_counter` since 6.2, and a `struct mm_rss_stat`
    /// of `atomic_long_t` before; both hold the value /proc/PID/status shows.
    fn rss_counters(&mut self) -> Need {
        const WHAT: &str = "mm->rss_stat counters";
        let Ok(base) = self.btf.field_offset("mm_struct", "rss_stat") else {
            return need(WHAT, Err("BTF lacks mm_struct.rss_stat".into()));
        };
        let atomic = self.btf.has_struct("mm_rss_stat");
        let (stride, count, found) = if atomic {
            let Ok(count) = self.btf.field_offset("mm_rss_stat", "count") else {
                return need(WHAT, Err("BTF lacks mm_rss_stat.count".into()));
            };
            // atomic_long_t count[NR_MM_COUNTERS]
            (8, count, "struct mm_rss_stat of atomic_long_t (before 6.2)")
        } else {
            match (
                self.btf.struct_size("percpu_counter"),
                self.btf.field_offset("percpu_counter", "count"),
            ) {
                (Ok(size), Ok(count)) => (size, count, "percpu_counter[] (6.2 and later)"),
                _ => return need(WHAT, Err("BTF lacks percpu_counter.count".into())),
            }
        };
        if RssIndices::from_btf(self.btf).is_err() {
            return need(WHAT, Err("BTF lacks the MM_*PAGES counter names".into()));
        }
        self.config.rss_count = std::array::from_fn(|i| base + i as u32 * stride + count);
        self.config.rss_probe_read = u32::from(atomic);
        need(WHAT, Ok(found.into()))
    }
}

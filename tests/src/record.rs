//! The fixture side of the ledger: what each process did, and the line that says so.
//!
//! [`Flows`] mirrors the tracer's counter contract (see the `Flows` methods for which call moves
//! which counter). [`write_line`] formats a line into a fixed stack buffer and emits it with one
//! `write(2)` on an `O_APPEND` descriptor: no heap allocation can differ between the baseline and
//! normal runs, and concurrent processes cannot interleave their lines.

use core::fmt::{self, Write};

use libc::c_int;

use crate::model::ClassFlow;
use crate::sys;

/// The tracer's own region classes: the ledger names them exactly as the tracer does.
pub use tracer_common::RegionClass as Class;

/// Everything one process did in one stage, counted the way the tracer counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flows {
    classes: [ClassFlow; tracer_common::CLASS_COUNT],
    brk_growth: i64,
}

impl Flows {
    pub const fn new() -> Self {
        const ZERO: ClassFlow = ClassFlow {
            mapped: 0,
            unmapped: 0,
            committed: 0,
            uncommitted: 0,
            released: 0,
            calls: 0,
        };
        Flows {
            classes: [ZERO; tracer_common::CLASS_COUNT],
            brk_growth: 0,
        }
    }

    pub fn get(&self, class: Class) -> ClassFlow {
        self.classes[class as usize]
    }

    pub fn brk_growth(&self) -> i64 {
        self.brk_growth
    }

    fn class(&mut self, class: Class) -> &mut ClassFlow {
        &mut self.classes[class as usize]
    }

    /// One call that newly mapped `bytes` into `class` (mmap, or mremap growth).
    pub fn mapped(&mut self, class: Class, bytes: usize) {
        let flow = self.class(class);
        flow.mapped += bytes as u64;
        flow.calls += 1;
    }

    /// One call that removed `bytes` of `class` (munmap or mremap shrink). A call spanning
    /// several classes, or a MAP_FIXED mmap replacing a mapping, records one of these per class.
    pub fn unmapped(&mut self, class: Class, bytes: usize) {
        let flow = self.class(class);
        flow.unmapped += bytes as u64;
        flow.calls += 1;
    }

    /// One mprotect that moved `bytes` from one class to another: a call in each of the two.
    pub fn moved(&mut self, from: Class, to: Class, bytes: usize) {
        assert_ne!(from, to, "an mprotect within a class counts nothing");
        let out = self.class(from);
        out.uncommitted += bytes as u64;
        out.calls += 1;
        let into = self.class(to);
        into.committed += bytes as u64;
        into.calls += 1;
    }

    /// One successful madvise(MADV_DONTNEED/FREE/REMOVE) over `bytes` of `class`.
    pub fn released(&mut self, class: Class, bytes: usize) {
        let flow = self.class(class);
        flow.released += bytes as u64;
        flow.calls += 1;
    }

    /// One brk that moved the break from `old` to `new`, both as the kernel returned them.
    /// Heap bytes follow the page-aligned break; `brk_growth` the exact one.
    pub fn brk(&mut self, old: usize, new: usize) {
        if old == new {
            return;
        }
        self.brk_growth += new as i64 - old as i64;
        let (old_end, new_end) = (sys::page_align_up(old), sys::page_align_up(new));
        let heap = self.class(Class::Heap);
        heap.calls += 1;
        if new_end > old_end {
            heap.mapped += (new_end - old_end) as u64;
        } else {
            heap.unmapped += (old_end - new_end) as u64;
        }
    }
}

/// A fixed-capacity `fmt::Write` target on the stack; formatting past its end is an error.
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    pub const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> Default for StackBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// getgroups(2) never reports more than this many for the fixture (it fails with EINVAL past it).
const MAX_GROUPS: usize = 64;

/// Appends this process's line for `role` to the ledger `fd` (opened with `O_APPEND`), with its
/// ids as they are now. Baseline runs call this too, with zero flows: the same code path.
pub fn write_line(fd: c_int, role: &str, flows: &Flows) {
    debug_assert!(role.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    let mut groups = [0 as libc::gid_t; MAX_GROUPS];
    // SAFETY: the buffer holds MAX_GROUPS entries, as the call is told.
    let ngroups = unsafe { libc::getgroups(MAX_GROUPS as c_int, groups.as_mut_ptr()) };
    if ngroups < 0 {
        sys::fatal("getgroups");
    }
    let mut line = StackBuf::<8192>::new();
    if format_line(&mut line, role, &groups[..ngroups as usize], flows).is_err() {
        sys::fatal_msg("ledger line does not fit its buffer");
    }
    sys::write_once(fd, line.as_bytes());
}

fn format_line(
    out: &mut impl Write,
    role: &str,
    groups: &[libc::gid_t],
    flows: &Flows,
) -> fmt::Result {
    // SAFETY: these calls take no arguments and cannot fail.
    let (pid, ppid, uid, gid) = unsafe {
        (
            libc::getpid(),
            libc::getppid(),
            libc::getuid(),
            libc::getgid(),
        )
    };
    write!(
        out,
        r#"{{"role":"{role}","pid":{pid},"ppid":{ppid},"uid":{uid},"gid":{gid},"groups":["#
    )?;
    for (i, group) in groups.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        write!(out, "{sep}{group}")?;
    }
    write!(out, r#"],"brk_growth":{},"flows":{{"#, flows.brk_growth)?;
    for (i, class) in Class::ALL.into_iter().enumerate() {
        let ClassFlow {
            mapped,
            unmapped,
            committed,
            uncommitted,
            released,
            calls,
        } = flows.get(class);
        let sep = if i == 0 { "" } else { "," };
        write!(
            out,
            r#"{sep}"{}":{{"mapped":{mapped},"unmapped":{unmapped},"committed":{committed},"uncommitted":{uncommitted},"released":{released},"calls":{calls}}}"#,
            class.name()
        )?;
    }
    out.write_str("}}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_line_parses_back() {
        let mut flows = Flows::new();
        flows.mapped(Class::Anon, 4 << 20);
        flows.moved(Class::Reserved, Class::Anon, 1 << 20);
        flows.brk(0x10000, 0x10000 + 100);
        flows.brk(0x10000 + 100, 0x10000);
        let mut buf = StackBuf::<8192>::new();
        format_line(&mut buf, "root", &[0, 4, 27], &flows).unwrap();
        let text = core::str::from_utf8(buf.as_bytes()).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let line: crate::LedgerLine = serde_json::from_str(text).unwrap();
        assert_eq!(line.role, "root");
        assert_eq!(line.groups, [0, 4, 27]);
        assert_eq!(line.brk_growth, 0);
        assert_eq!(line.flows.len(), Class::ALL.len());
        let anon = line.flow("anon");
        assert_eq!(
            (anon.mapped, anon.committed, anon.calls),
            (4 << 20, 1 << 20, 2)
        );
        let reserved = line.flow("reserved");
        assert_eq!((reserved.uncommitted, reserved.calls), (1 << 20, 1));
        let heap = line.flow("heap");
        assert_eq!((heap.mapped, heap.unmapped, heap.calls), (4096, 4096, 2));
    }

    #[test]
    fn brk_counts_aligned_heap_and_exact_growth() {
        let mut flows = Flows::new();
        flows.brk(0x1000, 0x1000); // no change: no call
        flows.brk(0x1000, 0x1010); // within a page boundary move
        flows.brk(0x1010, 0x1020); // same page end: a call, no bytes
        let heap = flows.get(Class::Heap);
        assert_eq!((heap.mapped, heap.unmapped, heap.calls), (4096, 0, 2));
        assert_eq!(flows.brk_growth(), 0x20);
    }

    #[test]
    fn overflowing_buffer_is_an_error() {
        let mut buf = StackBuf::<4>::new();
        assert!(buf.write_str("abcd").is_ok());
        assert!(buf.write_str("e").is_err());
        assert_eq!(buf.as_bytes(), b"abcd");
    }
}

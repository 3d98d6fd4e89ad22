//! Allocation-free command line and executable-path handling for the fixtures.
//!
//! `std::env::args` allocates one string per argument, so `--baseline` alone would change the
//! heap between the two modes. Instead the arguments are read from `/proc/self/cmdline` into a
//! stack buffer and handed out as `&CStr`s into it, which also serve directly as the C strings
//! for `open` and `execv`. The exec target's path is built the same way from `/proc/self/exe`.

use core::ffi::CStr;

use crate::sys;

const CMDLINE_CAP: usize = 16 * 1024;
const PATH_CAP: usize = libc::PATH_MAX as usize;

/// This process's argv, NUL-separated as the kernel reports it.
pub struct Cmdline {
    buf: [u8; CMDLINE_CAP],
    len: usize,
}

impl Cmdline {
    pub fn read() -> Self {
        let mut cmdline = Cmdline {
            buf: [0; CMDLINE_CAP],
            len: 0,
        };
        let fd = sys::open(c"/proc/self/cmdline", libc::O_RDONLY, 0);
        loop {
            let free = &mut cmdline.buf[cmdline.len..];
            if free.is_empty() {
                sys::fatal_msg("command line too long");
            }
            // SAFETY: reading into the unused tail of the buffer.
            let n = unsafe { libc::read(fd, free.as_mut_ptr().cast(), free.len()) };
            match n {
                0 => break,
                n if n < 0 => sys::fatal("read /proc/self/cmdline"),
                n => cmdline.len += n as usize,
            }
        }
        sys::close(fd);
        // Every argument, the last included, ends with a NUL.
        if cmdline.len == 0 || cmdline.buf[cmdline.len - 1] != 0 {
            sys::fatal_msg("malformed /proc/self/cmdline");
        }
        cmdline
    }

    /// The arguments after the program name.
    pub fn args(&self) -> impl Iterator<Item = &CStr> {
        self.buf[..self.len]
            .split_inclusive(|&b| b == 0)
            .skip(1)
            .map(|arg| CStr::from_bytes_with_nul(arg).expect("one NUL per argument"))
    }
}

/// The fixture options: `--ledger FILE [--baseline] [--wait-file PATH]`.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// The ledger file every process appends its lines to.
    pub ledger: &'a CStr,
    /// Same process tree and file writes, none of the ledger's memory syscalls.
    pub baseline: bool,
    /// Announce `ready <pid>` and wait for this path to exist before the script (attach mode).
    pub wait_file: Option<&'a CStr>,
}

impl<'a> Options<'a> {
    /// Parses the options; `usage` is printed and the process exits 2 on anything unexpected.
    /// `--wait-file` is accepted only where `allow_wait` (the root fixture).
    pub fn parse(cmdline: &'a Cmdline, usage: &str, allow_wait: bool) -> Self {
        let mut ledger = None;
        let mut baseline = false;
        let mut wait_file = None;
        let mut args = cmdline.args();
        while let Some(arg) = args.next() {
            match arg.to_bytes() {
                b"--ledger" => ledger = Some(args.next().unwrap_or_else(|| usage_exit(usage))),
                b"--baseline" => baseline = true,
                b"--wait-file" if allow_wait => {
                    wait_file = Some(args.next().unwrap_or_else(|| usage_exit(usage)))
                }
                _ => usage_exit(usage),
            }
        }
        let ledger = ledger.unwrap_or_else(|| usage_exit(usage));
        Options {
            ledger,
            baseline,
            wait_file,
        }
    }
}

fn usage_exit(usage: &str) -> ! {
    let mut msg = crate::record::StackBuf::<512>::new();
    let _ = core::fmt::Write::write_fmt(&mut msg, format_args!("usage: {usage}\n"));
    sys::write_once(2, msg.as_bytes());
    sys::exit_now(2)
}

/// A NUL-terminated path in a stack buffer.
pub struct StackPath {
    buf: [u8; PATH_CAP],
}

impl StackPath {
    /// The path of `name` in the directory holding this process's executable, e.g.
    /// `target/debug/ledger_exec` beside `target/debug/ledger`.
    pub fn sibling_of_exe(name: &CStr) -> Self {
        let mut path = StackPath { buf: [0; PATH_CAP] };
        // SAFETY: readlink writes at most the given length, leaving room for the NUL.
        let n = unsafe {
            libc::readlink(
                c"/proc/self/exe".as_ptr(),
                path.buf.as_mut_ptr().cast(),
                PATH_CAP - 1,
            )
        };
        if n < 0 {
            sys::fatal("readlink /proc/self/exe");
        }
        let n = n as usize;
        let dir_len = match path.buf[..n].iter().rposition(|&b| b == b'/') {
            Some(slash) => slash + 1,
            None => sys::fatal_msg("executable path has no directory"),
        };
        let name = name.to_bytes_with_nul();
        let Some(dst) = path.buf.get_mut(dir_len..dir_len + name.len()) else {
            sys::fatal_msg("executable path too long");
        };
        dst.copy_from_slice(name);
        path
    }

    pub fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf).expect("the buffer holds a NUL")
    }
}

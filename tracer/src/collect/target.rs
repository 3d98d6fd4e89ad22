//! What is traced: a command leaktrace launches, or a running process it attaches to.
//!
//! A launched command is held between fork and exec until the caller has put its pid in the
//! tracked set, so nothing it does, from its first instruction on, is missed. Under sudo it runs
//! as the invoking user (SUDO_UID/SUDO_GID with that user's groups), never as root, unless the
//! caller asks for root.

use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::{Child, Command},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("no command given")]
    NoCommand,
    #[error("cannot create a pipe")]
    Pipe(#[source] std::io::Error),
    #[error("cannot start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the launched command did not report its pid before exec")]
    NoPid,
    #[error(
        "{var} is not a valid id: {value:?}; the command would run as root (give --as-root if it should)"
    )]
    BadId { var: &'static str, value: String },
    #[error(
        "{set} is set but {missing} is not: under sudo both say who to run the command as; the command would run as root (give --as-root if it should)"
    )]
    HalfSudo {
        set: &'static str,
        missing: &'static str,
    },
    #[error(
        "SUDO_UID {0} is no user of this machine (no passwd entry); the command would run as root (give --as-root if it should)"
    )]
    UnknownUser(u32),
    #[error("process {0} does not exist")]
    NoSuchProcess(u32),
    #[error("cannot read /proc")]
    Proc(#[source] procfs::ProcError),
}

/// Who a launched command runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Identity {
    /// The user who ran `sudo leaktrace`, from SUDO_UID/SUDO_GID; None when not under sudo.
    /// Half of the pair, an id that is not a number, or a uid with no passwd entry is refused:
    /// running the command as root instead would be silent and wrong.
    pub fn from_sudo() -> Result<Option<Identity>, TargetError> {
        let (uid, gid) = match (std::env::var("SUDO_UID"), std::env::var("SUDO_GID")) {
            (Ok(uid), Ok(gid)) => (uid, gid),
            (Err(_), Err(_)) => return Ok(None),
            (Ok(_), Err(_)) => {
                return Err(TargetError::HalfSudo {
                    set: "SUDO_UID",
                    missing: "SUDO_GID",
                });
            }
            (Err(_), Ok(_)) => {
                return Err(TargetError::HalfSudo {
                    set: "SUDO_GID",
                    missing: "SUDO_UID",
                });
            }
        };
        let parse = |var, value: String| {
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| TargetError::BadId { var, value })
        };
        let (uid, gid) = (parse("SUDO_UID", uid)?, parse("SUDO_GID", gid)?);
        let groups = supplementary_groups(uid, gid).ok_or(TargetError::UnknownUser(uid))?;
        Ok(Some(Identity { uid, gid, groups }))
    }
}

/// The user's groups from the group database (getgrouplist); None when the uid has no passwd
/// entry.
fn supplementary_groups(uid: u32, gid: u32) -> Option<Vec<u32>> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is integers and pointers, for which zeroes (null) are values; getpwuid_r
    // fills it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pwd` and `buf`, both live and sized as passed.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut count = groups.len() as libc::c_int;
    // SAFETY: pw_name points into `buf`; `groups` holds `count` entries.
    let rc = unsafe { libc::getgrouplist(pwd.pw_name, gid, groups.as_mut_ptr(), &mut count) };
    if rc < 0 {
        // More than 256 groups: the primary one at least.
        return Some(vec![gid]);
    }
    groups.truncate(count.max(0) as usize);
    Some(groups)
}

/// What the command gets besides its arguments.
#[derive(Clone, Debug, Default)]
pub struct LaunchIo {
    /// Extra environment variables (LEAKTRACE_MARKER).
    pub env: Vec<(String, String)>,
    /// Pipe stdout and stderr to leaktrace (to scan them for markers) instead of inheriting.
    pub capture_output: bool,
}

/// A launched command, running and tracked.
pub struct Launched {
    pub pid: u32,
    pub child: Child,
}

/// Starts `command`, calls `track(pid)` while the child waits just before exec, then lets it
/// exec. If `track` fails, the child exits without running the command.
pub fn launch<E: From<TargetError>>(
    command: &[String],
    identity: Option<Identity>,
    io: LaunchIo,
    track: impl FnOnce(u32) -> Result<(), E>,
) -> Result<Launched, E> {
    let (program, args) = command.split_first().ok_or(TargetError::NoCommand)?;
    let (mut ready_read, ready_write) = pipe()?;
    let (go_read, mut go_write) = pipe()?;

    let mut cmd = Command::new(program);
    cmd.args(args).envs(io.env);
    if io.capture_output {
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
    }
    let (ready_fd, go_fd) = (ready_write.as_raw_fd(), go_read.as_raw_fd());
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe syscalls
    // (getpid, write, read, setgroups, setgid, setuid) on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || hold_until_tracked(ready_fd, go_fd, identity.as_ref()));
    }

    // spawn() returns only once the child has exec'd, which it does after we say go, so it
    // runs on its own thread. It owns the child's pipe ends, so a failed fork closes them
    // and the read below ends.
    let command_line = command.join(" ");
    let spawner = std::thread::spawn(move || {
        let result = cmd.spawn();
        drop((ready_write, go_read));
        result
    });
    let mut pid_bytes = [0u8; 4];
    let got_pid = ready_read.read_exact(&mut pid_bytes).is_ok();
    let tracked = if got_pid {
        Some(track(u32::from_ne_bytes(pid_bytes)))
    } else {
        None
    };
    if let Some(Ok(())) = tracked {
        // A failed write means the child is gone; spawn() reports why.
        let _ = go_write.write_all(b"g");
    }
    drop(go_write);
    let spawned = spawner.join().expect("spawner thread panicked");
    match (tracked, spawned) {
        (Some(Err(e)), _) => Err(e),
        (_, Err(source)) => Err(TargetError::Spawn {
            command: command_line,
            source,
        }
        .into()),
        (None, Ok(_)) => Err(TargetError::NoPid.into()),
        (Some(Ok(())), Ok(child)) => Ok(Launched {
            pid: u32::from_ne_bytes(pid_bytes),
            child,
        }),
    }
}

/// In the child: report our pid, wait for the go, then drop privileges.
fn hold_until_tracked(
    ready_fd: i32,
    go_fd: i32,
    identity: Option<&Identity>,
) -> std::io::Result<()> {
    let last_error = std::io::Error::last_os_error;
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let bytes = pid.to_ne_bytes();
    // SAFETY: a write of a live buffer of `bytes.len()` bytes.
    if unsafe { libc::write(ready_fd, bytes.as_ptr().cast(), bytes.len()) } != bytes.len() as isize
    {
        return Err(last_error());
    }
    let mut go = [0u8; 1];
    // SAFETY: a read into a live one-byte buffer.
    if unsafe { libc::read(go_fd, go.as_mut_ptr().cast(), 1) } != 1 {
        // The tracer could not track us: do not run the command untraced.
        return Err(std::io::Error::other(
            "leaktrace could not track the command",
        ));
    }
    if let Some(identity) = identity {
        become_user(identity)?;
    }
    Ok(())
}

/// Drops to `identity` (groups, then group, then user), in a child between fork and exec:
/// async-signal-safe calls only.
pub fn become_user(identity: &Identity) -> std::io::Result<()> {
    let groups: &[libc::gid_t] = &identity.groups;
    // SAFETY: setgroups reads `groups.len()` ids from a live slice.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0
        // SAFETY: setgid takes an id.
        || unsafe { libc::setgid(identity.gid) } != 0
        // SAFETY: setuid takes an id.
        || unsafe { libc::setuid(identity.uid) } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn pipe() -> Result<(File, File), TargetError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both fds on success; O_CLOEXEC keeps them out of the command.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(TargetError::Pipe(std::io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    let [read, write] =
        fds.map(|fd| File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }));
    Ok((read, write))
}

/// A process as /proc shows it now.
#[derive(Clone, Debug)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// Seconds since boot.
    pub start_time: f64,
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// One process from /proc, or None if it is gone.
pub fn proc_info(pid: u32) -> Option<ProcInfo> {
    let stat = procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()?;
    Some(ProcInfo {
        pid,
        ppid: stat.ppid as u32,
        comm: stat.comm,
        start_time: stat.starttime as f64 / ticks_per_second(),
    })
}

/// `root` and all its live descendants, parents before children.
pub fn process_tree(root: u32) -> Result<Vec<ProcInfo>, TargetError> {
    let root_info = proc_info(root).ok_or(TargetError::NoSuchProcess(root))?;
    Ok(with_descendants(vec![root_info], &all_processes()?))
}

/// Every process in /proc now.
pub fn all_processes() -> Result<Vec<ProcInfo>, TargetError> {
    Ok(procfs::process::all_processes()
        .map_err(TargetError::Proc)?
        .flatten()
        .filter_map(|process| process.stat().ok())
        .map(|stat| ProcInfo {
            pid: stat.pid as u32,
            ppid: stat.ppid as u32,
            comm: stat.comm,
            start_time: stat.starttime as f64 / ticks_per_second(),
        })
        .collect())
}

/// `tree` and the descendants `all` shows of its processes, parents before children.
pub fn with_descendants(mut tree: Vec<ProcInfo>, all: &[ProcInfo]) -> Vec<ProcInfo> {
    let mut children: HashMap<u32, Vec<&ProcInfo>> = HashMap::new();
    for info in all {
        children.entry(info.ppid).or_default().push(info);
    }
    let mut seen: BTreeSet<u32> = tree.iter().map(|p| p.pid).collect();
    let mut next = 0;
    while next < tree.len() {
        for &child in children.get(&tree[next].pid).into_iter().flatten() {
            if seen.insert(child.pid) {
                tree.push(child.clone());
            }
        }
        next += 1;
    }
    tree
}

/// A process's command line (empty once it is gone, or for a kernel thread).
pub fn cmdline(pid: u32) -> Vec<String> {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.cmdline())
        .unwrap_or_default()
}

/// Which process is the worker, when a supervisor may restart it with a new pid
/// (`attach --follow-name RE` / `--follow-cmdline RE`).
#[derive(Clone, Debug)]
pub enum Follow {
    /// The process name (`/proc/PID/comm`, at most 15 characters: `node`, `bun`).
    Name(regex::Regex),
    /// The command line, its arguments joined by spaces.
    Cmdline(regex::Regex),
}

impl Follow {
    fn matches(&self, info: &ProcInfo) -> bool {
        match self {
            Follow::Name(re) => re.is_match(&info.comm),
            Follow::Cmdline(re) => re.is_match(&cmdline(info.pid).join(" ")),
        }
    }

    /// The rule in words: "whose name matches `node`".
    pub fn describe(&self) -> String {
        match self {
            Follow::Name(re) => format!("whose name matches `{re}`"),
            Follow::Cmdline(re) => format!("whose command line matches `{re}`"),
        }
    }

    /// The instances of the worker running now, oldest first: the processes the rule matches
    /// that no other match is an ancestor of (a worker's own children, forked or exec'd with
    /// the same command line, are part of its tree), leaving out leaktrace's own ancestors
    /// (`sudo leaktrace attach --follow-cmdline worker.js` matches itself) and descendants
    /// (a `--cycle-cmd` naming the worker).
    pub fn instances(&self) -> Result<Vec<ProcInfo>, TargetError> {
        let all = all_processes()?;
        let parent: HashMap<u32, u32> = all.iter().map(|p| (p.pid, p.ppid)).collect();
        let parent = &parent;
        let ancestors = |mut pid: u32| {
            std::iter::from_fn(move || {
                pid = *parent.get(&pid).filter(|&&ppid| ppid != 0 && ppid != pid)?;
                Some(pid)
            })
        };
        let me = std::process::id();
        let mut ours: BTreeSet<u32> = ancestors(me).collect();
        match all.iter().find(|p| p.pid == me) {
            Some(info) => ours.extend(
                with_descendants(vec![info.clone()], &all)
                    .iter()
                    .map(|p| p.pid),
            ),
            None => {
                ours.insert(me);
            }
        }
        let matching: BTreeSet<u32> = all
            .iter()
            .filter(|p| !ours.contains(&p.pid) && self.matches(p))
            .map(|p| p.pid)
            .collect();
        let mut tops: Vec<ProcInfo> = all
            .iter()
            .filter(|p| matching.contains(&p.pid))
            .filter(|p| !ancestors(p.pid).any(|a| matching.contains(&a)))
            .cloned()
            .collect();
        tops.sort_by(|a, b| a.start_time.total_cmp(&b.start_time));
        Ok(tops)
    }
}

/// Whether `pid` is running: present in /proc and neither a zombie nor dead.
pub fn is_alive(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|stat| !matches!(stat.state, 'Z' | 'X' | 'x'))
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a positive pid.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Signals `pid` only if it is still the process that started at `start_time` (seconds since
/// boot), so a reused pid is never hit.
pub fn signal_if_same(pid: u32, start_time: f64, sig: i32) -> bool {
    match proc_info(pid) {
        Some(info) if (info.start_time - start_time).abs() < 0.05 => {
            signal(pid, sig);
            true
        }
        _ => false,
    }
}

//! Cycle and phase markers, from wherever the worker gives them:
//!
//! - lines of the launched command's stdout/stderr matching `--cycle-regex` / `--phase-regex`
//!   (the output still passes through unchanged);
//! - lines on the Unix socket whose path the command finds in `LEAKTRACE_MARKER`:
//!   `cycle [key=value ...]` or `phase NAME [key=value ...]`; leaktrace answers each with `ok`
//!   once its snapshot is taken, so a worker that waits for it gets exact boundaries;
//! - appends to `--cycle-log FILE` (surviving rotation);
//! - the output of `--cycle-cmd CMD` (`journalctl -f`, `docker logs -f`: where an attached
//!   worker's output goes), restarted if it exits;
//! - `--cycle-every DURATION`.
//!
//! Any marker line may carry the worker's own figures as `key=value` (numbers), which become
//! series of their own; `--figures-regex` takes them from any line through named groups, with
//! units (`heapUsed=45.6MB`). Input that cannot be understood is counted, never fatal.
//!
//! Markers from output lines are asynchronous: the worker does not wait for leaktrace, and may
//! close its browser or exit in the next breath. So the line's reader takes the boundary's
//! [`Reading`] of the tree itself, the moment it reads the line, before handing the marker on.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI32, Ordering},
    },
    time::Duration,
};

use regex::Regex;
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
    sync::{mpsc::UnboundedSender, oneshot},
};

use crate::{
    collect::sampler::{self, Depth, Reading, TreeReader},
    collect::target::{Identity, become_user},
};

#[derive(Debug, Error)]
pub enum MarkerError {
    #[error("--{flag} is not a valid regular expression")]
    Regex {
        flag: &'static str,
        #[source]
        source: regex::Error,
    },
    #[error("cannot create the marker socket in {path}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--figures-regex has no named group: name each figure, as in `heapUsed=(?P<heapUsed>\\S+)`"
    )]
    UnnamedFigures,
    #[error("cannot open --cycle-log {path}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a marker says.
#[derive(Clone, Debug, PartialEq)]
pub enum Boundary {
    /// The end of the current cycle.
    CycleEnd,
    /// The start of a phase with this name (the previous phase ends).
    PhaseStart(String),
}

impl Boundary {
    /// How deep the tree is read at this boundary: PSS at cycle ends (within the budget), the
    /// resident counters alone at phase boundaries (PSS estimated from them).
    pub fn depth(&self) -> Depth {
        match self {
            Boundary::CycleEnd => Depth::Budgeted,
            Boundary::PhaseStart(_) => Depth::Counters,
        }
    }
}

/// A marker as the session receives it.
#[derive(Debug)]
pub struct Marker {
    pub boundary: Boundary,
    pub values: BTreeMap<String, f64>,
    /// Answered once the boundary's snapshot is taken (socket markers).
    pub ack: Option<oneshot::Sender<()>>,
    /// When the marker was read (CLOCK_BOOTTIME).
    pub at_ns: u64,
    /// The tree's memory, read as soon as the marker was (output lines); None when the session
    /// reads it itself (socket markers wait for their answer; timer and log markers).
    pub reading: Option<Reading>,
}

impl Marker {
    /// A cycle end now, from leaktrace's own clock (`--cycle-every`).
    pub fn cycle_end_now() -> Marker {
        Marker {
            boundary: Boundary::CycleEnd,
            values: BTreeMap::new(),
            ack: None,
            at_ns: sampler::boot_ns(),
            reading: None,
        }
    }
}

/// What a source sends the session.
#[derive(Debug)]
pub enum MarkerEvent {
    Marker(Marker),
    /// The worker's figures from a line that is not a marker (`--figures-regex`): they go with
    /// the cycle under way.
    Figures(BTreeMap<String, f64>),
    /// Input that could not be understood, with a sample of it.
    Malformed(String),
}

pub type Sender = UnboundedSender<MarkerEvent>;

/// `key=value` tokens with numeric values, and the `key=value` tokens whose value is not a
/// number (text in a log line; an error in the socket protocol).
pub fn key_values(text: &str) -> (BTreeMap<String, f64>, Vec<String>) {
    let mut values = BTreeMap::new();
    let mut bad = Vec::new();
    for token in text.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        let valid_key = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid_key {
            continue;
        }
        match value.trim_end_matches([',', ';']).parse::<f64>() {
            Ok(number) if number.is_finite() => {
                values.insert(key.to_string(), number);
            }
            _ => bad.push(token.to_string()),
        }
    }
    (values, bad)
}

/// An amount with an optional unit: `4096`, `12.5MB`, `3.2 MiB`, `1.2GB`, `64k`. B, KB, MB,
/// GB, TB are decimal; KiB, MiB, GiB, TiB (and K, M, G) binary; any case.
pub fn parse_amount(text: &str) -> Option<f64> {
    let text = text.trim();
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = text[digits.len()..].to_ascii_lowercase();
    let number: f64 = digits.trim().parse().ok()?;
    let factor = match unit.as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(number * factor).filter(|n| n.is_finite())
}

/// A line of the socket protocol: `cycle [k=v ...]` or `phase NAME [k=v ...]`.
pub fn parse_protocol_line(line: &str) -> Result<(Boundary, BTreeMap<String, f64>), String> {
    let mut words = line.split_whitespace();
    let boundary = match words.next() {
        Some("cycle") => Boundary::CycleEnd,
        Some("phase") => match words.next() {
            Some(name) if !name.contains('=') => Boundary::PhaseStart(name.to_string()),
            _ => return Err(format!("a phase marker needs a name: {line:?}")),
        },
        _ => return Err(format!("not `cycle` or `phase NAME`: {line:?}")),
    };
    let rest: Vec<&str> = words.collect();
    let (values, bad) = key_values(&rest.join(" "));
    if let Some(bad) = bad.first() {
        return Err(format!("not a number: {bad:?} in {line:?}"));
    }
    Ok((boundary, values))
}

/// Markers found in lines of the command's output or of a log.
#[derive(Clone, Debug, Default)]
pub struct LineRules {
    cycle: Option<Regex>,
    phase: Option<Regex>,
    /// `--figures-regex`: each named group of a matching line is a figure.
    figures: Option<Regex>,
    /// Without regexes, read lines in the socket protocol (`cycle`, `phase NAME`) and ignore
    /// the rest: a log holds other lines too.
    protocol: bool,
}

impl LineRules {
    pub fn new(
        cycle: Option<&str>,
        phase: Option<&str>,
        figures: Option<&str>,
    ) -> Result<LineRules, MarkerError> {
        let compile = |flag, pattern: Option<&str>| {
            pattern
                .map(|p| Regex::new(p).map_err(|source| MarkerError::Regex { flag, source }))
                .transpose()
        };
        let figures = compile("figures-regex", figures)?;
        if figures
            .as_ref()
            .is_some_and(|re| re.capture_names().flatten().next().is_none())
        {
            return Err(MarkerError::UnnamedFigures);
        }
        Ok(LineRules {
            cycle: compile("cycle-regex", cycle)?,
            phase: compile("phase-regex", phase)?,
            figures,
            protocol: false,
        })
    }

    /// These rules, or the marker protocol when they have no regex.
    pub fn or_protocol(mut self) -> LineRules {
        self.protocol = self.is_empty();
        self
    }

    /// No regex for markers (figures alone end no cycle).
    pub fn is_empty(&self) -> bool {
        self.cycle.is_none() && self.phase.is_none()
    }

    /// Whether the command's output must be read: for markers or for figures.
    pub fn reads_lines(&self) -> bool {
        !self.is_empty() || self.figures.is_some()
    }

    /// The figures of a line matching `--figures-regex`, and the groups whose text is not an
    /// amount.
    fn figures(&self, line: &str) -> (BTreeMap<String, f64>, Vec<String>) {
        let (mut values, mut bad) = (BTreeMap::new(), Vec::new());
        let Some(captures) = self.figures.as_ref().and_then(|re| re.captures(line)) else {
            return (values, bad);
        };
        for name in self
            .figures
            .iter()
            .flat_map(|re| re.capture_names().flatten())
        {
            if let Some(text) = captures.name(name) {
                match parse_amount(text.as_str()) {
                    Some(value) => {
                        values.insert(name.to_string(), value);
                    }
                    None => bad.push(format!("{name}={:?}", text.as_str())),
                }
            }
        }
        (values, bad)
    }

    /// The markers in one line: a phase start (named by the group `phase`, else the first
    /// group, else the whole match), then a cycle end.
    pub fn scan(&self, line: &str) -> Vec<MarkerEvent> {
        if self.protocol {
            return match parse_protocol_line(line) {
                Ok((boundary, values)) => vec![marker(boundary, values, None)],
                Err(_) => Vec::new(),
            };
        }
        let mut events = Vec::new();
        let (figures, bad) = self.figures(line);
        if let Some(bad) = bad.first() {
            events.push(MarkerEvent::Malformed(format!(
                "--figures-regex matched {bad}, which is not an amount"
            )));
        }
        // Free text: `key=value` tokens that are not numbers are just words here.
        let (mut values, _) = key_values(line);
        let is_marker = self.phase.as_ref().is_some_and(|re| re.is_match(line))
            || self.cycle.as_ref().is_some_and(|re| re.is_match(line));
        if !is_marker {
            if !figures.is_empty() {
                events.push(MarkerEvent::Figures(figures));
            }
            return events;
        }
        values.extend(figures);
        if let Some(captures) = self.phase.as_ref().and_then(|re| re.captures(line)) {
            let name = captures
                .name("phase")
                .or_else(|| captures.get(1))
                .or_else(|| captures.get(0))
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            events.push(marker(Boundary::PhaseStart(name), values.clone(), None));
        }
        if self.cycle.as_ref().is_some_and(|re| re.is_match(line)) {
            events.push(marker(Boundary::CycleEnd, values, None));
        }
        events
    }
}

fn marker(
    boundary: Boundary,
    values: BTreeMap<String, f64>,
    ack: Option<oneshot::Sender<()>>,
) -> MarkerEvent {
    MarkerEvent::Marker(Marker {
        boundary,
        values,
        ack,
        at_ns: sampler::boot_ns(),
        reading: None,
    })
}

/// The socket the command writes markers to; its directory is removed on drop.
pub struct MarkerSocket {
    dir: PathBuf,
    pub path: PathBuf,
}

impl MarkerSocket {
    /// Creates the socket in a fresh private directory owned by `owner` (the user the command
    /// runs as), and serves it: every connection's lines become markers.
    pub fn serve(owner: Option<(u32, u32)>, events: Sender) -> Result<MarkerSocket, MarkerError> {
        let dir = std::env::temp_dir().join(format!("leaktrace-{}", std::process::id()));
        let error = |source| MarkerError::Socket {
            path: dir.display().to_string(),
            source,
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(error)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(error)?;
        let path = dir.join("marker.sock");
        let listener = UnixListener::bind(&path).map_err(error)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(error)?;
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(error)?;
        }
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, events.clone()));
            }
        });
        Ok(MarkerSocket { dir, path })
    }
}

impl MarkerSocket {
    /// The private directory the socket is in.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for MarkerSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The longest marker line the socket takes: a marker is a word and a few figures.
pub const MAX_SOCKET_LINE: usize = 64 * 1024;

/// Every line gets an answer: `ok` once its boundary is recorded, or `error: why` (the worker
/// may wait for one, and must never hang on a line leaktrace could not use).
async fn serve_connection(stream: tokio::net::UnixStream, events: Sender) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        let too_long = match read_capped_line(&mut reader, &mut line).await {
            Ok(Some(too_long)) => too_long,
            Ok(None) | Err(_) => return,
        };
        let text = String::from_utf8_lossy(&line);
        if !too_long && text.trim().is_empty() {
            continue;
        }
        let parsed = if too_long {
            Err(format!("a line longer than {} KiB", MAX_SOCKET_LINE / 1024))
        } else {
            parse_protocol_line(&text)
        };
        let answer = match parsed {
            Ok((boundary, values)) => {
                let (ack, acked) = oneshot::channel();
                if events.send(marker(boundary, values, Some(ack))).is_err() {
                    return;
                }
                match acked.await {
                    Ok(()) => "ok\n".to_string(),
                    Err(_) => "error: the trace has ended\n".to_string(),
                }
            }
            Err(reason) => {
                let answer = format!("error: {reason}\n");
                let _ = events.send(MarkerEvent::Malformed(reason));
                answer
            }
        };
        // The worker may never read the answer; a failed write is not an error.
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one line (without its newline) into `line`, keeping at most [`MAX_SOCKET_LINE`] bytes
/// of it: `Some(true)` when it was longer (the rest is read and dropped), `None` at the end.
async fn read_capped_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut too_long = false;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok((!line.is_empty() || too_long).then_some(too_long));
        }
        let (chunk, done) = match buffer.iter().position(|b| *b == b'\n') {
            Some(end) => (&buffer[..end], Some(end + 1)),
            None => (buffer, None),
        };
        if line.len() + chunk.len() > MAX_SOCKET_LINE {
            too_long = true;
        } else {
            line.extend_from_slice(chunk);
        }
        let used = done.unwrap_or(buffer.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(Some(too_long));
        }
    }
}

/// Follows appends to a log file from its current end, reopening it when it is rotated
/// (replaced or truncated), and sends the markers its lines hold.
pub fn follow_log(path: &Path, rules: LineRules, events: Sender) -> Result<(), MarkerError> {
    let error = |source| MarkerError::Log {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(error)?;
    let mut position = file.seek(SeekFrom::End(0)).map_err(error)?;
    let path = path.to_path_buf();
    tokio::spawn(async move {
        let mut pending = String::new();
        let mut inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
        loop {
            let mut chunk = Vec::new();
            if file.read_to_end(&mut chunk).is_ok() {
                position += chunk.len() as u64;
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    for event in rules.scan(line.trim_end()) {
                        if events.send(event).is_err() {
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Rotated: a new file at the path, or this one truncated. The old one was read to
            // its end above; start the new one from its beginning.
            match std::fs::metadata(&path) {
                Ok(meta) if meta.ino() != inode || meta.len() < position => {
                    if let Ok(reopened) = File::open(&path) {
                        file = reopened;
                        inode = meta.ino();
                        position = 0;
                    }
                }
                _ => {}
            }
        }
    });
    Ok(())
}

/// Copies a stream of the command's output through unchanged, scanning its lines for markers.
/// Runs on its own thread (blocking reads); `write` forwards each chunk as it comes. A marker
/// gets its reading of `tree` here, at once (the output it is in waits for it, the worker does
/// not: the pipe holds 64 KiB).
pub fn pass_through(
    from: impl Read + Send + 'static,
    write: impl FnMut(&[u8]) + Send + 'static,
    rules: LineRules,
    events: Sender,
    tree: TreeReader,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || scan_stream(from, write, &rules, &events, &tree))
}

/// Reads `from` to its end, scanning its lines for markers (each with its reading of `tree`,
/// taken as the line is read) and handing every chunk to `write` after its markers.
fn scan_stream(
    mut from: impl Read,
    mut write: impl FnMut(&[u8]),
    rules: &LineRules,
    events: &Sender,
    tree: &TreeReader,
) {
    let mut buffer = [0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buffer[..n]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let events_of_line = rules.scan(String::from_utf8_lossy(&line).trim_end());
            let markers: Vec<&Marker> = events_of_line
                .iter()
                .filter_map(|e| match e {
                    MarkerEvent::Marker(marker) => Some(marker),
                    _ => None,
                })
                .collect();
            // One reading for a line that both starts a phase and ends a cycle, as deep as a
            // cycle end's.
            let reading = markers.first().map(|first| {
                let cycle_end = markers.iter().any(|m| m.boundary == Boundary::CycleEnd);
                let boundary = if cycle_end {
                    &Boundary::CycleEnd
                } else {
                    &first.boundary
                };
                tree.read(first.at_ns, boundary.depth())
            });
            for mut event in events_of_line {
                if let MarkerEvent::Marker(marker) = &mut event {
                    marker.reading = reading.clone();
                }
                let _ = events.send(event);
            }
        }
        // After the markers: whoever sees the line knows its marker is already queued.
        write(&buffer[..n]);
        // A line longer than this is not a marker; do not let it grow without bound.
        if pending.len() > 1 << 20 {
            pending.clear();
        }
    }
}

/// How long `--cycle-cmd` waits before starting its command again after it exits.
const CYCLE_CMD_RESTART: Duration = Duration::from_secs(1);

/// `--cycle-cmd`: a shell command whose output lines are read for markers and figures like the
/// worker's own, run as the invoking user, in a process group of its own, restarted when it
/// exits; stopped with the trace, and by its death signal if leaktrace dies.
pub struct CycleCommand {
    stop: Arc<AtomicBool>,
    /// The running command's pid (its process group), 0 between runs.
    pid: Arc<AtomicI32>,
    supervisor: Option<std::thread::JoinHandle<u32>>,
}

impl CycleCommand {
    pub fn start(
        command: &str,
        identity: Option<Identity>,
        rules: LineRules,
        events: Sender,
        tree: TreeReader,
    ) -> CycleCommand {
        let stop = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(AtomicI32::new(0));
        let (stopping, running) = (stop.clone(), pid.clone());
        let command = command.to_string();
        // The command's parent is this thread, which lives as long as the trace: its death
        // signal comes when leaktrace dies, not when some thread of the runtime ends.
        let supervisor = std::thread::spawn(move || {
            let mut runs = 0;
            while !stopping.load(Ordering::SeqCst) {
                runs += 1;
                match spawn_cycle_command(&command, identity.as_ref()) {
                    Ok(mut child) => {
                        running.store(child.id() as i32, Ordering::SeqCst);
                        if let Some(stdout) = child.stdout.take() {
                            scan_stream(stdout, |_| {}, &rules, &events, &tree);
                        }
                        let _ = child.wait();
                        running.store(0, Ordering::SeqCst);
                    }
                    Err(e) => tracing::warn!("--cycle-cmd {command:?}: {e}"),
                }
                let until = std::time::Instant::now() + CYCLE_CMD_RESTART;
                while !stopping.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            runs
        });
        CycleCommand {
            stop,
            pid,
            supervisor: Some(supervisor),
        }
    }

    /// Stops the command (SIGTERM to its group, SIGKILL a second later) and waits for it;
    /// returns how many times it was started.
    pub fn stop(mut self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        let supervisor = self.supervisor.take().expect("stopped once");
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            let pid = self.pid.load(Ordering::SeqCst);
            if pid > 0 {
                // SAFETY: signalling the process group of a child of ours that has not been
                // reaped (the supervisor reaps it only after its output ends).
                unsafe { libc::kill(-pid, signal) };
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while !supervisor.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if supervisor.is_finished() {
                break;
            }
        }
        supervisor.join().unwrap_or(0)
    }
}

fn spawn_cycle_command(
    command: &str,
    identity: Option<&Identity>,
) -> std::io::Result<std::process::Child> {
    let identity = identity.cloned();
    let mut shell = std::process::Command::new("/bin/sh");
    shell
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec (setgroups, setgid, setuid,
    // prctl), on memory allocated before the fork.
    unsafe {
        shell.pre_exec(move || {
            if let Some(identity) = &identity {
                become_user(identity)?;
            }
            // After the identity: changing credentials clears the death signal.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    shell.spawn()
}

/// Writes all of `bytes` to a standard stream, ignoring a closed pipe.
pub fn write_stream(stream: &mut impl Write, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
    let _ = stream.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_numeric_key_values_anywhere_in_a_line() {
        let (values, bad) =
            key_values("cycle 3 done heapUsed=52428800 external=1.5e6 note=abc url=http://x?a=1");
        assert_eq!(
            values,
            BTreeMap::from([("heapUsed".into(), 52428800.0), ("external".into(), 1.5e6)])
        );
        assert_eq!(bad, ["note=abc", "url=http://x?a=1"]);
    }

    #[test]
    fn the_socket_protocol_has_cycles_and_named_phases() {
        let (boundary, values) = parse_protocol_line("cycle heapUsed=10").unwrap();
        assert_eq!((boundary, values["heapUsed"]), (Boundary::CycleEnd, 10.0));
        let (boundary, values) = parse_protocol_line("phase scrape").unwrap();
        assert_eq!(boundary, Boundary::PhaseStart("scrape".into()));
        assert!(values.is_empty());
        assert!(parse_protocol_line("phase").is_err());
        assert!(parse_protocol_line("phase heap=1").is_err());
        assert!(parse_protocol_line("hello").is_err());
        assert!(parse_protocol_line("cycle heapUsed=lots").is_err());
    }

    #[test]
    fn regex_rules_name_phases_by_group_and_end_cycles() {
        let rules =
            LineRules::new(Some(r"cycle \d+ done"), Some(r"phase (?P<phase>\w+)"), None).unwrap();
        let kinds = |line: &str| -> Vec<String> {
            rules
                .scan(line)
                .into_iter()
                .map(|e| match e {
                    MarkerEvent::Marker(m) => format!("{:?} {:?}", m.boundary, m.values),
                    MarkerEvent::Malformed(r) => format!("malformed {r}"),
                    MarkerEvent::Figures(f) => format!("figures {f:?}"),
                })
                .collect()
        };
        assert_eq!(kinds("phase scrape"), [r#"PhaseStart("scrape") {}"#]);
        assert_eq!(
            kinds("cycle 4 done heapUsed=7"),
            [r#"CycleEnd {"heapUsed": 7.0}"#]
        );
        assert!(kinds("unrelated output heapUsed=7").is_empty());
        assert_eq!(
            kinds("cycle 5 done by=me").len(),
            1,
            "words in a log line are not figures"
        );
        let first_group = LineRules::new(None, Some(r"== (\w+) =="), None).unwrap();
        assert!(
            matches!(&first_group.scan("== idle ==")[0], MarkerEvent::Marker(m) if m.boundary == Boundary::PhaseStart("idle".into()))
        );
        assert!(LineRules::new(Some("("), None, None).is_err());
    }

    #[test]
    fn amounts_take_decimal_and_binary_units() {
        assert_eq!(parse_amount("4096"), Some(4096.0));
        assert_eq!(parse_amount("12.5MB"), Some(12.5e6));
        assert_eq!(parse_amount("3.2 MiB"), Some(3.2 * 1048576.0));
        assert_eq!(parse_amount("1.2GB"), Some(1.2e9));
        assert_eq!(parse_amount("2KiB"), Some(2048.0));
        assert_eq!(parse_amount("7kb"), Some(7000.0));
        assert_eq!(parse_amount("512 B"), Some(512.0));
        assert_eq!(parse_amount("5 parsecs"), None);
        assert_eq!(parse_amount("MB"), None);
    }

    #[test]
    fn figures_come_from_any_matching_line_by_named_group() {
        let rules = LineRules::new(
            Some(r"cycle \d+ done"),
            None,
            Some(r"heapUsed=(?P<heapUsed>\S+) .*external=(?P<external>\S+)"),
        )
        .unwrap();
        let events = rules.scan("mem rss=120.0MB heapUsed=45.6MB heapTotal=50.0MB external=1.2MB");
        let [MarkerEvent::Figures(figures)] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(
            figures,
            &BTreeMap::from([("heapUsed".into(), 45.6e6), ("external".into(), 1.2e6)])
        );
        // On a marker line the figures go with the marker.
        let events = rules.scan("cycle 3 done heapUsed=2KiB x external=1");
        let [MarkerEvent::Marker(marker)] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(marker.values["heapUsed"], 2048.0);
        assert_eq!(marker.values["external"], 1.0);
        let bad = rules.scan("heapUsed=lots and external=1MB");
        assert!(matches!(&bad[0], MarkerEvent::Malformed(m) if m.contains("heapUsed")));
        assert!(matches!(
            LineRules::new(None, None, Some(r"heap=(\d+)")),
            Err(MarkerError::UnnamedFigures)
        ));
        assert!(rules.scan("unrelated line").is_empty());
    }
}

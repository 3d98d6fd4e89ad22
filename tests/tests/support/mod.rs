//! What every integration test needs: root (or a loud skip outside CI), the binaries, a scratch
//! directory, and child processes that are killed when the test ends, however it ends.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Output, Stdio},
};

use leaktrace::trace::Trace;

/// True when the test may run. Outside CI a non-root run skips with a message; in CI
/// (`CI=true`, as root) a skip is a failure.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: needs root, and in CI it must not skip");
    }
    eprintln!("SKIPPED {test}: needs root (run `sudo cargo xtask test`)");
    false
}

/// Debian's Chromium, which `cargo xtask setup` installs: true when it is there. Outside CI a
/// missing browser skips the test with a message; in CI it is a failure.
pub fn require_chromium(test: &str) -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {CHROMIUM} is missing; `cargo xtask setup` installs it");
    }
    eprintln!("SKIPPED {test}: {CHROMIUM} missing (run `cargo xtask setup`)");
    false
}

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A figure of leaktrace's `/metrics` on `port` (the sample without labels, or with exactly
/// `labels` as written: `{what="pages"}`), read over HTTP/1.0; None while it does not answer.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The leaktrace options that read the cycler fixture's `--markers stdout` lines.
pub const CYCLER_REGEX: [&str; 4] = [
    "--cycle-regex",
    r"cycle \d+ done",
    "--phase-regex",
    r"^phase (\w+)",
];

/// A fixture binary of this package.
pub fn fixture(name: &str) -> PathBuf {
    let ledger = PathBuf::from(env!("CARGO_BIN_EXE_ledger"));
    ledger.with_file_name(name)
}

/// The leaktrace binary, built into the same target directory (`cargo xtask test` builds it).
pub fn leaktrace() -> PathBuf {
    let path = fixture("leaktrace");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p tracer` first",
        path.display()
    );
    path
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("leaktrace-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Guard(Option<Child>);

impl Guard {
    pub fn pid(&self) -> u32 {
        self.child_ref().id()
    }

    fn child_ref(&self) -> &Child {
        self.0.as_ref().expect("child already taken")
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child already taken")
    }

    /// Waits for the child to end by itself and collects its output.
    pub fn wait_output(mut self) -> Output {
        self.0
            .take()
            .expect("child already taken")
            .wait_with_output()
            .expect("wait for child")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command to completion; its failure fails the test with its stderr.
pub fn succeeded(command: &mut Command) -> Output {
    let output = command.output().expect("run the command");
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `leaktrace diff BEFORE AFTER --budget 5MiB/day`: its exit code and its report.
pub fn diff_within_5mib_a_day(before: &Path, after: &Path) -> (Option<i32>, String) {
    let output = Command::new(leaktrace())
        .arg("diff")
        .arg(before)
        .arg(after)
        .args(["--budget", "5MiB/day"])
        .output()
        .expect("run leaktrace diff");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Panics, showing the verdict, unless a line of the trace's verdict evidence mentions `text`.
pub fn assert_evidence_mentions(trace: &Trace, text: &str) {
    assert!(
        trace
            .analysis
            .verdict
            .evidence
            .iter()
            .any(|e| e.contains(text)),
        "no evidence mentions {text:?}: {:?}",
        trace.analysis.verdict
    );
}

/// Runs leaktrace to completion and reads the trace it wrote to `json`.
pub fn leaktrace_run(args: &[&str], json: &Path) -> (Output, Trace) {
    let output = Command::new(leaktrace())
        .args(args)
        .output()
        .expect("run leaktrace");
    assert!(
        output.status.success(),
        "leaktrace {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let trace = Trace::read(json).unwrap_or_else(|e| panic!("reading {}: {e:#}", json.display()));
    (output, trace)
}

/// Reads stderr lines until one contains `needle`, returning the reader for the rest.
pub fn wait_for_line(stderr: ChildStderr, needle: &str) -> BufReader<ChildStderr> {
    let mut reader = BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read stderr");
        assert!(n > 0, "stderr closed before a line containing {needle:?}");
        if line.contains(needle) {
            return reader;
        }
    }
}

/// Spawns with piped stdio under a kill-on-drop guard.
pub fn spawn(command: &mut Command) -> Guard {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    Guard(Some(child.expect("spawn")))
}

/// What a page showed when opened in headless Chromium (see [`open_html`]).
pub struct Opened {
    /// Requests for anything but the page itself.
    pub requests: Vec<String>,
    /// Console errors and uncaught exceptions.
    pub errors: usize,
    /// Each `figure.plot`: its series and its number of points.
    pub plots: Vec<(String, u64)>,
    /// The whole page, as PNG.
    pub screenshot: Vec<u8>,
    /// What a 1200×900 window shows first, as PNG.
    pub first_screen: Vec<u8>,
}

/// Opens an HTML file in real headless Chromium (a profile of its own in `profile`).
pub fn open_html(html: &Path, profile: &Path) -> Opened {
    use chromiumoxide::{
        Browser, BrowserConfig,
        cdp::{
            browser_protocol::network::EventRequestWillBeSent,
            js_protocol::runtime::{EventConsoleApiCalled, EventExceptionThrown},
        },
        page::ScreenshotParams,
    };
    use futures::StreamExt;
    use std::time::Duration;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = BrowserConfig::builder()
            .chrome_executable(CHROMIUM)
            .no_sandbox()
            .user_data_dir(profile)
            .window_size(1200, 900)
            .viewport(None)
            .arg("disable-background-networking")
            .build()
            .unwrap();
        let (mut browser, mut handler) = Browser::launch(config).await.unwrap();
        let driver = tokio::spawn(async move { while handler.next().await.is_some() {} });
        let page = browser.new_page("about:blank").await.unwrap();
        let mut requests = page.event_listener::<EventRequestWillBeSent>().await.unwrap();
        let mut console = page.event_listener::<EventConsoleApiCalled>().await.unwrap();
        let mut exceptions = page.event_listener::<EventExceptionThrown>().await.unwrap();
        let url = format!("file://{}", html.display());
        page.goto(&url).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let plots: Vec<(String, u64)> = page
            .evaluate("[...document.querySelectorAll('figure.plot')].map(f => [f.dataset.series, f.querySelectorAll('circle').length])")
            .await
            .unwrap()
            .into_value()
            .unwrap();
        let screenshot = page
            .screenshot(ScreenshotParams::builder().full_page(true).build())
            .await
            .unwrap();
        let first_screen = page
            .screenshot(ScreenshotParams::builder().build())
            .await
            .unwrap();
        let quiet = Duration::from_millis(100);
        let mut other_requests = Vec::new();
        while let Ok(Some(request)) = tokio::time::timeout(quiet, requests.next()).await {
            if request.request.url != url {
                other_requests.push(request.request.url.clone());
            }
        }
        let mut errors = 0;
        while let Ok(Some(message)) = tokio::time::timeout(quiet, console.next()).await {
            errors += usize::from(format!("{:?}", message.r#type).to_lowercase().contains("error"));
        }
        while let Ok(Some(_)) = tokio::time::timeout(quiet, exceptions.next()).await {
            errors += 1;
        }
        let _ = browser.close().await;
        let _ = browser.wait().await;
        driver.abort();
        Opened {
            requests: other_requests,
            errors,
            plots,
            screenshot,
            first_screen,
        }
    })
}

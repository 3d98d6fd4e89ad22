//! Fixture: a scraper-like worker driving real Chromium (Debian's) through chromiumoxide.
//!
//! `browser_worker --contexts M --pages K --cycles N [--retain-mb X] [--kill-browser-after C]
//!  [--pipe] [--profile DIR]`
//!
//! Opens K pages in each of M browser contexts (the default one and M-1 more), each at a
//! distinct `data:` URL, then runs N cycles: in each, the first page's JavaScript keeps X MiB
//! more (an array of doubles), and the worker prints `cycle k done`. At the end every page
//! reports what it sees (`ops {...}`: title, viewport, element count, the kept length), so a test
//! can compare a traced run with an untraced one. `--kill-browser-after C` kills the browser
//! after cycle C and goes on. `--pipe` launches Chromium the way Playwright does, with
//! `--remote-debugging-pipe` and no port, and only prints the cycles.

use leaktrace_tests::arg_value;
use std::{os::unix::process::CommandExt, process::Stdio, time::Duration};

use chromiumoxide::{
    Browser, BrowserConfig,
    cdp::{
        browser_protocol::target::{CreateBrowserContextParams, CreateTargetParams},
        js_protocol::heap_profiler::CollectGarbageParams,
    },
};
use futures::StreamExt;

fn number(args: &[String], name: &str, default: usize) -> usize {
    arg_value(args, name).map_or(default, |v| v.parse().expect("a number"))
}

const FLAGS: [&str; 7] = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=BackForwardCache",
];

/// Playwright's way: no port, the protocol on fds 3 and 4.
fn run_pipe_mode(profile: &str, cycles: usize) {
    let (mut to_browser, mut from_browser) = ([0; 2], [0; 2]);
    // SAFETY: pipe(2) into two-element arrays.
    assert!(unsafe {
        libc::pipe(to_browser.as_mut_ptr()) == 0 && libc::pipe(from_browser.as_mut_ptr()) == 0
    });
    let (read_end, write_end) = (to_browser[0], from_browser[1]);
    let mut command = std::process::Command::new("/usr/bin/chromium");
    command
        .args(["--headless", "--no-sandbox", "--remote-debugging-pipe"])
        .args(FLAGS)
        .arg(format!("--user-data-dir={profile}"))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 between fork and exec puts the pipe ends where Chromium expects them.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(read_end, 3) < 0 || libc::dup2(write_end, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut browser = command.spawn().expect("start chromium");
    for k in 1..=cycles {
        std::thread::sleep(Duration::from_millis(700));
        println!("cycle {k} done");
    }
    let _ = browser.kill();
    let _ = browser.wait();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let contexts = number(&args, "--contexts", 1);
    let pages_per_context = number(&args, "--pages", 1);
    let cycles = number(&args, "--cycles", 3);
    let retain_mib = number(&args, "--retain-mb", 0);
    let kill_after = arg_value(&args, "--kill-browser-after").map(|v| v.parse::<usize>().unwrap());
    let profile = arg_value(&args, "--profile")
        .unwrap_or_else(|| format!("/tmp/browser-worker-{}", std::process::id()));
    if args.iter().any(|a| a == "--pipe") {
        run_pipe_mode(&profile, cycles);
        return;
    }

    let mut config = BrowserConfig::builder()
        .chrome_executable("/usr/bin/chromium")
        .no_sandbox()
        .user_data_dir(&profile)
        .launch_timeout(Duration::from_secs(60));
    // chromiumoxide adds the leading dashes itself.
    for flag in FLAGS {
        config = config.arg(flag.trim_start_matches('-'));
    }
    let (mut browser, mut handler) = Browser::launch(config.build().unwrap())
        .await
        .expect("launch chromium");
    let driver = tokio::spawn(async move { while handler.next().await.is_some() {} });

    // The page Chromium opened at start becomes the first one (closing the last page makes it
    // open another).
    let mut initial = browser.pages().await.unwrap();
    let mut pages = Vec::new();
    for c in 0..contexts {
        let context = if c == 0 {
            None
        } else {
            Some(
                browser
                    .create_browser_context(CreateBrowserContextParams::default())
                    .await
                    .unwrap(),
            )
        };
        for p in 0..pages_per_context {
            let url =
                format!("data:text/html,<title>c{c}p{p}</title><p>page {p} of context {c}</p>");
            if c == 0 && p == 0 && !initial.is_empty() {
                let page = initial.remove(0);
                page.goto(url).await.expect("open the first page");
                pages.push(page);
                continue;
            }
            let mut target = CreateTargetParams::new(url);
            target.browser_context_id = context.clone();
            pages.push(browser.new_page(target).await.expect("open a page"));
        }
    }
    println!("pages {}", pages.len());

    // Doubles pushed one by one: a packed double array, 8 bytes each, on the JS heap.
    let retain = format!(
        "{{ const a = []; for (let i = 0; i < {}; i++) a.push(i + 0.5); (window.kept = window.kept || []).push(a); }} window.kept.length",
        retain_mib * (1 << 20) / 8
    );
    for k in 1..=cycles {
        if retain_mib > 0 {
            pages[0].evaluate(retain.as_str()).await.expect("retain");
            // Collect garbage, so the heap the tracer reads is what the page keeps.
            pages[0]
                .execute(CollectGarbageParams::default())
                .await
                .expect("collect garbage");
        }
        println!("cycle {k} done");
        // Idle after the marker, so the tracer reads the browser before the next cycle's work
        // (the marker is asynchronous: under a loaded CI machine the read can take a second).
        tokio::time::sleep(Duration::from_millis(2000)).await;
        if kill_after == Some(k) {
            let _ = browser.kill().await;
        }
    }
    if kill_after.is_none() {
        let ops = "JSON.stringify({title: document.title, width: innerWidth, height: innerHeight, \
                   elements: document.querySelectorAll('*').length, kept: (window.kept || []).length, \
                   webdriver: navigator.webdriver === true})";
        for page in &pages {
            let seen = page.evaluate(ops).await.expect("ops");
            println!("ops {}", seen.into_value::<String>().unwrap());
        }
        let _ = browser.close().await;
        let _ = browser.wait().await;
    }
    driver.abort();
    let _ = std::fs::remove_dir_all(&profile);
}

//! Fixture: the leak zoo. A scraper-like worker driving real Chromium in cycles of phases
//! (`scrape`, `cleanup`, `idle`), marked on leaktrace's socket (`LEAKTRACE_MARKER`, waiting for
//! each answer, so every boundary is exact), with one switchable leak:
//!
//! - `none`: makes 2 MiB of garbage in a page and collects it (stable after warm-up);
//! - `worker-heap`: keeps 4 MiB of its own heap per cycle (reported as `heapUsed`);
//! - `worker-external`: keeps a 4 MiB mapping outside its heap per cycle (`external`);
//! - `pages`: opens a page per cycle and never closes it;
//! - `contexts`: a browser context (with a page) per cycle, never disposed;
//! - `in-page`: one page keeps 4 MiB more JS data every cycle;
//! - `in-page-buffers`: one page keeps a 4 MiB ArrayBuffer more every cycle (its backing store
//!   is outside V8's heap, in PartitionAlloc);
//! - `accelerating`: keeps k × 1 MiB of its heap in cycle k;
//! - `cleanup-only`: keeps 4 MiB per cycle, in the cleanup phase;
//! - `sawtooth`: takes 8 MiB in scrape and gives it all back in cleanup.
//!
//! `zoo --leak PATTERN --cycles N [--recreate-every K] [--profile DIR] [--proc-truth]
//! [--keep-kib K] [--idle-ms MS]`. `--keep-kib` makes `worker-heap` and `worker-external` keep K
//! KiB a cycle rather than 4 MiB (a slow leak for long runs); `--idle-ms`, the idle phase's
//! length (default 100). With
//! `--recreate-every K`, every K cycles it closes the pages and contexts it kept and starts
//! over. With `--proc-truth`, every cycle marker carries `treeOwned=`: the PSS its own process
//! tree owns (Pss_Anon + Pss_Shmem), read from /proc just before the marker, for the tests to
//! check leaktrace against. Without LEAKTRACE_MARKER it prints the markers instead.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use chromiumoxide::{
    Browser, BrowserConfig, Page,
    cdp::{
        browser_protocol::target::{CreateBrowserContextParams, CreateTargetParams},
        js_protocol::{heap_profiler::CollectGarbageParams, runtime::GetHeapUsageParams},
    },
};
use futures::StreamExt;
use leaktrace_tests::{arg_value, proc::tree_owned_pss, sys::map_and_touch};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

/// Where markers go: leaktrace's socket (answered), or stdout.
struct Markers(Option<BufReader<UnixStream>>);

impl Markers {
    fn send(&mut self, line: &str) {
        match &mut self.0 {
            Some(socket) => {
                socket
                    .get_mut()
                    .write_all(format!("{line}\n").as_bytes())
                    .unwrap();
                let mut answer = String::new();
                socket.read_line(&mut answer).unwrap();
            }
            None => println!("{line}"),
        }
    }
}

/// Memory the worker itself keeps: touched pages of a Vec, or of a private mapping.
#[derive(Default)]
struct Kept {
    heap: Vec<Vec<u8>>,
    heap_bytes: usize,
    mappings: Vec<(*mut libc::c_void, usize)>,
    external_bytes: usize,
}

impl Kept {
    fn heap(&mut self, bytes: usize) {
        let mut block = vec![0u8; bytes];
        block.iter_mut().step_by(PAGE).for_each(|b| *b = 1);
        self.heap.push(block);
        self.heap_bytes += bytes;
    }

    fn external(&mut self, bytes: usize) {
        self.mappings.push((map_and_touch(bytes).cast(), bytes));
        self.external_bytes += bytes;
    }

    fn release_all(&mut self) {
        self.heap.clear();
        self.heap.shrink_to_fit();
        self.heap_bytes = 0;
        for (ptr, len) in self.mappings.drain(..) {
            // SAFETY: a mapping made above, unmapped once.
            unsafe { libc::munmap(ptr, len) };
        }
        self.external_bytes = 0;
    }
}

async fn open_page(
    browser: &Browser,
    context: Option<chromiumoxide::cdp::browser_protocol::browser::BrowserContextId>,
    n: usize,
) -> Page {
    let mut target = CreateTargetParams::new(format!(
        "data:text/html,<title>zoo {n}</title><p>{}</p>",
        "x".repeat(2000)
    ));
    target.browser_context_id = context;
    browser.new_page(target).await.expect("open a page")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let leak = arg_value(&args, "--leak").unwrap_or_else(|| "none".into());
    let cycles: usize = arg_value(&args, "--cycles").map_or(30, |v| v.parse().unwrap());
    let recreate_every: Option<usize> =
        arg_value(&args, "--recreate-every").map(|v| v.parse().unwrap());
    let proc_truth = args.iter().any(|a| a == "--proc-truth");
    let keep =
        arg_value(&args, "--keep-kib").map_or(4 * MIB, |v| v.parse::<usize>().unwrap() * 1024);
    let idle =
        Duration::from_millis(arg_value(&args, "--idle-ms").map_or(100, |v| v.parse().unwrap()));
    let profile =
        arg_value(&args, "--profile").unwrap_or_else(|| format!("/tmp/zoo-{}", std::process::id()));
    let mut markers = Markers(
        std::env::var("LEAKTRACE_MARKER")
            .ok()
            .map(|path| BufReader::new(UnixStream::connect(path).unwrap())),
    );

    let mut config = BrowserConfig::builder()
        .chrome_executable("/usr/bin/chromium")
        .no_sandbox()
        .user_data_dir(&profile);
    for flag in [
        "disable-gpu",
        "disable-quic",
        "no-first-run",
        "disable-background-networking",
        "disable-component-update",
        "disable-sync",
        "disable-features=BackForwardCache",
    ] {
        config = config.arg(flag);
    }
    let (mut browser, mut handler) = Browser::launch(config.build().unwrap())
        .await
        .expect("launch chromium");
    let driver = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let main_page = browser
        .new_page("data:text/html,<title>zoo main</title>")
        .await
        .expect("the main page");

    let mut kept = Kept::default();
    let mut kept_pages: Vec<Page> = Vec::new();
    let mut kept_contexts = Vec::new();
    for k in 1..=cycles {
        if recreate_every.is_some_and(|every| k > 1 && (k - 1) % every == 0) {
            markers.send("phase recreate");
            for page in kept_pages.drain(..) {
                let _ = page.close().await;
            }
            for context in kept_contexts.drain(..) {
                let _ = browser.dispose_browser_context(context).await;
            }
            kept.release_all();
        }
        markers.send("phase scrape");
        match leak.as_str() {
            "none" => {
                // Work that leaves nothing behind: garbage in the page, collected.
                let scratch =
                    "{ const a = []; for (let i = 0; i < 262144; i++) a.push(i + 0.5); a.length }";
                main_page.evaluate(scratch).await.unwrap();
                main_page
                    .execute(CollectGarbageParams::default())
                    .await
                    .unwrap();
            }
            "worker-heap" => kept.heap(keep),
            "worker-external" => kept.external(keep),
            "pages" => kept_pages.push(open_page(&browser, None, k).await),
            "contexts" => {
                let context = browser
                    .create_browser_context(CreateBrowserContextParams::default())
                    .await
                    .unwrap();
                kept_pages.push(open_page(&browser, Some(context.clone()), k).await);
                kept_contexts.push(context);
            }
            "in-page" => {
                let keep = format!(
                    "{{ const a = []; for (let i = 0; i < {}; i++) a.push(i + 0.5); (window.kept = window.kept || []).push(a); }} 0",
                    4 * MIB / 8
                );
                main_page.evaluate(keep.as_str()).await.unwrap();
                main_page
                    .execute(CollectGarbageParams::default())
                    .await
                    .unwrap();
            }
            "in-page-buffers" => {
                // Touched, so that every page of the backing store is resident.
                let keep = format!(
                    "{{ (window.kept = window.kept || []).push(new Uint8Array({}).fill(1)); }} 0",
                    4 * MIB
                );
                main_page.evaluate(keep.as_str()).await.unwrap();
                main_page
                    .execute(CollectGarbageParams::default())
                    .await
                    .unwrap();
            }
            "accelerating" => kept.heap(k * MIB),
            // A mapping of its own: freed heap memory would stay in the allocator's arena.
            "sawtooth" => kept.external(8 * MIB),
            "cleanup-only" => {}
            other => panic!("unknown leak {other}"),
        }
        markers.send("phase cleanup");
        match leak.as_str() {
            "cleanup-only" => kept.heap(4 * MIB),
            "sawtooth" => kept.release_all(),
            _ => {}
        }
        markers.send("phase idle");
        tokio::time::sleep(idle).await;
        // The worker's own reading of its main page's JS heap (after a GC): the truth that
        // leaktrace's DevTools reading is checked against.
        main_page
            .execute(CollectGarbageParams::default())
            .await
            .unwrap();
        let page_heap = main_page
            .execute(GetHeapUsageParams::default())
            .await
            .unwrap()
            .result
            .used_size;
        let mut cycle = format!(
            "cycle heapUsed={} external={} pageHeap={page_heap}",
            kept.heap_bytes, kept.external_bytes
        );
        if proc_truth {
            cycle += &format!(" treeOwned={}", tree_owned_pss(std::process::id()));
        }
        markers.send(&cycle);
        // After the answer: the cycle is in the trace (tests wait for this line).
        println!("cycle {k} marked");
    }
    let _ = browser.close().await;
    let _ = browser.wait().await;
    driver.abort();
    let _ = std::fs::remove_dir_all(&profile);
}

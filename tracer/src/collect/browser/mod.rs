//! The browser's view, over the DevTools protocol: pages and browser contexts, their URLs and
//! JS heaps, Chromium's own list of its processes, and which renderer holds which page.
//!
//! leaktrace is a second client of somebody else's browser, so it stays read-only: it never
//! navigates, closes or changes a page, never sets emulation, security or network options, and
//! enables no domain. Which renderer holds a page is only found on request
//! (`--page-renderers`): no CDP call returns it, and the one way that works, a one-off timeline
//! trace, starts Chromium's tracing service, a `utility:tracing` process that stays and grows
//! with every page traced (+7 MB a cycle measured with a page per cycle). That is why it
//! drives chromiumoxide's [`Connection`] directly, with chromiumoxide's typed commands, instead
//! of its `Browser` handler, which attaches to every page and configures it (viewport,
//! certificate errors, network). Every call has a timeout; a dropped connection is counted and
//! retried later, never fatal.
//!
//! [`endpoint`] finds where to connect, [`cdp`] holds one connection; this module reads the
//! views the session records.

mod cdp;
mod endpoint;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chromiumoxide::cdp::browser_protocol::{
    memory::GetDomCountersParams,
    system_info::GetProcessInfoParams,
    target::{
        AttachToTargetParams, DetachFromTargetParams, GetBrowserContextsParams, GetTargetsParams,
        SessionId, TargetInfo,
    },
};
use serde::{Deserialize, Serialize};

pub use self::cdp::CallCost;
use self::cdp::{Cdp, heap_usage, memory_dump, renderer_pid};
pub use self::endpoint::{CdpMode, Endpoint, endpoint_of};

/// A Node worker's own heap, through its inspector (`node --inspect`): Runtime.getHeapUsage.
pub struct WorkerInspector {
    endpoint: String,
    pub failed_calls: u64,
}

impl WorkerInspector {
    pub fn new(endpoint: String) -> WorkerInspector {
        WorkerInspector {
            endpoint,
            failed_calls: 0,
        }
    }

    /// `inspect.heapUsed` and `inspect.heapTotal`, to go with the worker's other figures. The
    /// connection lasts one read: Node waits at exit for its debugger to leave.
    pub async fn read(&mut self) -> BTreeMap<String, f64> {
        let mut figures = BTreeMap::new();
        let Ok(cdp) = Cdp::connect(&self.endpoint).await else {
            self.failed_calls += 1;
            return figures;
        };
        let cdp = &cdp;
        match heap_usage(cdp, None).await {
            Ok((used, total)) => {
                figures.insert("inspect.heapUsed".to_string(), used as f64);
                figures.insert("inspect.heapTotal".to_string(), total as f64);
            }
            Err(_) => self.failed_calls += 1,
        }
        figures
    }
}

/// One page as the browser reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PageView {
    pub target_id: String,
    pub url: String,
    pub context: Option<String>,
    /// Runtime.getHeapUsage of the page's isolate.
    pub js_heap_used: u64,
    pub js_heap_total: u64,
    /// Memory.getDOMCounters.
    pub nodes: i64,
    pub documents: i64,
    pub js_event_listeners: i64,
    /// The renderer holding the page (from a one-off timeline trace, with `--page-renderers`).
    pub renderer_pid: Option<u32>,
    /// A page of Chromium's own (chrome://, devtools://): listed, not counted in `pages`.
    pub internal: bool,
}

/// One of Chromium's processes as SystemInfo.getProcessInfo lists it, with the role /proc gave it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrowserProcess {
    pub pid: u32,
    /// Chromium's own type: browser, renderer, GPU, network.mojom.NetworkService, ...
    pub cdp_type: String,
    /// leaktrace's role for the pid, if it traces it.
    pub role: Option<crate::collect::roles::Role>,
}

/// What the browser holds at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrowserView {
    /// The worker's pages: every page target but Chromium's own (chrome://, devtools://).
    pub pages: u32,
    /// Browser contexts: the default one and every other.
    pub contexts: u32,
    pub urls: Vec<String>,
    /// Sum over pages.
    pub js_heap_used: u64,
    pub page_list: Vec<PageView>,
    pub processes: Vec<BrowserProcess>,
    /// Every DevTools target by type: page, iframe, service_worker, worker, browser_ui, ...
    pub targets_by_type: BTreeMap<String, u32>,
    /// Calls that failed or timed out while reading this view.
    pub failed_calls: u64,
}

/// The pages and contexts open at one view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub pages: u32,
    pub contexts: u32,
}

impl Counts {
    /// Whether the worker recreated pages or contexts since `before`: the page or context count
    /// fell. The one rule the recreation answer and the HTML page's recreation points share.
    pub fn recreated_since(self, before: Counts) -> bool {
        self.pages < before.pages || self.contexts < before.contexts
    }
}

impl BrowserView {
    pub fn counts(&self) -> Counts {
        Counts {
            pages: self.pages,
            contexts: self.contexts,
        }
    }

    /// Keeps what the analysis reads of an older cycle's view: the counts, the JS heap, and
    /// the JS heap per site (one entry per origin of the worker's pages); drops the URLs, the
    /// pages one by one and the process list.
    pub fn compact(&mut self) {
        let mut sites: BTreeMap<String, u64> = BTreeMap::new();
        for page in self.page_list.iter().filter(|p| !p.internal) {
            *sites.entry(origin(&page.url)).or_default() += page.js_heap_used;
        }
        self.page_list = sites
            .into_iter()
            .map(|(url, js_heap_used)| PageView {
                url,
                js_heap_used,
                ..PageView::default()
            })
            .collect();
        self.urls = Vec::new();
        self.processes = Vec::new();
    }
}

/// The origin of a URL (scheme and host), or its scheme when it has no host (data:, about:).
pub fn origin(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!(
            "{scheme}://{}",
            rest.split(['/', '?', '#']).next().unwrap_or("")
        ),
        None => url.split(':').next().unwrap_or(url).to_string() + ":",
    }
}

/// One memory-infra dump (`--memory-dumps`): Chromium's own account of its allocators, per
/// process, at one cycle end.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryDump {
    /// The complete cycles before it: taken at the end of this cycle.
    pub cycle: u32,
    /// Seconds since the trace began.
    pub t_s: f64,
    /// How long the browser took for it (Tracing.start, requestMemoryDump, end and the data).
    pub seconds: f64,
    pub processes: Vec<DumpedProcess>,
}

/// One process of a memory dump.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DumpedProcess {
    pub pid: u32,
    /// leaktrace's role for the pid, if it traces it.
    pub role: Option<crate::collect::roles::Role>,
    /// Bytes per allocator, by Chromium's top-level name: v8, blink_gc, partition_alloc,
    /// malloc, cc, gpu, shared_memory, ...
    pub allocators: BTreeMap<String, u64>,
}

/// The DevTools side of a whole trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrowserSummary {
    /// "auto", "off" or "url".
    pub mode: String,
    /// The endpoint leaktrace connected to, if any.
    pub endpoint: Option<String>,
    pub connects: u64,
    pub disconnects: u64,
    pub failed_calls: u64,
    /// Cycle-end views that DevTools did not give within the deadline (left missing).
    pub late_views: u64,
    /// What could not be done, in plain words (pipe mode, unreachable endpoint, ...).
    pub notes: Vec<String>,
    /// The last view read.
    pub last: Option<BrowserView>,
    /// Each DevTools method leaktrace called (the worker inspector's apart): how often, and
    /// how long the answers took.
    pub calls: BTreeMap<String, CallCost>,
}

/// Reads the browser's view for the session; holds the connection and page sessions between
/// reads.
pub struct BrowserReader {
    mode: CdpMode,
    redact_urls: bool,
    /// Find each page's renderer (starts Chromium's tracing service: off unless asked for).
    page_renderers: bool,
    cdp: Option<Cdp>,
    /// Page target -> our session on it, and its renderer once known.
    sessions: HashMap<String, (SessionId, Option<u32>)>,
    pub summary: BrowserSummary,
    noted: BTreeSet<String>,
    /// No connection attempt before this, and the wait after the next failure: an endpoint
    /// that fails or never answers is tried again after 1, 2, 4, ... 30 s.
    retry_at: Option<std::time::Instant>,
    backoff: std::time::Duration,
}

/// The first wait after a failed connection, and the longest.
const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the browser's view at a cycle end may take: past it the view is missing for that
/// cycle, the connection is dropped (and retried later), and the trace goes on.
pub const VIEW_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

impl BrowserReader {
    /// Calls that failed elsewhere (the worker's inspector) are counted with the browser's.
    pub fn count_failed_calls(&mut self, failed: u64) {
        self.summary.failed_calls += failed;
    }

    pub fn new(mode: CdpMode, redact_urls: bool, page_renderers: bool) -> BrowserReader {
        let label = match &mode {
            CdpMode::Auto => "auto",
            CdpMode::Off => "off",
            CdpMode::Url(_) => "url",
        };
        BrowserReader {
            mode,
            redact_urls,
            page_renderers,
            cdp: None,
            sessions: HashMap::new(),
            retry_at: None,
            backoff: FIRST_BACKOFF,
            summary: BrowserSummary {
                mode: label.to_string(),
                ..BrowserSummary::default()
            },
            noted: BTreeSet::new(),
        }
    }

    /// Says something once, in the trace's notes and on stderr.
    fn note(&mut self, note: String) {
        self.note_once(note.clone(), note);
    }

    /// Says `note` the first time `key` comes up.
    fn note_once(&mut self, key: String, note: String) {
        if self.noted.insert(key) {
            tracing::info!("{note}");
            self.summary.notes.push(note);
        }
    }

    /// Keeps `note` in the trace only, the first time it comes up.
    fn note_quietly(&mut self, note: String) {
        if self.noted.insert(note.clone()) {
            self.summary.notes.push(note);
        }
    }

    pub fn is_connected(&self) -> bool {
        self.cdp.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Connects if not connected: to `--cdp URL`, or to an endpoint found on the command line
    /// of one of `browsers` (pid, command line, home directory).
    pub async fn ensure_connected(
        &mut self,
        browsers: &[(u32, Vec<String>, Option<std::path::PathBuf>)],
    ) {
        if self.is_connected() {
            return;
        }
        if self.cdp.take().is_some() {
            self.summary.disconnects += 1;
            self.sessions.clear();
            self.note("the DevTools connection dropped; leaktrace reconnects when it can".into());
        }
        let endpoint = match &self.mode {
            CdpMode::Off => return,
            CdpMode::Url(url) => Some(url.clone()),
            CdpMode::Auto => {
                let mut found = None;
                for (pid, cmdline, home) in browsers {
                    match endpoint_of(cmdline, home.as_deref()) {
                        Endpoint::Url(url) => {
                            found = Some(url);
                            break;
                        }
                        Endpoint::Pipe => self.note_once(
                            "pipe".into(),
                            format!(
                                "browser {pid} was launched with --remote-debugging-pipe (Playwright's default): it has no \
                                 DevTools port to read pages and JS heaps from. Launch it with \
                                 `args: ['--remote-debugging-port=0']` to let leaktrace see them; the kernel and /proc view \
                                 goes on."
                            ),
                        ),
                        Endpoint::NotYet | Endpoint::None => {}
                    }
                }
                found
            }
        };
        let Some(endpoint) = endpoint else { return };
        if self
            .retry_at
            .is_some_and(|at| std::time::Instant::now() < at)
        {
            return;
        }
        match Cdp::connect(&endpoint).await {
            Ok(cdp) => {
                self.cdp = Some(cdp);
                self.summary.connects += 1;
                self.summary.endpoint = Some(endpoint);
                (self.retry_at, self.backoff) = (None, FIRST_BACKOFF);
            }
            Err(e) => {
                self.note(format!("DevTools endpoint {endpoint}: {e}"));
                self.back_off();
            }
        }
    }

    /// No connection attempt for a while, twice as long as the last time.
    /// A new instance of a followed worker: its browser will be a new one. The connection to
    /// the last one is dropped and the next is tried as soon as it shows up, not after the
    /// back-off its closing browser's refusals built up.
    pub fn start_over(&mut self) {
        if self.cdp.take().is_some() {
            self.summary.disconnects += 1;
        }
        self.sessions.clear();
        (self.retry_at, self.backoff) = (None, FIRST_BACKOFF);
    }

    fn back_off(&mut self) {
        self.retry_at = Some(std::time::Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// [`Self::read`] within [`VIEW_DEADLINE`]: an endpoint that does not answer in time loses
    /// its connection (and is retried later, see `retry_at`), and this view is missing.
    pub async fn read_within_deadline(&mut self) -> Option<BrowserView> {
        if !self.is_connected() {
            return None;
        }
        match tokio::time::timeout(VIEW_DEADLINE, self.read()).await {
            Ok(view) => view,
            Err(_) => {
                self.summary.late_views += 1;
                self.cdp = None;
                self.sessions.clear();
                self.summary.disconnects += 1;
                self.note_once(
                    "late".into(),
                    format!(
                        "DevTools did not answer within {VIEW_DEADLINE:?}: that cycle's browser view is missing, \
                         and leaktrace reconnects later; the kernel and /proc view goes on"
                    ),
                );
                self.back_off();
                None
            }
        }
    }

    /// A memory-infra dump of every Chromium process, within [`VIEW_DEADLINE`]; None when not
    /// connected or when it failed (counted, and said once). The pids are the kernel's: the
    /// browser process reports its children's.
    pub async fn memory_dump(&mut self) -> Option<(f64, BTreeMap<u32, BTreeMap<String, u64>>)> {
        let cdp = self.cdp.as_mut().filter(|c| !c.is_closed())?;
        let started = std::time::Instant::now();
        let dumped = tokio::time::timeout(VIEW_DEADLINE, memory_dump(cdp)).await;
        let seconds = started.elapsed().as_secs_f64();
        match dumped {
            Ok(Ok(processes)) => Some((seconds, processes)),
            Ok(Err(e)) => {
                self.summary.failed_calls += 1;
                self.note_once("dump".into(), format!("a memory dump failed: {e}"));
                None
            }
            Err(_) => {
                // The trace it started may still run: dropping the connection ends it.
                self.summary.failed_calls += 1;
                self.summary.disconnects += 1;
                self.cdp = None;
                self.sessions.clear();
                self.note_once(
                    "dump".into(),
                    format!("a memory dump took longer than {VIEW_DEADLINE:?}: left out"),
                );
                None
            }
        }
    }

    /// Reads pages, contexts, per-page heaps and Chromium's processes. None when not connected.
    pub async fn read(&mut self) -> Option<BrowserView> {
        let cdp = self.cdp.as_mut()?;
        let targets = match cdp.call(GetTargetsParams::default(), None).await {
            Ok(targets) => targets.target_infos,
            Err(e) => {
                self.summary.failed_calls += 1;
                // A failing call is counted, and the view just missing: not worth a line.
                self.note_quietly(format!("Target.getTargets failed: {e}"));
                return None;
            }
        };
        let mut reading = ViewReading {
            cdp,
            sessions: &mut self.sessions,
            redact_urls: self.redact_urls,
            page_renderers: self.page_renderers,
            failed: 0,
        };
        let view = reading.view(targets).await;
        self.summary.failed_calls += view.failed_calls;
        let costs = self.cdp.as_ref().map(Cdp::take_costs).unwrap_or_default();
        for (method, cost) in costs {
            self.summary.calls.entry(method).or_default().add(&cost);
        }
        self.summary.last = Some(view.clone());
        Some(view)
    }

    /// Detaches from every page (the browser may be gone already: failures do not matter).
    pub async fn close(&mut self) {
        if let Some(cdp) = &self.cdp {
            for (session, _) in self.sessions.values() {
                let detach = DetachFromTargetParams::builder()
                    .session_id(session.clone())
                    .build();
                let _ = cdp.call(detach, None).await;
            }
        }
        self.sessions.clear();
        self.cdp = None;
    }
}

/// One reading of the browser's view over a connection: its failed calls counted.
struct ViewReading<'a> {
    cdp: &'a mut Cdp,
    /// Page target -> our session on it, and its renderer once known (kept between views).
    sessions: &'a mut HashMap<String, (SessionId, Option<u32>)>,
    redact_urls: bool,
    page_renderers: bool,
    failed: u64,
}

impl ViewReading<'_> {
    async fn view(&mut self, targets: Vec<TargetInfo>) -> BrowserView {
        let mut view = BrowserView::default();
        for target in &targets {
            *view
                .targets_by_type
                .entry(target.r#type.clone())
                .or_default() += 1;
        }
        let pages: Vec<_> = targets.into_iter().filter(|t| t.r#type == "page").collect();
        view.contexts = self.contexts(&pages).await;
        // Sessions on pages that closed are forgotten.
        let live: BTreeSet<String> = pages.iter().map(|p| p.target_id.inner().clone()).collect();
        self.sessions.retain(|target, _| live.contains(target));
        for page in pages {
            let page_view = self.page(&page).await;
            if !page_view.internal {
                view.urls.push(page_view.url.clone());
                view.js_heap_used += page_view.js_heap_used;
                view.pages += 1;
            }
            view.page_list.push(page_view);
        }
        view.processes = self.processes().await;
        view.failed_calls = self.failed;
        view
    }

    /// Browser contexts: the default one and every other (from the pages', if the call fails).
    async fn contexts(&mut self, pages: &[TargetInfo]) -> u32 {
        match self
            .cdp
            .call(GetBrowserContextsParams::default(), None)
            .await
        {
            Ok(contexts) => contexts.browser_context_ids.len() as u32 + 1,
            Err(_) => {
                self.failed += 1;
                pages
                    .iter()
                    .map(|p| p.browser_context_id.clone().map(|c| c.inner().clone()))
                    .collect::<BTreeSet<_>>()
                    .len() as u32
            }
        }
    }

    /// One page: attached to once (and its renderer found, if asked), then its JS heap and DOM
    /// counters at every view.
    async fn page(&mut self, page: &TargetInfo) -> PageView {
        let target = page.target_id.inner().clone();
        let url = if self.redact_urls {
            redact(&page.url)
        } else {
            page.url.clone()
        };
        let mut page_view = PageView {
            target_id: target.clone(),
            url,
            context: page.browser_context_id.as_ref().map(|c| c.inner().clone()),
            internal: is_internal(&page.url),
            ..PageView::default()
        };
        if !self.sessions.contains_key(&target) {
            self.attach(page, &target).await;
        }
        let Some((session, pid)) = self.sessions.get(&target) else {
            return page_view;
        };
        page_view.renderer_pid = *pid;
        match heap_usage(self.cdp, Some(session)).await {
            Ok((used, total)) => {
                page_view.js_heap_used = used;
                page_view.js_heap_total = total;
            }
            Err(_) => self.failed += 1,
        }
        match self
            .cdp
            .call(GetDomCountersParams::default(), Some(session))
            .await
        {
            Ok(counters) => {
                page_view.nodes = counters.nodes;
                page_view.documents = counters.documents;
                page_view.js_event_listeners = counters.js_event_listeners;
            }
            Err(_) => self.failed += 1,
        }
        page_view
    }

    async fn attach(&mut self, page: &TargetInfo, target: &str) {
        let attach = AttachToTargetParams::builder()
            .target_id(page.target_id.clone())
            .flatten(true)
            .build();
        let Ok(attach) = attach else {
            self.failed += 1;
            return;
        };
        match self.cdp.call(attach, None).await {
            Ok(attached) => {
                let pid = match self.page_renderers {
                    true => renderer_pid(self.cdp, &attached.session_id, target).await,
                    false => None,
                };
                self.sessions
                    .insert(target.to_string(), (attached.session_id, pid));
            }
            Err(_) => self.failed += 1,
        }
    }

    /// Chromium's processes, as it lists them.
    async fn processes(&mut self) -> Vec<BrowserProcess> {
        match self.cdp.call(GetProcessInfoParams::default(), None).await {
            Ok(info) => info
                .process_info
                .into_iter()
                .map(|p| BrowserProcess {
                    pid: p.id as u32,
                    cdp_type: p.r#type,
                    role: None,
                })
                .collect(),
            Err(_) => {
                self.failed += 1;
                Vec::new()
            }
        }
    }
}

/// Pages Chromium opens for itself (new-tab pages, WebUI, DevTools).
fn is_internal(url: &str) -> bool {
    [
        "chrome://",
        "chrome-untrusted://",
        "devtools://",
        "chrome-search://",
    ]
    .iter()
    .any(|p| url.starts_with(p))
}

/// A URL without its query string and fragment.
pub fn redact(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or(url).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdp_modes_and_redaction() {
        assert_eq!("auto".parse::<CdpMode>().unwrap(), CdpMode::Auto);
        assert_eq!("off".parse::<CdpMode>().unwrap(), CdpMode::Off);
        assert_eq!(
            "ws://h:1/x".parse::<CdpMode>().unwrap(),
            CdpMode::Url("ws://h:1/x".into())
        );
        assert!("sometimes".parse::<CdpMode>().is_err());
        assert_eq!(
            redact("https://shop.example/p?id=7&t=x#top"),
            "https://shop.example/p"
        );
    }
}

//! The browser's view, over the DevTools protocol: pages and browser contexts, their URLs and
//! JS heaps, Chromium's own list of its processes, and which renderer holds which page.
//!
//! leaktrace is a second client of somebody else's browser, so it stays read-only: it never
//! navigates, closes or changes a page, never sets emulation, security or network options, and
//! enables a domain (Performance, Tracing) only for the one call that needs it. That is why it
//! drives chromiumoxide's [`Connection`] directly, with chromiumoxide's typed commands, instead
//! of its `Browser` handler, which attaches to every page and configures it (viewport,
//! certificate errors, network). Every call has a timeout; a dropped connection is counted and
//! retried later, never fatal.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{Read, Write},
    path::Path,
    time::Duration,
};

use chromiumoxide::{
    Connection,
    cdp::{
        browser_protocol::{
            memory::GetDomCountersParams,
            system_info::GetProcessInfoParams,
            target::{
                AttachToTargetParams, DetachFromTargetParams, GetBrowserContextsParams,
                GetTargetsParams, SessionId,
            },
        },
        js_protocol::runtime::GetHeapUsageParams,
    },
    types::{CallId, CdpJsonEventMessage, Command, Message, Method},
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// How long one DevTools call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Where to find the DevTools endpoint (`--cdp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CdpMode {
    /// From the traced browser's command line.
    Auto,
    Off,
    /// A given `ws://` or `http://host:port` endpoint.
    Url(String),
}

impl std::str::FromStr for CdpMode {
    type Err = String;
    fn from_str(text: &str) -> Result<CdpMode, String> {
        match text {
            "auto" => Ok(CdpMode::Auto),
            "off" => Ok(CdpMode::Off),
            url if url.starts_with("ws://") || url.starts_with("http://") => {
                Ok(CdpMode::Url(url.to_string()))
            }
            other => Err(format!(
                "{other:?}: expected auto, off, or a ws:// or http:// URL"
            )),
        }
    }
}

/// What a browser's command line says about its DevTools endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A websocket URL, or an http://host:port to ask for one.
    Url(String),
    /// `--remote-debugging-pipe`: no port to attach to.
    Pipe,
    /// Remote debugging is on but the port is not known yet (DevToolsActivePort not written).
    NotYet,
    /// Remote debugging is off.
    None,
}

/// Finds the endpoint on a browser's command line: `--remote-debugging-port=N`, with N=0 (or
/// any N) resolved through `<user-data-dir>/DevToolsActivePort` (line 1 the port, line 2 the
/// path), as puppeteer's default launch needs.
pub fn endpoint_of(cmdline: &[String], home: Option<&Path>) -> Endpoint {
    let args = crate::roles::split_args(cmdline);
    let flag = |prefix: &str| args.iter().find_map(|a| a.strip_prefix(prefix));
    if args.contains(&"--remote-debugging-pipe") && flag("--remote-debugging-port=").is_none() {
        return Endpoint::Pipe;
    }
    let Some(port) = flag("--remote-debugging-port=").and_then(|p| p.parse::<u16>().ok()) else {
        return Endpoint::None;
    };
    let profile = flag("--user-data-dir=")
        .map(Path::new)
        .map(Path::to_path_buf)
        .or_else(|| home.map(|h| h.join(".config/chromium")));
    if let Some(active) =
        profile.and_then(|dir| std::fs::read_to_string(dir.join("DevToolsActivePort")).ok())
    {
        let mut lines = active.lines();
        if let (Some(port), Some(path)) = (lines.next(), lines.next())
            && port.trim().parse::<u16>().is_ok()
        {
            return Endpoint::Url(format!("ws://127.0.0.1:{}{}", port.trim(), path.trim()));
        }
    }
    if port > 0 {
        Endpoint::Url(format!("http://127.0.0.1:{port}"))
    } else {
        Endpoint::NotYet
    }
}

/// The websocket URL behind `http://host:port`: a browser's from `/json/version`, a Node
/// inspector's (which has no browser endpoint) from the first target of `/json/list`.
fn websocket_url(endpoint: &str) -> Result<String, String> {
    let Some(host) = endpoint.strip_prefix("http://") else {
        return Ok(endpoint.to_string());
    };
    let host = host.trim_end_matches('/');
    for path in ["/json/version", "/json/list"] {
        let answer = http_get_json(host, path).map_err(|e| format!("{endpoint}{path}: {e}"))?;
        let target = if answer.is_array() {
            &answer[0]
        } else {
            &answer
        };
        if let Some(url) = target["webSocketDebuggerUrl"].as_str() {
            return Ok(url.to_string());
        }
    }
    Err(format!("{endpoint} lists no webSocketDebuggerUrl"))
}

/// A JSON document over plain HTTP/1.1 (Chromium's DevTools server ignores 1.0 requests and
/// keeps the connection open, so the body is read up to its Content-Length).
fn http_get_json(host: &str, path: &str) -> Result<Value, String> {
    let mut stream =
        std::net::TcpStream::connect(host).map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    let body = loop {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed early".into());
        }
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>())
            })
            .and_then(Result::ok)
            .unwrap_or(0);
        if body.len() >= length {
            break body.to_string();
        }
    };
    serde_json::from_str(&body).map_err(|e| e.to_string())
}

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

struct Call {
    method: String,
    session: Option<SessionId>,
    params: Value,
    reply: oneshot::Sender<Result<Value, String>>,
}

/// A DevTools connection driven by its own task; events other than tracing are ignored.
struct Cdp {
    calls: mpsc::UnboundedSender<Call>,
    /// Tracing.dataCollected / tracingComplete events.
    tracing: mpsc::UnboundedReceiver<(Option<String>, String, Value)>,
}

impl Cdp {
    async fn connect(endpoint: &str) -> Result<Cdp, String> {
        let url = websocket_url(endpoint)?;
        let mut conn = tokio::time::timeout(
            CALL_TIMEOUT,
            Connection::<CdpJsonEventMessage>::connect(&url),
        )
        .await
        .map_err(|_| format!("connecting to {url} timed out"))?
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        let (calls, mut incoming) = mpsc::unbounded_channel::<Call>();
        let (tracing_tx, tracing) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut pending: HashMap<CallId, oneshot::Sender<Result<Value, String>>> =
                HashMap::new();
            loop {
                tokio::select! {
                    call = incoming.recv() => {
                        let Some(call) = call else { break };
                        match conn.submit_command(call.method.into(), call.session, call.params) {
                            Ok(id) => { pending.insert(id, call.reply); }
                            Err(e) => { let _ = call.reply.send(Err(e.to_string())); }
                        }
                    }
                    message = conn.next() => match message {
                        Some(Ok(Message::Response(response))) => {
                            if let Some(reply) = pending.remove(&response.id) {
                                let result = match (response.result, response.error) {
                                    (_, Some(error)) => Err(error.message),
                                    (result, None) => Ok(result.unwrap_or(Value::Null)),
                                };
                                let _ = reply.send(result);
                            }
                        }
                        Some(Ok(Message::Event(event))) => {
                            let method = event.identifier().to_string();
                            if method.starts_with("Tracing.") {
                                let _ = tracing_tx.send((event.session_id.clone(), method, event.params));
                            }
                        }
                        // A message chromiumoxide's types do not know: skip it.
                        Some(Err(chromiumoxide::error::CdpError::Serde(_))) => {}
                        Some(Err(_)) => break,
                        None => break,
                    }
                }
            }
            // Dropping the replies tells every waiting caller the connection is gone.
        });
        Ok(Cdp { calls, tracing })
    }

    fn is_closed(&self) -> bool {
        self.calls.is_closed()
    }

    async fn call_raw(
        &self,
        method: &str,
        session: Option<&SessionId>,
        params: Value,
    ) -> Result<Value, String> {
        let (reply, answer) = oneshot::channel();
        let call = Call {
            method: method.to_string(),
            session: session.cloned(),
            params,
            reply,
        };
        self.calls
            .send(call)
            .map_err(|_| "the DevTools connection is closed".to_string())?;
        match tokio::time::timeout(CALL_TIMEOUT, answer).await {
            Err(_) => Err(format!("{method} timed out")),
            Ok(Err(_)) => Err("the DevTools connection is closed".into()),
            Ok(Ok(result)) => result,
        }
    }

    async fn call<C: Command>(
        &self,
        command: C,
        session: Option<&SessionId>,
    ) -> Result<C::Response, String> {
        let method = command.identifier().to_string();
        let params = serde_json::to_value(&command).map_err(|e| e.to_string())?;
        let value = self.call_raw(&method, session, params).await?;
        C::response_from_value(value).map_err(|e| format!("{method}: {e}"))
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
    /// The renderer holding the page (from a one-off timeline trace), when it could be found.
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
    pub role: Option<String>,
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
    /// What could not be done, in plain words (pipe mode, unreachable endpoint, ...).
    pub notes: Vec<String>,
    /// The last view read.
    pub last: Option<BrowserView>,
}

/// Reads the browser's view for the session; holds the connection and page sessions between
/// reads.
pub struct BrowserReader {
    mode: CdpMode,
    redact_urls: bool,
    cdp: Option<Cdp>,
    /// Page target -> our session on it, and its renderer once known.
    sessions: HashMap<String, (SessionId, Option<u32>)>,
    pub summary: BrowserSummary,
    noted: BTreeSet<String>,
}

impl BrowserReader {
    pub fn new(mode: CdpMode, redact_urls: bool) -> BrowserReader {
        let label = match &mode {
            CdpMode::Auto => "auto",
            CdpMode::Off => "off",
            CdpMode::Url(_) => "url",
        };
        BrowserReader {
            mode,
            redact_urls,
            cdp: None,
            sessions: HashMap::new(),
            summary: BrowserSummary {
                mode: label.to_string(),
                ..BrowserSummary::default()
            },
            noted: BTreeSet::new(),
        }
    }

    /// Says something once, in the trace's notes and on stderr.
    fn note(&mut self, note: String, warn: bool) {
        self.note_once(note.clone(), note, warn);
    }

    /// Says `note` the first time `key` comes up.
    fn note_once(&mut self, key: String, note: String, warn: bool) {
        if self.noted.insert(key) {
            if warn {
                eprintln!("leaktrace: {note}");
            }
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
        warn: bool,
    ) {
        if self.is_connected() {
            return;
        }
        if self.cdp.take().is_some() {
            self.summary.disconnects += 1;
            self.sessions.clear();
            self.note(
                "the DevTools connection dropped; leaktrace reconnects when it can".into(),
                warn,
            );
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
                            warn,
                        ),
                        Endpoint::NotYet | Endpoint::None => {}
                    }
                }
                found
            }
        };
        let Some(endpoint) = endpoint else { return };
        match Cdp::connect(&endpoint).await {
            Ok(cdp) => {
                self.cdp = Some(cdp);
                self.summary.connects += 1;
                self.summary.endpoint = Some(endpoint);
            }
            Err(e) => self.note(format!("DevTools endpoint {endpoint}: {e}"), warn),
        }
    }

    /// Reads pages, contexts, per-page heaps and Chromium's processes. None when not connected.
    pub async fn read(&mut self) -> Option<BrowserView> {
        let cdp = self.cdp.as_mut()?;
        let mut view = BrowserView::default();
        let mut failed = 0u64;
        let targets = match cdp.call(GetTargetsParams::default(), None).await {
            Ok(targets) => targets.target_infos,
            Err(e) => {
                self.summary.failed_calls += 1;
                self.note(format!("Target.getTargets failed: {e}"), false);
                return None;
            }
        };
        for target in &targets {
            *view
                .targets_by_type
                .entry(target.r#type.clone())
                .or_default() += 1;
        }
        let pages: Vec<_> = targets.into_iter().filter(|t| t.r#type == "page").collect();
        view.contexts = match cdp.call(GetBrowserContextsParams::default(), None).await {
            Ok(contexts) => contexts.browser_context_ids.len() as u32 + 1,
            Err(_) => {
                failed += 1;
                pages
                    .iter()
                    .map(|p| p.browser_context_id.clone().map(|c| c.inner().clone()))
                    .collect::<BTreeSet<_>>()
                    .len() as u32
            }
        };
        let live: BTreeSet<String> = pages.iter().map(|p| p.target_id.inner().clone()).collect();
        let gone: Vec<String> = self
            .sessions
            .keys()
            .filter(|t| !live.contains(*t))
            .cloned()
            .collect();
        gone.iter().for_each(|t| {
            self.sessions.remove(t);
        });
        for page in pages {
            let target = page.target_id.inner().clone();
            let url = if self.redact_urls {
                redact(&page.url)
            } else {
                page.url.clone()
            };
            let mut page_view = PageView {
                target_id: target.clone(),
                url: url.clone(),
                context: page.browser_context_id.as_ref().map(|c| c.inner().clone()),
                ..PageView::default()
            };
            if !self.sessions.contains_key(&target) {
                let attach = AttachToTargetParams::builder()
                    .target_id(page.target_id.clone())
                    .flatten(true)
                    .build();
                match attach.map_err(|e| e.to_string()) {
                    Ok(attach) => match cdp.call(attach, None).await {
                        Ok(attached) => {
                            let pid = renderer_pid(cdp, &attached.session_id, &target).await;
                            self.sessions
                                .insert(target.clone(), (attached.session_id, pid));
                        }
                        Err(_) => failed += 1,
                    },
                    Err(_) => failed += 1,
                }
            }
            if let Some((session, pid)) = self.sessions.get(&target) {
                page_view.renderer_pid = *pid;
                match heap_usage(cdp, Some(session)).await {
                    Ok((used, total)) => {
                        page_view.js_heap_used = used;
                        page_view.js_heap_total = total;
                    }
                    Err(_) => failed += 1,
                }
                match cdp
                    .call(GetDomCountersParams::default(), Some(session))
                    .await
                {
                    Ok(counters) => {
                        page_view.nodes = counters.nodes;
                        page_view.documents = counters.documents;
                        page_view.js_event_listeners = counters.js_event_listeners;
                    }
                    Err(_) => failed += 1,
                }
            }
            page_view.internal = is_internal(&page.url);
            if !page_view.internal {
                view.urls.push(url);
                view.js_heap_used += page_view.js_heap_used;
                view.pages += 1;
            }
            view.page_list.push(page_view);
        }
        match cdp.call(GetProcessInfoParams::default(), None).await {
            Ok(info) => {
                view.processes = info
                    .process_info
                    .into_iter()
                    .map(|p| BrowserProcess {
                        pid: p.id as u32,
                        cdp_type: p.r#type,
                        role: None,
                    })
                    .collect();
            }
            Err(_) => failed += 1,
        }
        view.failed_calls = failed;
        self.summary.failed_calls += failed;
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

/// The renderer of a page: a one-off timeline trace on the page's session reports, in its
/// `TracingStartedInBrowser` event, each frame with its process id.
async fn renderer_pid(cdp: &mut Cdp, session: &SessionId, target: &str) -> Option<u32> {
    while cdp.tracing.try_recv().is_ok() {}
    let start = json!({"categories": "disabled-by-default-devtools.timeline", "transferMode": "ReportEvents"});
    cdp.call_raw("Tracing.start", Some(session), start)
        .await
        .ok()?;
    let _ = cdp.call_raw("Tracing.end", Some(session), json!({})).await;
    let mut pid = None;
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    // One trace at a time, and the queue was emptied first: these events are this trace's.
    while let Ok(Some((_, method, params))) =
        tokio::time::timeout_at(deadline, cdp.tracing.recv()).await
    {
        if method == "Tracing.tracingComplete" {
            break;
        }
        for event in params["value"].as_array().into_iter().flatten() {
            if event["name"] != "TracingStartedInBrowser" {
                continue;
            }
            for frame in event["args"]["data"]["frames"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if frame["frame"].as_str() == Some(target) {
                    pid = frame["processId"].as_u64().map(|p| p as u32);
                }
            }
        }
    }
    pid
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

/// Runtime.getHeapUsage's used and total sizes. Read from the raw answer: chromiumoxide's typed
/// one requires fields that Node's inspector does not send.
async fn heap_usage(cdp: &Cdp, session: Option<&SessionId>) -> Result<(u64, u64), String> {
    let method = GetHeapUsageParams::default().identifier().to_string();
    let heap = cdp.call_raw(&method, session, json!({})).await?;
    match (heap["usedSize"].as_f64(), heap["totalSize"].as_f64()) {
        (Some(used), Some(total)) => Ok((used as u64, total as u64)),
        _ => Err(format!("{method}: no usedSize/totalSize in {heap}")),
    }
}

/// A URL without its query string and fragment.
pub fn redact(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or(url).to_string()
}

/// Counts of pages per context, for the report.
pub fn pages_per_context(view: &BrowserView) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for page in &view.page_list {
        *counts
            .entry(page.context.clone().unwrap_or_else(|| "default".into()))
            .or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_endpoint_puppeteer_and_playwright_leave_on_the_command_line() {
        let dir = std::env::temp_dir().join(format!("leaktrace-devtools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("DevToolsActivePort"),
            "40123\n/devtools/browser/abc\n",
        )
        .unwrap();
        let puppeteer = vec![format!(
            "/usr/lib/chromium/chromium --remote-debugging-port=0 --user-data-dir={}",
            dir.display()
        )];
        assert_eq!(
            endpoint_of(&puppeteer, None),
            Endpoint::Url("ws://127.0.0.1:40123/devtools/browser/abc".into())
        );
        let fixed = vec!["chromium".into(), "--remote-debugging-port=9222".into()];
        assert_eq!(
            endpoint_of(&fixed, None),
            Endpoint::Url("http://127.0.0.1:9222".into())
        );
        let playwright = vec!["chromium --remote-debugging-pipe --no-startup-window".to_string()];
        assert_eq!(endpoint_of(&playwright, None), Endpoint::Pipe);
        let fresh = vec![
            "chromium".into(),
            "--remote-debugging-port=0".into(),
            "--user-data-dir=/nonexistent".into(),
        ];
        assert_eq!(endpoint_of(&fresh, None), Endpoint::NotYet);
        assert_eq!(endpoint_of(&["chromium".to_string()], None), Endpoint::None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

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

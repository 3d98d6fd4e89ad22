//! One DevTools connection: chromiumoxide's [`Connection`] driven by a task of its own, raw and
//! typed calls with a timeout, and the few reads that need more than one call.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    time::Duration,
};

use chromiumoxide::{
    Connection,
    cdp::{browser_protocol::target::SessionId, js_protocol::runtime::GetHeapUsageParams},
    types::{CallId, CdpJsonEventMessage, Command, Message, Method},
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// How long one DevTools call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting may take, the TCP handshake and the websocket URL's HTTP request each:
/// an endpoint that never completes a handshake must not hold the trace.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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
    use std::net::ToSocketAddrs;
    let address = host
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)
        .map_err(|e| format!("cannot connect: {e}"))?;
    for timeout in [
        stream.set_read_timeout(Some(CONNECT_TIMEOUT)),
        stream.set_write_timeout(Some(CONNECT_TIMEOUT)),
    ] {
        timeout.map_err(|e| e.to_string())?;
    }
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

struct Call {
    method: String,
    session: Option<SessionId>,
    params: Value,
    reply: oneshot::Sender<Result<Value, String>>,
}

/// A DevTools connection driven by its own task; events other than tracing are ignored.
pub struct Cdp {
    calls: mpsc::UnboundedSender<Call>,
    /// Tracing.dataCollected / tracingComplete events.
    tracing: mpsc::UnboundedReceiver<(Option<String>, String, Value)>,
    /// What each method cost since the last [`Cdp::take_costs`]: the browser works for each.
    costs: std::sync::Mutex<BTreeMap<String, CallCost>>,
}

/// The calls of one DevTools method: how many, and how long they took from sending to the
/// answer (time the browser spent on them, or queued behind the worker's own calls).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallCost {
    pub count: u64,
    pub seconds: f64,
    pub max_seconds: f64,
}

impl CallCost {
    pub fn add(&mut self, other: &CallCost) {
        self.count += other.count;
        self.seconds += other.seconds;
        self.max_seconds = self.max_seconds.max(other.max_seconds);
    }
}

impl Cdp {
    pub async fn connect(endpoint: &str) -> Result<Cdp, String> {
        // Blocking HTTP, off the session's thread: signals and markers go on meanwhile.
        let owned = endpoint.to_string();
        let url = tokio::task::spawn_blocking(move || websocket_url(&owned))
            .await
            .map_err(|e| e.to_string())??;
        let mut conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
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
        Ok(Cdp {
            calls,
            tracing,
            costs: Default::default(),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.calls.is_closed()
    }

    /// The cost of each method since the last call.
    pub fn take_costs(&self) -> BTreeMap<String, CallCost> {
        std::mem::take(&mut *self.costs.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub async fn call_raw(
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
        let started = std::time::Instant::now();
        let answered = tokio::time::timeout(CALL_TIMEOUT, answer).await;
        let seconds = started.elapsed().as_secs_f64();
        self.costs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(method.to_string())
            .or_default()
            .add(&CallCost {
                count: 1,
                seconds,
                max_seconds: seconds,
            });
        match answered {
            Err(_) => Err(format!("{method} timed out")),
            Ok(Err(_)) => Err("the DevTools connection is closed".into()),
            Ok(Ok(result)) => result,
        }
    }

    pub async fn call<C: Command>(
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

/// The renderer of a page: a one-off timeline trace on the page's session reports, in its
/// `TracingStartedInBrowser` event, each frame with its process id.
pub async fn renderer_pid(cdp: &mut Cdp, session: &SessionId, target: &str) -> Option<u32> {
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

/// Runtime.getHeapUsage's used and total sizes. Read from the raw answer: chromiumoxide's typed
/// one requires fields that Node's inspector does not send.
pub async fn heap_usage(cdp: &Cdp, session: Option<&SessionId>) -> Result<(u64, u64), String> {
    let method = GetHeapUsageParams::default().identifier().to_string();
    let heap = cdp.call_raw(&method, session, json!({})).await?;
    match (heap["usedSize"].as_f64(), heap["totalSize"].as_f64()) {
        (Some(used), Some(total)) => Ok((used as u64, total as u64)),
        _ => Err(format!("{method}: no usedSize/totalSize in {heap}")),
    }
}

/// One memory-infra dump of every Chromium process: a trace of the
/// `disabled-by-default-memory-infra` category only, with one `background` dump requested in it
/// (the lightest level that still names v8, blink_gc, partition_alloc and malloc), ended at once.
/// Each process's allocators by their top-level name with Chromium's own size for it, by pid.
pub async fn memory_dump(cdp: &mut Cdp) -> Result<BTreeMap<u32, BTreeMap<String, u64>>, String> {
    while cdp.tracing.try_recv().is_ok() {}
    let start = json!({
        "traceConfig": {
            "includedCategories": ["disabled-by-default-memory-infra"],
            "excludedCategories": ["*"],
            "memoryDumpConfig": {"triggers": []},
        },
        "transferMode": "ReportEvents",
    });
    cdp.call_raw("Tracing.start", None, start).await?;
    let request = json!({"deterministic": false, "levelOfDetail": "background"});
    let dumped = cdp
        .call_raw("Tracing.requestMemoryDump", None, request)
        .await;
    // Ended whatever the request gave: a trace left running would keep its buffers.
    let ended = cdp.call_raw("Tracing.end", None, json!({})).await;
    match dumped {
        Ok(answer) if answer["success"] == true => {}
        Ok(answer) => {
            return Err(format!(
                "Tracing.requestMemoryDump did not succeed: {answer}"
            ));
        }
        Err(e) => return Err(e),
    }
    ended?;
    let mut processes = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    // One trace at a time, and the queue was emptied first: these events are this trace's.
    loop {
        let Ok(Some((_, method, params))) =
            tokio::time::timeout_at(deadline, cdp.tracing.recv()).await
        else {
            return Err("the memory dump's trace did not complete in time".into());
        };
        if method == "Tracing.tracingComplete" {
            return Ok(processes);
        }
        for event in params["value"].as_array().into_iter().flatten() {
            let allocators = &event["args"]["dumps"]["allocators"];
            let (Some(pid), Some(allocators)) = (event["pid"].as_u64(), allocators.as_object())
            else {
                continue;
            };
            let sizes: &mut BTreeMap<String, u64> = processes.entry(pid as u32).or_default();
            for (name, node) in allocators {
                // `malloc`, not `malloc/partitions`; `global/...` are shared memory's cross-
                // process entries, not an allocator.
                if name.contains('/') || name == "global" {
                    continue;
                }
                let size = node["attrs"]["size"]["value"].as_str();
                if let Some(size) = size.and_then(|s| u64::from_str_radix(s, 16).ok()) {
                    sizes.insert(name.clone(), size);
                }
            }
        }
    }
}

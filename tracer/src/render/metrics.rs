//! The metrics endpoint (`--metrics-addr`): what the trace knows so far, for Prometheus.
//!
//! The session publishes its figures into [`Published`] as they come (a sample, a cycle end,
//! an analysis); a scrape renders them in the OpenMetrics text format (Prometheus's own
//! exposition format, `# HELP` and `# TYPE` lines, `# EOF` at the end) with the Prometheus
//! project's Rust client, `prometheus-client`. A scrape never waits for the session: it takes
//! the lock only to copy the figures, and the session holds it only to store them, so a hundred
//! scrapes a second cost the trace nothing it would notice.
//!
//! Names follow Prometheus's conventions: `leaktrace_` first, base units (`_bytes`,
//! `_seconds`), `_total` on counters. Labels stay bounded: roles (a handful), series of the fits
//! (one per role and the tree), lost-event reasons (fixed), and the worker's own figure keys
//! (at most [`MAX_WORKER_FIGURES`]); pids only on the [`TOP_PROCESSES`] that own the most.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};

use crate::{
    analysis::{Analysis, Series},
    collect::processes::Snapshot,
    collect::roles::Role,
    trace::{Cycle, ResidentBytes, RoleTotals, TreeSample},
};

/// The worker's own figures exported, at most: the keys are the worker's to choose.
pub const MAX_WORKER_FIGURES: usize = 32;

/// Processes exported one by one (with a pid label), at most: those that own the most.
pub const TOP_PROCESSES: usize = 5;

/// OpenMetrics' content type, which Prometheus asks for first.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the trace knows so far, as the session last published it.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// The tree at the last sample or boundary, per role.
    pub now: BTreeMap<Role, RoleTotals>,
    /// The last complete cycle (1-based; 0 before the first).
    pub cycle: u32,
    /// The tree at that cycle's end, per role: what the trace's JSON holds for it.
    pub cycle_end: BTreeMap<Role, RoleTotals>,
    /// The kernel's resident counters at that cycle's end, per role.
    pub cycle_end_resident: BTreeMap<Role, ResidentBytes>,
    pub cycles_seen: u64,
    pub phases_seen: u64,
    pub markers_malformed: u64,
    pub markers_dropped: u64,
    /// Markers that came while no instance of a followed worker ran.
    pub markers_between_instances: u64,
    /// Instances of a followed worker that exited (`attach --follow-*`).
    pub worker_exits: u64,
    /// Kernel events lost, per reason.
    pub lost: BTreeMap<String, u64>,
    /// Pages, contexts and the pages' JS heap at the last cycle end the browser was read.
    pub browser: Option<(u32, u32, u64)>,
    /// The worker's own figures at its last cycle end.
    pub worker: BTreeMap<String, f64>,
    /// The last fits.
    pub analysis: Option<Analysis>,
    /// The live processes that own the most at the last sample: pid, name, role, bytes.
    pub top: Vec<(u32, String, Role, u64)>,
}

/// The figures the session publishes and the endpoint reads.
#[derive(Clone, Debug, Default)]
pub struct Published(Arc<Mutex<Live>>);

impl Published {
    /// Changes the published figures.
    pub fn update(&self, change: impl FnOnce(&mut Live)) {
        change(
            &mut self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }

    /// Stores a sample of the tree.
    pub fn sample(&self, sample: &TreeSample) {
        self.update(|live| live.now = sample.by_role.clone());
    }

    /// Stores what the trace holds for a cycle that just ended, with the kernel's resident
    /// counters at its end.
    pub fn cycle_end(&self, cycle: &Cycle, snapshot_resident: BTreeMap<Role, ResidentBytes>) {
        self.update(|live| {
            live.cycle = cycle.index;
            live.cycle_end = cycle.by_role.iter().map(|(r, t)| (r.clone(), *t)).collect();
            live.cycle_end_resident = snapshot_resident;
            live.worker = cycle.worker.iter().map(|(k, v)| (k.clone(), *v)).collect();
            if let Some(view) = &cycle.browser {
                live.browser = Some((view.pages, view.contexts, view.js_heap_used));
            }
        });
    }

    fn copy(&self) -> Live {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// The kernel's resident counters of the live processes at a boundary, per role.
pub fn resident_by_role(snapshot: &Snapshot) -> BTreeMap<Role, ResidentBytes> {
    let mut by_role: BTreeMap<Role, ResidentBytes> = BTreeMap::new();
    for process in snapshot.processes.iter().filter(|p| p.live) {
        let sum = by_role.entry(process.role.clone()).or_default();
        sum.anon += process.resident.anon;
        sum.file += process.resident.file;
        sum.shmem += process.resident.shmem;
        sum.swap += process.resident.swap;
    }
    by_role
}

/// The endpoint's socket, bound before anything is launched (so that a taken port is an error
/// at once) and served once the session runs.
#[derive(Clone, Debug)]
pub struct Endpoint(Arc<std::net::TcpListener>);

impl Endpoint {
    /// Binds `addr`: HOST:PORT, or a port alone for loopback.
    pub fn bind(addr: &str) -> Result<Endpoint, String> {
        let addr: SocketAddr = match addr.parse::<u16>() {
            Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
            Err(_) => addr.parse().map_err(|_| {
                format!(
                    "--metrics-addr {addr:?}: expected HOST:PORT (e.g. 127.0.0.1:9464) or a port"
                )
            })?,
        };
        std::net::TcpListener::bind(addr)
            .map(|listener| Endpoint(Arc::new(listener)))
            .map_err(|e| format!("--metrics-addr {addr}: cannot listen there: {e}"))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Serves `/metrics` from `published` until the session's runtime ends.
    pub fn serve(&self, published: Published) -> std::io::Result<()> {
        let listener = self.0.try_clone()?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of file descriptors, say: the next accept may work again.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let published = published.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let answer = answer(&request, &published);
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(())
    }
}

fn answer<B>(request: &Request<B>, published: &Published) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, CONTENT_TYPE, render(&published.copy()))
        }
        (&Method::GET | &Method::HEAD, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "leaktrace serves /metrics only\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

type Labels = Vec<(String, String)>;

/// The unit of the byte figures.
fn bytes() -> Option<Unit> {
    Some(Unit::Bytes)
}
type FloatGauge = Gauge<f64, AtomicU64>;

/// A family of gauges, registered under `name` (with `unit` appended, as OpenMetrics does).
fn gauges(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
) -> Family<Labels, FloatGauge> {
    let family = Family::<Labels, FloatGauge>::default();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family.clone()),
        None => registry.register(name, help, family.clone()),
    }
    family
}

/// One gauge without labels.
fn single(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, value: f64) {
    let gauge = FloatGauge::default();
    gauge.set(value);
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, gauge),
        None => registry.register(name, help, gauge),
    }
}

fn counters(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn label(key: &str, value: impl Into<String>) -> Labels {
    vec![(key.to_string(), value.into())]
}

fn set(family: &Family<Labels, FloatGauge>, labels: Labels, value: f64) {
    family.get_or_create(&labels).set(value);
}

/// The figures in the OpenMetrics text format.
pub fn render(live: &Live) -> String {
    let mut registry = Registry::with_prefix("leaktrace");
    render_resident(&mut registry, live);
    render_cycle_end(&mut registry, live);
    render_counts(&mut registry, live);
    render_browser_and_worker(&mut registry, live);
    if let Some(analysis) = &live.analysis {
        render_fits(&mut registry, analysis);
    }
    render_self(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String does not fail");
    text
}

/// Resident memory now: per role, the whole tree, and the cycles so far.
fn render_resident(registry: &mut Registry, live: &Live) {
    let pss = gauges(
        registry,
        "pss",
        "PSS of the traced processes of each role, at the last sample",
        bytes(),
    );
    let owned = gauges(
        registry,
        "owned_pss",
        "PSS of the anonymous and shared memory of each role at the last sample (growth is judged on it)",
        bytes(),
    );
    let processes = gauges(
        registry,
        "processes",
        "Live traced processes of each role",
        None,
    );
    for (role, totals) in &live.now {
        let role = label("role", role.to_string());
        set(&pss, role.clone(), totals.pss as f64);
        set(&owned, role.clone(), totals.owned() as f64);
        set(&processes, role, totals.count as f64);
    }
    single(
        registry,
        "tree_pss",
        "PSS of the whole traced tree, at the last sample",
        bytes(),
        live.now.values().map(|t| t.pss as f64).sum(),
    );
    single(
        registry,
        "tree_owned_pss",
        "Owned PSS of the whole traced tree, at the last sample",
        bytes(),
        live.now.values().map(|t| t.owned() as f64).sum(),
    );
    single(
        registry,
        "last_cycle",
        "Index of the last complete cycle (0 before the first)",
        None,
        live.cycle as f64,
    );
}

/// The last complete cycle's end, as the trace records it.
fn render_cycle_end(registry: &mut Registry, live: &Live) {
    let cycle_owned = gauges(
        registry,
        "cycle_end_owned_pss",
        "Owned PSS of each role at the end of the last complete cycle, as the trace records it",
        bytes(),
    );
    for (role, totals) in &live.cycle_end {
        set(
            &cycle_owned,
            label("role", role.to_string()),
            totals.owned() as f64,
        );
    }
    let resident = gauges(
        registry,
        "cycle_end_resident",
        "The kernel's resident counters (anon, file, shmem; swap) of each role at the end of the last complete cycle",
        bytes(),
    );
    for (role, r) in &live.cycle_end_resident {
        for (kind, value) in [
            ("anon", r.anon),
            ("file", r.file),
            ("shmem", r.shmem),
            ("swap", r.swap),
        ] {
            let labels = vec![
                ("role".into(), role.to_string()),
                ("kind".into(), kind.into()),
            ];
            set(&resident, labels, value as f64);
        }
    }
}

/// Boundaries, ignored markers, worker exits and lost events, counted.
fn render_counts(registry: &mut Registry, live: &Live) {
    let seen = counters(
        registry,
        "boundaries",
        "Cycle ends and phase starts the markers made",
    );
    seen.get_or_create(&label("kind", "cycle"))
        .inc_by(live.cycles_seen);
    seen.get_or_create(&label("kind", "phase"))
        .inc_by(live.phases_seen);
    let markers = counters(
        registry,
        "markers_ignored",
        "Markers ignored: malformed, dropped at the end of the trace, or between instances of a followed worker",
    );
    markers
        .get_or_create(&label("reason", "malformed"))
        .inc_by(live.markers_malformed);
    markers
        .get_or_create(&label("reason", "dropped"))
        .inc_by(live.markers_dropped);
    markers
        .get_or_create(&label("reason", "between_instances"))
        .inc_by(live.markers_between_instances);
    let exits = Counter::<u64>::default();
    exits.inc_by(live.worker_exits);
    registry.register(
        "worker_exits",
        "Instances of a followed worker that exited (attach --follow-name/--follow-cmdline)",
        exits,
    );
    let lost = counters(registry, "events_lost", "Kernel events lost, per reason");
    for (reason, count) in &live.lost {
        lost.get_or_create(&label("reason", reason.clone()))
            .inc_by(*count);
    }
}

/// The browser at the last cycle end, the processes that own the most, the worker's figures.
fn render_browser_and_worker(registry: &mut Registry, live: &Live) {
    if let Some((pages, contexts, js_heap)) = live.browser {
        let browser = gauges(
            registry,
            "browser",
            "What the browser held at the last cycle end (DevTools)",
            None,
        );
        set(&browser, label("what", "pages"), pages as f64);
        set(&browser, label("what", "contexts"), contexts as f64);
        single(
            registry,
            "browser_js_heap",
            "Used JS heap of the pages at the last cycle end",
            bytes(),
            js_heap as f64,
        );
    }

    let top = gauges(
        registry,
        "top_process_owned_pss",
        "Owned PSS of the live processes that own the most, at the last sample (at most 5)",
        bytes(),
    );
    for (pid, comm, role, owned) in &live.top {
        let labels = vec![
            ("pid".to_string(), pid.to_string()),
            ("comm".to_string(), comm.clone()),
            ("role".to_string(), role.to_string()),
        ];
        set(&top, labels, *owned as f64);
    }

    let worker = gauges(
        registry,
        "worker_figure",
        "The worker's own figures at its last cycle end (key=value in its markers)",
        None,
    );
    for (key, value) in live.worker.iter().take(MAX_WORKER_FIGURES) {
        set(&worker, label("key", key.clone()), *value);
    }
}

/// leaktrace's own CPU and resident memory.
fn render_self(registry: &mut Registry) {
    let cost = crate::trace::TracerCost::of_self(Default::default());
    let cpu = Counter::<f64, AtomicU64>::default();
    cpu.inc_by(cost.cpu_s);
    registry.register_with_unit(
        "self_cpu",
        "CPU time leaktrace has used, user plus system",
        Unit::Seconds,
        cpu,
    );
    single(
        registry,
        "self_resident",
        "leaktrace's own resident memory",
        bytes(),
        self_rss() as f64,
    );
}

/// Growth of the tree and of each role, the fits' trust, and the verdict.
fn render_fits(registry: &mut Registry, analysis: &Analysis) {
    let per_cycle = gauges(
        registry,
        "growth_per_cycle",
        "Owned-PSS growth per cycle after warm-up (Sen's slope)",
        Some(Unit::Bytes),
    );
    let per_day = gauges(
        registry,
        "growth_per_day",
        "Owned-PSS growth per day after warm-up, from the median cycle length",
        Some(Unit::Bytes),
    );
    let trend_p = gauges(
        registry,
        "growth_trend_p",
        "Mann-Kendall p-value of the growth (below 0.01 is a trend)",
        None,
    );
    let trusted = gauges(
        registry,
        "growth_trustworthy",
        "1 when enough cycles after warm-up were fitted to trust the fit",
        None,
    );
    let fitted = gauges(
        registry,
        "growth_fitted_cycles",
        "Cycles fitted after warm-up",
        None,
    );
    for fit in &analysis.series {
        let scope = match &fit.name {
            Series::TreeOwned => "tree".to_string(),
            Series::RoleOwned(role) => role.to_string(),
            _ => continue,
        };
        let labels = label("scope", scope);
        set(&per_cycle, labels.clone(), fit.per_cycle);
        set(&per_day, labels.clone(), fit.per_day);
        set(&trend_p, labels.clone(), fit.trend_p);
        set(
            &trusted,
            labels.clone(),
            f64::from(u8::from(fit.trustworthy)),
        );
        set(&fitted, labels, fit.cycles as f64);
    }
    let shape = analysis
        .tree()
        .and_then(|t| t.shape)
        .map_or("unknown".to_string(), |s| format!("{s:?}").to_lowercase());
    registry.register(
        "verdict",
        "The likely source of the growth, and the shape of the tree's owned PSS",
        Info::new(vec![
            ("source".to_string(), analysis.verdict.source.to_string()),
            ("shape".to_string(), shape),
        ]),
    );
}

/// VmRSS of this process, in bytes.
fn self_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_with_units_and_totals() {
        let mut live = Live {
            cycle: 3,
            cycles_seen: 3,
            phases_seen: 9,
            ..Live::default()
        };
        let renderer = RoleTotals {
            pss: 5 << 20,
            anon: 3 << 20,
            shmem: 1 << 20,
            count: 2,
            ..RoleTotals::default()
        };
        live.now.insert(Role::Renderer, renderer);
        live.cycle_end.insert(Role::Renderer, renderer);
        live.lost.insert("vma_lock_busy".into(), 7);
        live.worker.insert("heapUsed".into(), 1234.5);
        live.top
            .push((4242, "chromium".into(), Role::Renderer, 3 << 20));
        let text = render(&live);
        for line in [
            "# TYPE leaktrace_pss_bytes gauge",
            "leaktrace_owned_pss_bytes{role=\"renderer\"} 4194304.0",
            "leaktrace_tree_pss_bytes 5242880.0",
            "leaktrace_cycle_end_owned_pss_bytes{role=\"renderer\"} 4194304.0",
            "leaktrace_last_cycle 3.0",
            "leaktrace_boundaries_total{kind=\"phase\"} 9",
            "leaktrace_events_lost_total{reason=\"vma_lock_busy\"} 7",
            "leaktrace_worker_figure{key=\"heapUsed\"} 1234.5",
            "leaktrace_top_process_owned_pss_bytes{pid=\"4242\",comm=\"chromium\",role=\"renderer\"} 3145728.0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
        }
    }

    #[test]
    fn a_bare_port_binds_to_loopback_and_junk_is_refused() {
        let endpoint = Endpoint::bind("0").unwrap();
        assert!(endpoint.local_addr().unwrap().ip().is_loopback());
        assert!(
            Endpoint::bind("example:port")
                .unwrap_err()
                .contains("HOST:PORT")
        );
    }
}

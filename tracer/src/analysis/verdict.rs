//! The six answers and the verdict: what a user reads first, derived from the fits.

use super::fit::TREND_MIN_CYCLES;
use crate::{
    collect::roles::Role,
    trace::{
        digest::History,
        findings::{AllocatorGrowth, Analysis, Answers, Series, SeriesFit, Shape, Source, Verdict},
    },
};

/// Browsers, contexts or pages accumulate when their count grows by at least this per cycle:
/// half of one (a count that rises by one every other cycle).
pub const MIN_COUNT_GROWTH: f64 = 0.5;

/// The worker's figures that measure its JS heap, and those that measure memory outside it,
/// by the keys `process.memoryUsage()`, the socket and `--worker-inspect` give them.
const HEAP_FIGURES: [&str; 3] = ["heapUsed", "inspect.heapUsed", "heap_used"];
const EXTERNAL_FIGURES: [&str; 2] = ["external", "arrayBuffers"];

/// The share of a Node worker's region growth that must lie on one side of V8's heap for the
/// regions to name it.
const REGION_SHARE: f64 = 2.0 / 3.0;

/// A `worker` verdict made sharper by where a Node worker's memory grew, when the worker gives
/// no figures: in V8's heap pages (`worker-heap`), or outside them (`worker-external`: Buffers
/// and other native memory, from malloc). Only for Node, whose heap pages have a shape of their
/// own (see `regions::name_anonymous`); Bun's allocators put JS objects and Buffers alike in the
/// regions they mapped at start-up, so for Bun the region is named in the evidence and the
/// verdict stays `worker`.
pub fn worker_by_regions(verdict: &mut Verdict, trace: &crate::trace::Trace) {
    let node = trace
        .processes
        .iter()
        .any(|p| p.role == Role::Worker && !p.regions.is_empty() && p.comm == "node");
    let grown: Vec<&crate::collect::regions::RegionGrowth> = trace
        .processes
        .iter()
        .filter(|p| p.role == Role::Worker)
        .flat_map(|p| &p.regions)
        .filter(|r| r.growth > 0)
        .collect();
    let total: i64 = grown.iter().map(|r| r.growth).sum();
    if !node || total <= 0 {
        return;
    }
    let in_heap: i64 = grown
        .iter()
        .filter(|r| r.label() == crate::collect::regions::V8_HEAP_PAGES)
        .map(|r| r.growth)
        .sum();
    let share = in_heap as f64 / total as f64;
    let (source, side) = if share >= REGION_SHARE {
        (Source::WorkerHeap, "in V8's heap pages")
    } else if share <= 1.0 - REGION_SHARE {
        (
            Source::WorkerExternal,
            "outside V8's heap pages (Buffers, native memory)",
        )
    } else {
        return;
    };
    verdict.source = source;
    verdict.evidence.push(format!(
        "{:.0}% of the Node worker's region growth ({total} B between two smaps readings) is \
         {side}",
        if source == Source::WorkerHeap {
            share
        } else {
            1.0 - share
        } * 100.0
    ));
}

/// Renderers that grow, told apart by Chromium's own account where there is one
/// (`--memory-dumps`): V8's heap growing most is the pages' JS (`in-page-js`), any other
/// allocator (blink_gc for DOM, partition_alloc for ArrayBuffers and strings, malloc, cc, ...)
/// is memory outside JS (`renderer-native`). It overrides the JS-heap rule, which can only tell
/// what the pages' heaps explain.
pub(super) fn renderer_by_allocators(verdict: &mut Verdict, allocators: &[AllocatorGrowth]) {
    if !matches!(verdict.source, Source::InPageJs | Source::RendererNative) {
        return;
    }
    let mut grown: Vec<_> = allocators
        .iter()
        .filter(|a| a.role == Role::Renderer.as_str() && a.growth > 0)
        .collect();
    grown.sort_by_key(|a| std::cmp::Reverse(a.growth));
    let Some(top) = grown.first() else { return };
    verdict.source = if top.allocator == "v8" {
        Source::InPageJs
    } else {
        Source::RendererNative
    };
    let listed: Vec<String> = grown
        .iter()
        .take(3)
        .map(|a| format!("{} {:+} B", a.allocator, a.growth))
        .collect();
    verdict.evidence.push(format!(
        "Chromium's memory dumps (cycles {} to {}): the renderers' {}",
        top.from_cycle,
        top.to_cycle,
        listed.join(", ")
    ));
}

/// The share of the renderers' owned growth the pages' JS heaps must explain for `in-page-js`.
/// V8 commits pages ahead of what its heap uses (and fragments): a page keeping 40,000 objects
/// per scrape grew its JS heap 3.4 MB a cycle and its renderer's owned PSS 4.7 MB (73%); a
/// renderer-native leak (images, DOM kept outside JS) leaves the JS heap flat.
pub const IN_PAGE_SHARE: f64 = 0.5;
/// The share of the worker's growth its heap (or external) figure must explain to name it.
/// Bun counts strings kept in JS arrays partly as external memory: 4 MiB of JS objects a cycle
/// grew `external` by 1 MB (19% of the worker's growth) and `heapUsed` by 4 MB.
pub const WORKER_FIGURE_SHARE: f64 = 0.5;

pub(super) fn answers(analysis: &Analysis, history: &History) -> Answers {
    let Some(tree) = analysis.tree() else {
        return Answers::default();
    };
    let mut growing: Vec<&SeriesFit> = analysis
        .series
        .iter()
        .filter(|s| !s.name.is_whole_tree() && s.grows())
        .collect();
    growing.sort_by(|a, b| b.per_day.total_cmp(&a.per_day));
    let growth_phase = analysis
        .phase_growth
        .iter()
        .filter(|(_, g)| **g > 0.0)
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(name, _)| name.clone());
    let is_cleanup = |name: &str| name.contains("clean");
    let cleanup_change = analysis
        .phase_growth
        .iter()
        .find(|(name, _)| is_cleanup(name))
        .map(|(_, g)| *g);
    let other_phases_change = cleanup_change.map(|_| {
        analysis
            .phase_growth
            .iter()
            .filter(|(name, _)| !is_cleanup(name))
            .map(|(_, g)| g)
            .sum()
    });
    let (recreation_change, other_cycles_change) = history.recreation();
    Answers {
        growth_per_cycle: tree.per_cycle,
        growth_per_day: tree.per_day,
        r2: tree.r2,
        trustworthy: tree.trustworthy,
        growing: growing.iter().map(|s| s.name.clone()).collect(),
        growth_phase,
        shape: tree.shape,
        warmup_cycles: tree.warmup_cycles,
        cleanup_helps: cleanup_change.map(|c| c < 0.0),
        cleanup_change,
        other_phases_change,
        recreation_helps: recreation_change
            .zip(other_cycles_change)
            .map(|(r, o)| r < o),
        recreation_change,
        other_cycles_change,
        browsers_alive: history.browsers_alive,
        browsers_at_start: history.browsers_at_start,
    }
}

/// Names the most likely source: the counts a leak leaves (browsers, contexts, pages) first,
/// then the role that carries most of the tree's growth, split by the figures that explain it.
pub(super) fn verdict(analysis: &Analysis) -> Verdict {
    let Some(tree) = analysis.tree() else {
        return found(Source::None, vec!["no complete cycles to fit".into()]);
    };
    if tree.shape == Some(Shape::Unknown) {
        return found(
            Source::TooFewCycles,
            vec![format!(
                "{} measured cycles after {} warm-up cycles: a trend needs at least {TREND_MIN_CYCLES} \
                 (the tree's owned PSS moved {:+.0} B/cycle, which may be noise); trace more cycles",
                tree.cycles, tree.warmup_cycles, tree.per_cycle
            )],
        );
    }
    if !tree.grows() {
        let shape = format!("{:?}", tree.shape.unwrap_or(Shape::Unknown)).to_lowercase();
        return found(
            Source::None,
            vec![format!(
                "the tree's owned PSS is {shape} after {} warm-up cycles ({:+.0} B/cycle)",
                tree.warmup_cycles, tree.per_cycle
            )],
        );
    }
    let fits = Fits { analysis, tree };
    for (name, source) in [
        (Series::Browsers, Source::BrowserAccumulation),
        (Series::Contexts, Source::ContextAccumulation),
        (Series::Pages, Source::PageAccumulation),
    ] {
        if let Some(fit) = fits
            .series(&name)
            .filter(|f| f.per_cycle >= MIN_COUNT_GROWTH && f.grows())
        {
            return found(source, vec![fits.evidence(fit, "")]);
        }
    }
    // The role that carries most of the growth.
    let largest = analysis
        .series
        .iter()
        .filter(|s| matches!(s.name, Series::RoleOwned(_)))
        .max_by(|a, b| a.per_cycle.total_cmp(&b.per_cycle))
        .filter(|fit| fit.per_cycle > 0.0);
    let Some(role) = largest else {
        return found(Source::None, vec!["no role carries the growth".into()]);
    };
    match &role.name {
        Series::RoleOwned(Role::Worker) => fits.worker(role),
        Series::RoleOwned(Role::Renderer) => fits.renderer(role),
        _ => found(Source::BrowserProcess, vec![fits.evidence(role, " B")]),
    }
}

fn found(source: Source, evidence: Vec<String>) -> Verdict {
    Verdict { source, evidence }
}

/// The fits a verdict is read from, with the tree's growth that every line of evidence quotes.
struct Fits<'a> {
    analysis: &'a Analysis,
    tree: &'a SeriesFit,
}

impl Fits<'_> {
    fn series(&self, name: &Series) -> Option<&SeriesFit> {
        self.analysis.series.iter().find(|s| s.name == *name)
    }

    fn evidence(&self, fit: &SeriesFit, unit: &str) -> String {
        format!(
            "{} grows {:+.1}{unit}/cycle (trend p {:.3}), tree owned PSS {:+.0} B/cycle",
            fit.name, fit.per_cycle, fit.trend_p, self.tree.per_cycle
        )
    }

    /// The worker's own processes grow: in its JS heap, outside it, or it does not say.
    fn worker(&self, role: &SeriesFit) -> Verdict {
        let role_evidence = self.evidence(role, " B");
        let figure = |keys: &[&str]| keys.iter().find_map(|k| self.series(&Series::worker(k)));
        let (heap, external) = (figure(&HEAP_FIGURES), figure(&EXTERNAL_FIGURES));
        let explains =
            |fit: &&SeriesFit| fit.grows() && fit.per_cycle >= WORKER_FIGURE_SHARE * role.per_cycle;
        // Bun counts external memory inside heapUsed too: an external figure that explains the
        // growth wins.
        if let Some(external) = external.filter(explains) {
            return found(
                Source::WorkerExternal,
                vec![role_evidence, self.evidence(external, " B")],
            );
        }
        match heap {
            Some(heap) if explains(&heap) => found(
                Source::WorkerHeap,
                vec![role_evidence, self.evidence(heap, " B")],
            ),
            Some(heap) => found(
                Source::Worker,
                vec![
                    role_evidence,
                    format!(
                        "its JS heap ({}) grows only {:+.0} B/cycle: the growth is outside the JS heap \
                         (native memory, or an external figure the worker does not report)",
                        heap.name, heap.per_cycle
                    ),
                ],
            ),
            None => found(
                Source::Worker,
                vec![
                    role_evidence,
                    "the worker reports no heap figures to tell its JS heap from other memory: \
                     log process.memoryUsage() each cycle and pass --figures-regex \
                     (heapUsed, external), send heapUsed= external= with socket markers, or \
                     use --worker-inspect for Node"
                        .into(),
                ],
            ),
        }
    }

    /// The renderers grow: in the pages' JS heaps, or beyond what they explain.
    fn renderer(&self, role: &SeriesFit) -> Verdict {
        let explained = |js: &SeriesFit| 100.0 * js.per_cycle / role.per_cycle;
        match self.series(&Series::JsHeap).filter(|f| f.grows()) {
            Some(js) if js.per_cycle >= IN_PAGE_SHARE * role.per_cycle => found(
                Source::InPageJs,
                vec![
                    self.evidence(js, " B"),
                    format!(
                        "the pages' JS heaps explain {:.0}% of the renderers' growth ({:+.0} B/cycle)",
                        explained(js),
                        role.per_cycle
                    ),
                ],
            ),
            js => found(
                Source::RendererNative,
                vec![
                    self.evidence(role, " B"),
                    match js {
                        Some(js) => format!(
                            "the pages' JS heaps explain only {:.0}% of it",
                            explained(js)
                        ),
                        None => "the pages' JS heaps do not grow (or were not read)".into(),
                    },
                ],
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1048576.0;

    fn series(name: &str, per_cycle: f64, shape: Shape) -> SeriesFit {
        SeriesFit {
            name: name.into(),
            per_cycle,
            per_day: per_cycle * 1440.0,
            r2: 0.99,
            shape: Some(shape),
            trustworthy: true,
            ..SeriesFit::default()
        }
    }

    fn verdict_of(more: Vec<SeriesFit>) -> Source {
        let tree = series("tree.owned", 4.0 * MIB, Shape::Linear);
        let analysis = Analysis {
            series: [vec![tree], more].concat(),
            ..Analysis::default()
        };
        verdict(&analysis).source
    }

    #[test]
    fn too_few_cycles_name_no_source_however_steep_the_rise() {
        // 8 MiB a cycle over 5 cycles: no trend test can call that growth yet (a strictly
        // increasing 5 has p = 0.028), so no source is named, and the evidence says how many.
        let rising: Vec<f64> = (0..5).map(|i| i as f64 * 8.0 * MIB).collect();
        let tree = super::super::fit::fit("tree.owned", &rising, Some(0), 1.0, 256.0 * 1024.0);
        assert_eq!(tree.shape, Some(Shape::Unknown));
        let renderer = series("role.renderer.owned", 8.0 * MIB, Shape::Linear);
        let analysis = Analysis {
            series: vec![tree, renderer],
            ..Analysis::default()
        };
        let verdict = verdict(&analysis);
        assert_eq!(verdict.source, Source::TooFewCycles);
        assert!(
            verdict.evidence[0].contains("5 measured cycles")
                && verdict.evidence[0].contains("at least 6"),
            "{:?}",
            verdict.evidence
        );
        // Seven cycles of the same rise are enough.
        let rising: Vec<f64> = (0..7).map(|i| i as f64 * 8.0 * MIB).collect();
        let tree = super::super::fit::fit("tree.owned", &rising, Some(0), 1.0, 256.0 * 1024.0);
        let analysis = Analysis {
            series: vec![
                tree,
                series("role.renderer.owned", 8.0 * MIB, Shape::Linear),
            ],
            ..Analysis::default()
        };
        assert_eq!(super::verdict(&analysis).source, Source::RendererNative);
    }

    #[test]
    fn counts_come_first_browsers_then_contexts_then_pages() {
        let pages = series("browser.pages", 1.0, Shape::Linear);
        let contexts = series("browser.contexts", 1.0, Shape::Linear);
        let browsers = series("processes.browsers", 1.0, Shape::Linear);
        assert_eq!(verdict_of(vec![pages.clone()]), "page-accumulation");
        assert_eq!(
            verdict_of(vec![contexts.clone(), pages.clone()]),
            "context-accumulation"
        );
        assert_eq!(
            verdict_of(vec![browsers, contexts, pages]),
            "browser-accumulation"
        );
        // A count that rose once and stayed is not accumulation.
        assert_eq!(
            verdict_of(vec![series("browser.pages", 1.0, Shape::Plateau)]),
            "none"
        );
    }

    #[test]
    fn the_worker_is_split_only_by_a_figure_that_explains_its_growth() {
        let worker = series("role.worker.owned", 4.0 * MIB, Shape::Linear);
        let renderer = series("role.renderer.owned", 0.1 * MIB, Shape::Linear);
        let heap = |mib| series("worker.heapUsed", mib * MIB, Shape::Linear);
        let flat = |name| series(name, 0.0, Shape::Flat);
        assert_eq!(
            verdict_of(vec![
                worker.clone(),
                renderer.clone(),
                heap(3.9),
                flat("worker.external")
            ]),
            "worker-heap"
        );
        // Bun: JS strings kept grow `external` a little; the heap explains the growth.
        assert_eq!(
            verdict_of(vec![
                worker.clone(),
                heap(4.0),
                series("worker.external", 1.0 * MIB, Shape::Linear)
            ]),
            "worker-heap"
        );
        // Bun counts external memory in heapUsed too: a growing external figure wins.
        assert_eq!(
            verdict_of(vec![
                worker.clone(),
                heap(4.0),
                series("worker.external", 4.0 * MIB, Shape::Linear)
            ]),
            "worker-external"
        );
        assert_eq!(
            verdict_of(vec![
                worker.clone(),
                series("worker.arrayBuffers", 4.0 * MIB, Shape::Linear)
            ]),
            "worker-external"
        );
        // A heap figure that does not explain the growth, or no figure at all: `worker`.
        assert_eq!(verdict_of(vec![worker.clone(), heap(0.001)]), "worker");
        let analysis = Analysis {
            series: vec![
                series("tree.owned", 4.0 * MIB, Shape::Linear),
                worker.clone(),
                renderer,
            ],
            ..Analysis::default()
        };
        let no_figures = verdict(&analysis);
        assert_eq!(no_figures.source, Source::Worker);
        assert!(
            no_figures.evidence[1].contains("--figures-regex"),
            "{:?}",
            no_figures.evidence
        );
        assert_eq!(
            verdict_of(vec![
                series("worker.inspect.heapUsed", 4.0 * MIB, Shape::Linear),
                worker
            ]),
            "worker-heap"
        );
    }

    #[test]
    fn renderers_are_in_page_js_when_the_js_heap_explains_their_growth() {
        let renderer = series("role.renderer.owned", 4.7 * MIB, Shape::Linear);
        let js = |mib| series("browser.js_heap_used", mib * MIB, Shape::Linear);
        // Measured on Chromium: 3.4 MB of JS heap for 4.7 MB of renderer growth.
        assert_eq!(verdict_of(vec![renderer.clone(), js(3.4)]), "in-page-js");
        assert_eq!(
            verdict_of(vec![renderer.clone(), js(1.0)]),
            "renderer-native"
        );
        assert_eq!(verdict_of(vec![renderer]), "renderer-native");
        assert_eq!(
            verdict_of(vec![series("role.browser.owned", 3.0 * MIB, Shape::Linear)]),
            "browser-process"
        );
        assert_eq!(
            verdict_of(vec![series("role.gpu.owned", 3.0 * MIB, Shape::Linear)]),
            "browser-process"
        );
        let flat = Analysis {
            series: vec![series("tree.owned", 0.0, Shape::Plateau)],
            ..Analysis::default()
        };
        assert_eq!(verdict(&flat).source, Source::None);
    }

    #[test]
    fn sources_keep_their_json_names_and_read_unknown_ones() {
        let json = serde_json::to_string(&Source::BrowserAccumulation).unwrap();
        assert_eq!(json, "\"browser-accumulation\"");
        let read: Source = serde_json::from_str("\"in-page-js\"").unwrap();
        assert_eq!(read, Source::InPageJs);
        let other: Source = serde_json::from_str("\"something-new\"").unwrap();
        assert_eq!(other, Source::Unknown);
    }
}

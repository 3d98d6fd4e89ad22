//! The metrics endpoint under a real Prometheus (Debian's `prometheus`, which `cargo xtask
//! setup` installs): two traces, a leaking worker and a flat one, scraped every second while a
//! hundred scrapes a second hit one of them besides. What Prometheus stored must be what the
//! trace's JSON says at the same cycle, the growth and verdict must be the trace's, and the
//! README's alerting rule must load and evaluate.

mod support;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use leaktrace::{collect::roles::Role, trace::Trace};
use serde_json::Value;
use support::{CYCLER_REGEX, Scratch, fixture, free_port, leaktrace, require_root, spawn};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
const CYCLES: &str = "16";

/// Debian's Prometheus: true when it is there. Outside CI a missing one skips with a message;
/// in CI it is a failure.
fn require_prometheus(test: &str) -> bool {
    if Path::new(PROMETHEUS).exists() && Path::new(PROMTOOL).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {PROMETHEUS} is missing; `cargo xtask setup` installs it");
    }
    eprintln!("SKIPPED {test}: {PROMETHEUS} missing (run `cargo xtask setup`)");
    false
}

/// GET over HTTP/1.0: the status and the body.
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// A Prometheus HTTP API query's result list.
fn query(port: u16, promql: &str) -> Vec<Value> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = get(port, &format!("/api/v1/query?query={encoded}")).unwrap();
    assert_eq!(status, 200, "{promql}: {body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    answer["data"]["result"].as_array().unwrap().clone()
}

/// The one series of a query's result: its labels and its samples as (time, value).
fn samples(port: u16, promql: &str) -> Vec<(f64, f64)> {
    let result = query(port, promql);
    assert_eq!(result.len(), 1, "{promql}: {result:?}");
    let values = result[0]["values"].as_array().unwrap();
    values
        .iter()
        .map(|v| {
            (
                v[0].as_f64().unwrap(),
                v[1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

fn last(port: u16, promql: &str) -> Value {
    let result = query(port, &format!("last_over_time({promql}[5m])"));
    assert_eq!(result.len(), 1, "{promql}: {result:?}");
    result[0].clone()
}

fn value(series: &Value) -> f64 {
    series["value"][1].as_str().unwrap().parse().unwrap()
}

/// The README's example alerting rule: the YAML block after its marker.
fn readme_rule() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README");
    let after = readme
        .split_once("<!-- alerting rule: checked by tests/tests/metrics.rs -->")
        .expect("the README's alerting rule marker")
        .1;
    let block = after.split_once("```yaml\n").expect("a yaml block").1;
    block
        .split_once("```")
        .expect("the block's end")
        .0
        .to_string()
}

#[test]
fn prometheus_stores_what_the_trace_says_and_the_readme_rule_evaluates() {
    let name = "metrics_prometheus";
    if !require_root(name) || !require_prometheus(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let (leak_port, flat_port, prometheus_port) = (free_port(), free_port(), free_port());

    let rules = scratch.path("rules.yml");
    std::fs::write(&rules, readme_rule()).unwrap();
    let check = Command::new(PROMTOOL)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(check.status.success(), "promtool check rules: {check:?}");

    let config = scratch.path("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{}']\n\
             scrape_configs:\n\
             \x20 - job_name: leak\n    static_configs: [{{targets: ['127.0.0.1:{leak_port}']}}]\n\
             \x20 - job_name: flat\n    static_configs: [{{targets: ['127.0.0.1:{flat_port}']}}]\n",
            rules.display()
        ),
    )
    .unwrap();
    let _prometheus = spawn(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.path("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stderr(Stdio::null()),
    );
    let up = Instant::now();
    while !get(prometheus_port, "/-/ready").is_ok_and(|(status, _)| status == 200) {
        assert!(up.elapsed() < Duration::from_secs(60), "Prometheus ready");
        thread::sleep(Duration::from_millis(200));
    }

    // Each cycle takes four markers' pauses: some 1.2 s, a scrape or more per cycle.
    let trace = |port: u16, json: &Path, fixed: bool| {
        let mut command = Command::new(leaktrace());
        command
            .args(["run", "-q", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(CYCLER_REGEX)
            .arg("-o")
            .arg(json)
            .arg("--")
            .arg(fixture("cycler"))
            .args([
                "--cycles",
                CYCLES,
                "--markers",
                "stdout",
                "--pause-ms",
                "300",
            ]);
        if fixed {
            command.arg("--fixed");
        }
        spawn(&mut command)
    };
    let (leak_json, flat_json) = (scratch.path("leak.json"), scratch.path("flat.json"));
    let leak = trace(leak_port, &leak_json, false);
    let flat = trace(flat_port, &flat_json, true);

    // The endpoints exist once leaktrace has bound them, before it launches the command.
    for port in [leak_port, flat_port] {
        let start = Instant::now();
        while !get(port, "/metrics").is_ok_and(|(status, _)| status == 200) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "port {port} answers"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    // A hundred scrapes a second for ten seconds, beside Prometheus's: every answer whole.
    let answers: Vec<(u16, String)> = thread::scope(|scope| {
        let clients: Vec<_> = (0..10)
            .map(|_| {
                scope.spawn(|| {
                    let mut answers = Vec::new();
                    let start = Instant::now();
                    for k in 0..100u32 {
                        let due = start + Duration::from_millis(100) * k;
                        thread::sleep(due.saturating_duration_since(Instant::now()));
                        answers.push(get(leak_port, "/metrics").unwrap_or((0, String::new())));
                    }
                    answers
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|client| client.join().unwrap())
            .collect()
    });
    let (leak_out, flat_out) = (leak.wait_output(), flat.wait_output());
    assert!(leak_out.status.success(), "{leak_out:?}");
    assert!(flat_out.status.success(), "{flat_out:?}");
    assert!(answers.len() >= 900, "{} scrapes", answers.len());
    let failed = answers.iter().filter(|(status, _)| *status != 200).count();
    assert_eq!(failed, 0, "of {} scrapes", answers.len());
    for (_, body) in &answers {
        assert!(body.ends_with("# EOF\n"), "a whole answer: {body}");
        assert!(
            body.contains("# TYPE leaktrace_last_cycle gauge\n"),
            "{body}"
        );
    }

    let (leak_trace, flat_trace) = (
        Trace::read(&leak_json).unwrap(),
        Trace::read(&flat_json).unwrap(),
    );
    // The trace unharmed by the scrapes: every cycle in.
    for trace in [&leak_trace, &flat_trace] {
        assert_eq!(trace.cycles.iter().filter(|c| !c.cut).count(), 16);
    }

    // What Prometheus stored at each scrape: the cycle, and the worker's owned PSS at its end,
    // scraped together; the JSON's figure for that cycle, to the byte.
    let cycles = samples(prometheus_port, "leaktrace_last_cycle{job=\"leak\"}[5m]");
    let owned = samples(
        prometheus_port,
        "leaktrace_cycle_end_owned_pss_bytes{job=\"leak\",role=\"worker\"}[5m]",
    );
    let mut compared = std::collections::BTreeSet::new();
    for (at, cycle) in cycles.iter().filter(|(_, cycle)| *cycle >= 1.0) {
        let (_, stored) = owned
            .iter()
            .find(|(t, _)| t == at)
            .unwrap_or_else(|| panic!("no owned PSS scraped with cycle {cycle} at {at}"));
        let json = &leak_trace.cycles[*cycle as usize - 1];
        assert_eq!(json.index as f64, *cycle);
        assert_eq!(
            *stored,
            json.by_role[&Role::Worker].owned() as f64,
            "cycle {cycle}"
        );
        compared.insert(*cycle as u32);
    }
    assert!(
        compared.len() >= 8,
        "cycles seen by Prometheus: {compared:?}"
    );

    // The growth and the verdict: the leak's as the trace fits it, the flat worker's near zero.
    let tree_fit = |trace: &Trace| {
        trace
            .analysis
            .series
            .iter()
            .find(|s| s.name == "tree.owned")
            .unwrap()
            .clone()
    };
    let growth = |job: &str| {
        value(&last(
            prometheus_port,
            &format!("leaktrace_growth_per_cycle_bytes{{job=\"{job}\",scope=\"tree\"}}"),
        ))
    };
    let truth = tree_fit(&leak_trace).per_cycle;
    assert!(truth > 512.0 * 1024.0, "the cycler leaks: {truth}");
    assert!(
        (growth("leak") - truth).abs() <= 0.15 * truth,
        "leak: {} B/cycle scraped, {truth} in the trace",
        growth("leak")
    );
    let per_day = value(&last(
        prometheus_port,
        "leaktrace_growth_per_day_bytes{job=\"leak\",scope=\"tree\"}",
    ));
    assert!(per_day > 5.0 * 1048576.0, "leak per day: {per_day}");
    assert!(
        growth("flat").abs() <= 64.0 * 1024.0,
        "flat: {}",
        growth("flat")
    );
    for (job, trace) in [("leak", &leak_trace), ("flat", &flat_trace)] {
        // The info metric's labels change as the verdict does: the series scraped last.
        let series = query(
            prometheus_port,
            &format!("leaktrace_verdict_info{{job=\"{job}\"}}[5m]"),
        );
        let scraped_last = |s: &Value| {
            s["values"].as_array().unwrap().last().unwrap()[0]
                .as_f64()
                .unwrap()
        };
        let verdict = series
            .iter()
            .max_by(|a, b| scraped_last(a).total_cmp(&scraped_last(b)))
            .unwrap();
        assert_eq!(
            verdict["metric"]["source"].as_str(),
            Some(trace.analysis.verdict.source.to_string().as_str()),
            "{job}: {series:?}"
        );
    }

    // The processes that own the most, by pid: the leaking worker among them, never more than
    // five at a scrape.
    let top = query(
        prometheus_port,
        "last_over_time(leaktrace_top_process_owned_pss_bytes{job=\"leak\"}[5m])",
    );
    let root = leak_trace.root_pid.to_string();
    assert!(
        top.iter()
            .any(|s| s["metric"]["pid"] == root.as_str() && s["metric"]["role"] == "worker"),
        "{top:?}"
    );
    let most = query(
        prometheus_port,
        "max_over_time(count(leaktrace_top_process_owned_pss_bytes{job=\"leak\"})[5m:1s])",
    );
    assert!(value(&most[0]) <= 5.0, "{most:?}");

    // The README's rule, loaded by Prometheus and evaluated without error.
    let (status, body) = get(prometheus_port, "/api/v1/rules").unwrap();
    assert_eq!(status, 200);
    let rules: Value = serde_json::from_str(&body).unwrap();
    let loaded = &rules["data"]["groups"][0]["rules"][0];
    assert_eq!(loaded["health"], "ok", "{rules}");
    assert!(loaded["lastEvaluation"].as_str().is_some(), "{rules}");
}

#[test]
fn a_taken_metrics_port_is_refused_before_anything_runs() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let scratch = Scratch::new("metrics_taken");
    let marker = scratch.path("ran");
    let output = Command::new(leaktrace())
        .args([
            "run",
            "-q",
            "--no-ebpf",
            "--metrics-addr",
            &port.to_string(),
            "--",
            "touch",
        ])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot listen there"),
        "{output:?}"
    );
    assert!(!marker.exists(), "the command must not have run");
}

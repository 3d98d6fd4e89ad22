//! The HTML report of a real trace, opened in real headless Chromium: no console errors, no
//! network requests, one plot per role with a point per cycle, and a screenshot kept in
//! `target/tmp/leaktrace-report.png`.

mod support;

use std::process::Command;

use chromiumoxide::{
    Browser, BrowserConfig,
    cdp::{
        browser_protocol::network::EventRequestWillBeSent,
        js_protocol::runtime::{EventConsoleApiCalled, EventExceptionThrown},
    },
    page::ScreenshotParams,
};
use futures::StreamExt;
use leaktrace::trace::Trace;
use support::{Scratch, fixture, leaktrace, require_chromium, require_root, succeeded};

#[test]
fn the_html_report_is_self_contained_with_a_point_per_cycle_for_every_role() {
    let test = "the_html_report_is_self_contained_with_a_point_per_cycle_for_every_role";
    if !require_root(test) || !require_chromium(test) {
        return;
    }
    let scratch = Scratch::new("html");
    let (json, html) = (scratch.path("t.json"), scratch.path("report.html"));
    succeeded(
        Command::new(leaktrace())
            .args(["run", "-q", "--cycle-regex", r"cycle \d+ done", "-o"])
            .arg(&json)
            .arg("--")
            .arg(fixture("browser_worker"))
            .args([
                "--contexts",
                "1",
                "--pages",
                "2",
                "--cycles",
                "4",
                "--retain-mb",
                "4",
                "--profile",
            ])
            .arg(scratch.path("worker-profile")),
    );
    succeeded(
        Command::new(leaktrace())
            .arg("report")
            .arg(&json)
            .arg("--html")
            .arg(&html),
    );
    let trace = Trace::read(&json).unwrap();
    let complete: Vec<_> = trace.cycles.iter().filter(|c| !c.cut).collect();
    let roles: std::collections::BTreeSet<&leaktrace::trace::Role> =
        complete.iter().flat_map(|c| c.by_role.keys()).collect();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (requests, console_errors, plots) = runtime.block_on(async {
        let config = BrowserConfig::builder()
            .chrome_executable(support::CHROMIUM)
            .no_sandbox()
            .user_data_dir(scratch.path("reader-profile"))
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
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let plots: Vec<(String, u64)> = page
            .evaluate("[...document.querySelectorAll('figure.plot')].map(f => [f.dataset.series, f.querySelectorAll('circle').length])")
            .await
            .unwrap()
            .into_value()
            .unwrap();
        let screenshot = page.screenshot(ScreenshotParams::builder().full_page(true).build()).await.unwrap();
        let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("leaktrace-report.png");
        std::fs::write(&artifact, screenshot).unwrap();
        let mut other_requests = Vec::new();
        while let Ok(Some(request)) = tokio::time::timeout(std::time::Duration::from_millis(100), requests.next()).await {
            if request.request.url != url {
                other_requests.push(request.request.url.clone());
            }
        }
        let mut errors = 0;
        while let Ok(Some(message)) = tokio::time::timeout(std::time::Duration::from_millis(100), console.next()).await {
            errors += usize::from(format!("{:?}", message.r#type).to_lowercase().contains("error"));
        }
        while let Ok(Some(_)) = tokio::time::timeout(std::time::Duration::from_millis(100), exceptions.next()).await {
            errors += 1;
        }
        let _ = browser.close().await;
        let _ = browser.wait().await;
        driver.abort();
        (other_requests, errors, plots)
    });
    assert!(requests.is_empty(), "the page loads nothing: {requests:?}");
    assert_eq!(console_errors, 0);
    let role_plots: Vec<&(String, u64)> = plots
        .iter()
        .filter(|(s, _)| s.starts_with("role."))
        .collect();
    assert_eq!(
        role_plots.len(),
        roles.len(),
        "one plot per role: {plots:?}"
    );
    for (series, points) in role_plots {
        assert_eq!(
            *points as usize,
            complete.len(),
            "{series}: a point per cycle"
        );
    }
}

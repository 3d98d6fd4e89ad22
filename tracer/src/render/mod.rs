//! Rendering: what people read of a trace and its analysis. [`report`] is the terminal and
//! Markdown report, [`html`] one page with plots, [`diff`] two traces side by side,
//! [`trace_events`] Chrome's Trace Event Format, [`progress`] the line drawn while a trace
//! runs, and [`metrics`] the OpenMetrics endpoint.

pub mod diff;
pub mod html;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod trace_events;

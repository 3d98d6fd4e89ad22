//! What leaktrace says on stderr while it traces: warnings (`tracing::warn!`, printed as
//! `leaktrace: warning: …`), notes and interim lines (`tracing::info!`, `leaktrace: …`), and with
//! `-v` what it is doing (`tracing::debug!`, `leaktrace: …`). `-q` keeps all of them off; errors
//! that end the command are printed by [`crate::cli`] itself.
//!
//! Every line is written with the progress bar out of the way ([`around_bar`]), so neither
//! garbles the other, whichever part of leaktrace says it. Only leaktrace's own events are shown:
//! its dependencies (chromiumoxide logs through `tracing` too) stay silent.

use std::{
    fmt,
    io::{self, Write},
    sync::Mutex,
};

use indicatif::ProgressBar;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    filter::Targets,
    fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

/// The progress bar being drawn, if any: lines are written while it is suspended.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// How much leaktrace says: `-q`, nothing but errors; by default warnings and notes; `-v`, what
/// it is doing as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

impl Verbosity {
    pub fn of(quiet: bool, verbose: bool) -> Verbosity {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, false) => Verbosity::Normal,
            (false, true) => Verbosity::Verbose,
        }
    }

    fn level(self) -> Level {
        match self {
            Verbosity::Quiet => Level::ERROR,
            Verbosity::Normal => Level::INFO,
            Verbosity::Verbose => Level::DEBUG,
        }
    }
}

/// Shows leaktrace's own events on stderr down to the level `verbosity` asks for. Once per
/// process; later calls (a test harness running several commands) change nothing.
pub fn init(verbosity: Verbosity) {
    let level = verbosity.level();
    let layer = tracing_subscriber::fmt::layer()
        .event_format(Lines)
        .with_writer(AroundBar);
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(Targets::new().with_target(env!("CARGO_CRATE_NAME"), level))
        .try_init();
}

/// From now on lines are written around `bar` (None: it is gone).
pub fn around_bar(bar: Option<ProgressBar>) {
    *BAR.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// `leaktrace: warning: message` for a warning, `leaktrace: message` for a note.
struct Lines;

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let kind = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            _ => "",
        };
        write!(writer, "leaktrace: {kind}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Stderr, with the progress bar suspended for each line (the formatter hands a whole line to
/// one `write`).
struct AroundBar;

impl<'a> MakeWriter<'a> for AroundBar {
    type Writer = AroundBar;

    fn make_writer(&'a self) -> AroundBar {
        AroundBar
    }
}

impl Write for AroundBar {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let write = || io::stderr().lock().write_all(line);
        match &*BAR.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(bar) => bar.suspend(write)?,
            None => write()?,
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// An error and its causes, on one line.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

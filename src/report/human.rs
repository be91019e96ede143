//! The human view: a header with the offer, one progress line per scenario with the details
//! of what went wrong, and the recap; on a terminal, a live bar of the running scenarios.

use std::fmt::Write as _;
use std::io::Write;

use vhu_mock_frontend::transcript::render;

use super::Reporter;
use super::label::{self, paint};
use super::recap::{self, Recap};
use crate::engine::{Offer, Outcome, RunEvent, RunSummary, ScenarioResult};

/// Human output. On a terminal ([`Human::live`]) a progress bar under the lines shows how far
/// the run is and which scenarios are running; the lines are the same either way.
pub struct Human<W: Write> {
    out: W,
    done: usize,
    total: usize,
    verbose: bool,
    color: bool,
    show_rules: bool,
    live: Option<indicatif::ProgressBar>,
    running: Vec<String>,
    recap: Recap,
}

impl<W: Write> Human<W> {
    /// Writes to `out`; `verbose` shows transcripts of warnings too.
    pub fn new(out: W, verbose: bool) -> Self {
        Self {
            out,
            done: 0,
            total: 0,
            verbose,
            color: false,
            show_rules: false,
            live: None,
            running: Vec::new(),
            recap: Recap::default(),
        }
    }

    /// Verdict labels in colour (ANSI escapes).
    pub fn with_color(mut self, color: bool) -> Self {
        self.color = color;
        self
    }

    /// The whole rule coverage table after the recap (`--rules`), rather than its counts.
    pub fn show_rules(mut self, on: bool) -> Self {
        self.show_rules = on;
        self
    }

    /// A live progress bar on standard error (for a terminal: `cli` turns it on when both
    /// standard output and standard error are terminals).
    pub fn live(mut self, on: bool) -> Self {
        self.live = on.then(|| {
            // Hidden until the run starts and its size is known.
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::hidden(),
            );
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{pos:>3}/{len}] {elapsed} {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        self
    }

    /// Writes `text` above the progress bar (or plainly without one).
    fn print(&mut self, text: &str) -> std::io::Result<()> {
        let out = &mut self.out;
        match &self.live {
            Some(bar) => bar.suspend(|| {
                out.write_all(text.as_bytes())?;
                out.flush()
            }),
            None => out.write_all(text.as_bytes()),
        }
    }

    fn show_running(&self) {
        if let Some(bar) = &self.live {
            bar.set_position(self.done as u64);
            bar.set_message(format!("running: {}", self.running.join(", ")));
        }
    }

    fn started(&mut self, total: usize, offer: &Offer) -> std::io::Result<()> {
        self.total = total;
        if let Some(bar) = &self.live {
            bar.set_length(total as u64);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        self.print(&header(total, offer))
    }

    fn scenario_done(&mut self, r: &ScenarioResult) -> std::io::Result<()> {
        self.done += 1;
        if let Some(at) = self.running.iter().position(|id| *id == r.id) {
            self.running.remove(at);
        }
        let mut text = format!(
            "[{:>3}/{}] {} {} ({} ms)\n",
            self.done,
            self.total,
            paint(label::of(r), self.color),
            r.id,
            r.duration_ms
        );
        text.push_str(&details(r, self.verbose));
        self.recap.add(r);
        let written = self.print(&text);
        self.show_running();
        written
    }

    fn finished(&mut self, summary: &RunSummary) -> std::io::Result<()> {
        if let Some(bar) = self.live.take() {
            bar.finish_and_clear();
        }
        let mut text = self.recap.render(&summary.totals, self.color);
        text.push_str(&recap::stale(&summary.stale, self.color));
        text.push_str(&recap::rules(&summary.rules, self.show_rules));
        self.out.write_all(text.as_bytes())?;
        self.out.flush()
    }
}

impl<W: Write> Reporter for Human<W> {
    fn on_event(&mut self, e: &RunEvent<'_>) -> std::io::Result<()> {
        match *e {
            RunEvent::RunStarted { total, offer } => self.started(total, offer),
            RunEvent::ScenarioStarted { id, .. } => {
                self.running.push(id.to_string());
                self.show_running();
                Ok(())
            }
            RunEvent::ScenarioSkipped { result, .. }
            | RunEvent::ScenarioFinished { result, .. } => self.scenario_done(result),
            RunEvent::RunFinished(summary) => self.finished(summary),
        }
    }
}

/// The two header lines: what the back-end offers, and its device type or that it is unknown.
fn header(total: usize, offer: &Offer) -> String {
    let mut text = format!(
        "vhu-conform: {total} scenarios; back-end offers features {:#x}, protocol features {:#x}; rings of {}\n",
        offer.features, offer.protocol, offer.queue_size
    );
    text.push_str(&match (offer.device, offer.device_source) {
        (Some(d), Some(src)) => {
            format!("vhu-conform: device type {d} (from {})\n", src.describe())
        }
        _ => "vhu-conform: DEVICE TYPE UNKNOWN: device-specific scenarios (data path, config layout) are skipped; pass --device TYPE (block, net, fs, vsock, rng, ...)\n".to_string(),
    });
    text
}

/// What to show under a scenario's progress line: why it was skipped or not judged, its
/// findings and notes, and the end of the transcript of a failure (of any finding when
/// `verbose`).
pub fn details(r: &ScenarioResult, verbose: bool) -> String {
    let mut s = String::new();
    match &r.outcome {
        Outcome::Skip { reason } => {
            let _ = writeln!(s, "        skipped: {reason}");
        }
        Outcome::Error { reason } => {
            let _ = writeln!(
                s,
                "        harness error (not the back-end's fault): {reason}"
            );
        }
        _ => {}
    }
    for f in &r.findings {
        let _ = writeln!(s, "        {} [{:?}] {}", f.rule, f.level, f.summary);
        let _ = writeln!(s, "          sent:     {}", f.sent);
        let _ = writeln!(s, "          received: {}", f.received);
        let _ = writeln!(s, "          expected: {}", f.expected);
    }
    for n in &r.notes {
        let _ = writeln!(s, "        note: {n}");
    }
    let show = matches!(r.outcome, Outcome::Fail) || (verbose && !r.findings.is_empty());
    if show && !r.transcript.is_empty() {
        let tail = &r.transcript[r.transcript.len().saturating_sub(12)..];
        let _ = writeln!(s, "        transcript (last {} messages):", tail.len());
        for line in render(tail).lines() {
            let _ = writeln!(s, "          {line}");
        }
    }
    s
}

//! Samples into percentiles, a progress line on stderr, and the table at the end.

use std::io::Write;
use std::time::Duration;

/// Latency samples of one scenario.
#[derive(Default, Clone)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    /// The `p`-th fraction (0.5 for the median), or zero without samples.
    pub fn at(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        match sorted.len() {
            0 => Duration::ZERO,
            n => sorted[(((n - 1) as f64) * p).round() as usize],
        }
    }

    pub fn p50(&self) -> Duration {
        self.at(0.5)
    }

    pub fn p99(&self) -> Duration {
        self.at(0.99)
    }
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `a / b` as a ratio.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 { "–".into() } else { format!("{:.2}x", a / b) }
}

/// Rewrites the progress line on stderr.
pub fn progress(stage: &str, detail: &str) {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K[bench] {stage}: {detail}");
    let _ = err.flush();
}

/// Ends the progress line.
pub fn progress_done() {
    eprint!("\r\x1b[K");
}

/// One line of the table.
pub struct Row {
    pub what: String,
    pub aic: String,
    pub against: String,
    pub ratio: String,
    pub target: String,
}

/// The result table, printed as Markdown.
#[derive(Default)]
pub struct Table(pub Vec<Row>);

impl Table {
    pub fn add(&mut self, what: &str, aic: String, against: String, ratio: String, target: &str) {
        self.0.push(Row { what: what.into(), aic, against, ratio, target: target.into() });
    }

    pub fn print(&self) {
        println!("| measure | aic | compared with | ratio | target |");
        println!("|---|---|---|---|---|");
        for r in &self.0 {
            println!("| {} | {} | {} | {} | {} |", r.what, r.aic, r.against, r.ratio, r.target);
        }
    }
}

//! The relay's counters and `GET /metrics` in the Prometheus text format.
//!
//! Everything here is a count or a duration: no label ever carries a code,
//! an email, an alias, a host name or a command. The rest of the relay calls
//! the small methods on [`Metrics`]; the exposition is written by hand.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use super::AppState;

/// How a command ended, as counted in `aic_execs_total{outcome=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// Ran and exited 0.
    Ok,
    /// Ran and exited non-zero.
    Failed,
    /// Killed by its timeout.
    TimedOut,
    /// Killed for passing the output cap.
    Truncated,
    /// The daemon or its operator refused it (mode, denial, approval timeout, busy).
    Refused,
    /// The machine's link dropped while it ran.
    Lost,
    /// The caller went away before it ended.
    Cancelled,
    /// The relay refused it before any machine saw it (bad request, access, offline).
    Rejected,
}

impl ExecOutcome {
    /// All outcomes, in the order they are exposed.
    const ALL: [ExecOutcome; 8] = [
        Self::Ok,
        Self::Failed,
        Self::TimedOut,
        Self::Truncated,
        Self::Refused,
        Self::Lost,
        Self::Cancelled,
        Self::Rejected,
    ];

    /// The label value.
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Truncated => "truncated",
            Self::Refused => "refused",
            Self::Lost => "lost",
            Self::Cancelled => "cancelled",
            Self::Rejected => "rejected",
        }
    }

    /// The outcome of a command that exited.
    pub fn of_exit(exit_code: i32, truncated: bool, timed_out: bool) -> Self {
        match (timed_out, truncated, exit_code) {
            (true, _, _) => Self::TimedOut,
            (false, true, _) => Self::Truncated,
            (false, false, 0) => Self::Ok,
            _ => Self::Failed,
        }
    }
}

/// Counts the open MCP sessions; `None` when it cannot look right now.
pub type SessionCounter = Box<dyn Fn() -> Option<usize> + Send + Sync>;

/// Upper bounds of the exec latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The relay's counters; shared by every connection through [`AppState`].
#[derive(Default)]
pub struct Metrics {
    /// Machines that registered (got a new code).
    registrations: AtomicU64,
    /// Commands ended, per [`ExecOutcome::ALL`] index.
    execs: [AtomicU64; 8],
    /// Commands that exited, per latency bucket (not cumulative; summed when written).
    latency_buckets: [AtomicU64; 12],
    /// Commands that exited, all of them.
    latency_count: AtomicU64,
    /// Their summed latency in microseconds.
    latency_sum_us: AtomicU64,
    /// Output bytes handed to callers.
    bytes_streamed: AtomicU64,
    /// Output bytes received for callers that have not taken them yet: what
    /// the relay holds (a slow caller's window, per command).
    bytes_held: AtomicU64,
    /// Requests answered 429.
    rate_limited: AtomicU64,
    /// Counts the open MCP sessions when asked; set by the MCP endpoint.
    mcp_sessions: OnceLock<SessionCounter>,
    /// The last count of MCP sessions read, for when the table is busy.
    mcp_sessions_last: AtomicUsize,
}

impl Metrics {
    /// A machine registered.
    pub fn registered(&self) {
        self.registrations.fetch_add(1, Ordering::Relaxed);
    }

    /// A request got 429.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// `bytes` of output went to a caller.
    pub fn streamed(&self, bytes: usize) {
        self.bytes_streamed.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `bytes` of output arrived for a caller, which has not taken them yet.
    pub fn hold(&self, bytes: usize) {
        self.bytes_held.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `bytes` of held output were taken by their caller, or dropped with it.
    pub fn release(&self, bytes: usize) {
        self.bytes_held.fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    /// Output bytes handed to callers so far.
    pub fn streamed_bytes(&self) -> u64 {
        self.bytes_streamed.load(Ordering::Relaxed)
    }

    /// Output bytes held for callers right now.
    pub fn held(&self) -> u64 {
        self.bytes_held.load(Ordering::Relaxed)
    }

    /// A command ended; `latency` is given for commands that exited.
    pub fn exec_ended(&self, outcome: ExecOutcome, latency: Option<Duration>) {
        let index = ExecOutcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.execs[index].fetch_add(1, Ordering::Relaxed);
        if let Some(latency) = latency {
            let secs = latency.as_secs_f64();
            if let Some(bucket) = LATENCY_BUCKETS.iter().position(|le| secs <= *le) {
                self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
            }
            self.latency_count.fetch_add(1, Ordering::Relaxed);
            self.latency_sum_us.fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// Where the open MCP sessions are counted (`None`: busy right now).
    pub fn count_mcp_sessions_with(&self, count: SessionCounter) {
        let _ = self.mcp_sessions.set(count);
    }

    fn mcp_sessions(&self) -> usize {
        let fresh = self.mcp_sessions.get().and_then(|count| count());
        match fresh {
            Some(n) => {
                self.mcp_sessions_last.store(n, Ordering::Relaxed);
                n
            }
            None => self.mcp_sessions_last.load(Ordering::Relaxed),
        }
    }

    /// The exposition: each metric's help and type lines, then its samples.
    pub fn render(&self, agents_online: usize) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        family(&mut out, "aic_agents_online", "gauge", "Machines whose daemon is connected now.");
        out.push_str(&format!("aic_agents_online {agents_online}\n"));
        family(&mut out, "aic_agent_registrations_total", "counter", "Machines registered (new codes handed out).");
        out.push_str(&format!("aic_agent_registrations_total {}\n", load(&self.registrations)));
        family(&mut out, "aic_execs_total", "counter", "Commands by how they ended.");
        for (outcome, count) in ExecOutcome::ALL.iter().zip(&self.execs) {
            out.push_str(&format!("aic_execs_total{{outcome=\"{}\"}} {}\n", outcome.label(), load(count)));
        }
        self.render_latency(&mut out);
        family(&mut out, "aic_output_bytes_total", "counter", "Command output bytes streamed to callers.");
        out.push_str(&format!("aic_output_bytes_total {}\n", load(&self.bytes_streamed)));
        family(
            &mut out,
            "aic_output_held_bytes",
            "gauge",
            "Command output bytes held for callers that have not read them.",
        );
        out.push_str(&format!("aic_output_held_bytes {}\n", load(&self.bytes_held)));
        family(&mut out, "aic_rate_limited_requests_total", "counter", "Requests refused with 429.");
        out.push_str(&format!("aic_rate_limited_requests_total {}\n", load(&self.rate_limited)));
        family(&mut out, "aic_mcp_sessions", "gauge", "MCP sessions open now.");
        out.push_str(&format!("aic_mcp_sessions {}\n", self.mcp_sessions()));
        out
    }

    fn render_latency(&self, out: &mut String) {
        let name = "aic_exec_duration_seconds";
        family(out, name, "histogram", "Time from hand-off to exit, for commands that exited.");
        let mut cumulative = 0;
        for (le, count) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            cumulative += count.load(Ordering::Relaxed);
            out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {cumulative}\n"));
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}\n"));
    }
}

/// A metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

/// `GET /metrics`.
pub async fn handler(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(state.hub.online());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Serves only `/metrics` on `listener` (for `--metrics-listen`) until the relay shuts down.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let app = axum::Router::new().route("/metrics", axum::routing::get(handler)).with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_outcomes_are_labelled() {
        let m = Metrics::default();
        m.exec_ended(ExecOutcome::Ok, Some(Duration::from_millis(30)));
        m.exec_ended(ExecOutcome::of_exit(1, false, false), Some(Duration::from_secs(2)));
        m.exec_ended(ExecOutcome::Rejected, None);
        let text = m.render(2);
        for line in [
            "aic_agents_online 2",
            "aic_execs_total{outcome=\"ok\"} 1",
            "aic_execs_total{outcome=\"failed\"} 1",
            "aic_execs_total{outcome=\"rejected\"} 1",
            "aic_exec_duration_seconds_bucket{le=\"0.01\"} 0",
            "aic_exec_duration_seconds_bucket{le=\"0.05\"} 1",
            "aic_exec_duration_seconds_bucket{le=\"2.5\"} 2",
            "aic_exec_duration_seconds_bucket{le=\"+Inf\"} 2",
            "aic_exec_duration_seconds_sum 2.03",
            "aic_exec_duration_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}

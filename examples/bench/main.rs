//! The load generator (issue 15): a release `aic-relay` and `aic-daemon` in
//! processes of their own on loopback, driven by callers and simulated
//! agents in this one, measured against bare spawns and, with
//! `--ssh-config`, OpenSSH. A progress line on stderr while it runs, a
//! Markdown table on stdout at the end. `scripts/bench` builds and runs it.
//!
//! ```sh
//! scripts/bench                 # everything, with OpenSSH beside it
//! cargo run --release --example bench -- --quick   # a seconds-long smoke
//! ```

mod agents;
mod http;
mod procs;
mod report;
mod scenarios;
mod ssh;

use std::path::PathBuf;

/// How much of everything to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// A seconds-long smoke (CI): tiny sizes, nothing to read into the figures.
    pub quick: bool,
    /// Sequential runs of each round trip.
    pub runs: usize,
    /// Batches of 32 parallel runs.
    pub batches: usize,
    /// Requests per caller in the 32- and 128-caller runs.
    pub per_caller: usize,
    /// How long the relay-alone run lasts.
    pub alone: std::time::Duration,
    /// Bytes of each streamed command's output.
    pub stream_bytes: u64,
    /// Streamed commands per stream, one after another.
    pub stream_reps: usize,
    /// Bad-code requests the flooding address tries to send at the rate-limited relay.
    pub flood: usize,
    /// Fresh addresses each good caller moves through while it is flooded
    /// (all of them together stay under the relay's global ceiling).
    pub flood_rounds: usize,
    /// Requests per good caller while it is flooded.
    pub good: usize,
    /// Simulated agents held at once.
    pub agents: usize,
    /// How long the idle daemon is watched.
    pub idle: std::time::Duration,
    /// Where `aic-relay` and `aic-daemon` are.
    pub bin: PathBuf,
    /// OpenSSH client config with a host `bench` (from `scripts/sshd-bench`).
    pub ssh_config: Option<PathBuf>,
    /// Only these scenarios (`--only exec,stream`); all when empty.
    pub only: Vec<String>,
}

impl Plan {
    fn from_args() -> anyhow::Result<Self> {
        let mut args = std::env::args().skip(1);
        let exe = std::env::current_exe()?;
        // target/<profile>/examples/bench -> target/<profile>
        let bin = exe.parent().and_then(|p| p.parent()).map(PathBuf::from).unwrap_or_default();
        let mut plan = Self::full(bin);
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{arg} needs a value"));
            match arg.as_str() {
                "--quick" => {
                    plan = Self { bin: plan.bin, ssh_config: plan.ssh_config, only: plan.only, ..Self::quick() }
                }
                "--agents" => plan.agents = value()?.parse()?,
                "--bin" => plan.bin = value()?.into(),
                "--ssh-config" => plan.ssh_config = Some(value()?.into()),
                "--only" => plan.only = value()?.split(',').map(str::to_owned).collect(),
                "-h" | "--help" => {
                    println!("{}", usage());
                    std::process::exit(0);
                }
                other => anyhow::bail!("unknown argument {other}; {}", usage()),
            }
        }
        Ok(plan)
    }

    fn full(bin: PathBuf) -> Self {
        Self {
            quick: false,
            runs: 500,
            batches: 20,
            per_caller: 40,
            alone: std::time::Duration::from_secs(5),
            stream_bytes: 100 * 1000 * 1000,
            stream_reps: 1,
            flood: 10_000,
            flood_rounds: 6,
            good: 100,
            agents: 15_000,
            idle: std::time::Duration::from_secs(10),
            bin,
            ssh_config: None,
            only: Vec::new(),
        }
    }

    /// Whether scenario `name` is to run.
    pub fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }

    fn quick() -> Self {
        Self {
            quick: true,
            runs: 20,
            batches: 2,
            per_caller: 2,
            alone: std::time::Duration::from_millis(500),
            stream_bytes: 1024 * 1024,
            stream_reps: 1,
            flood: 300,
            flood_rounds: 1,
            good: 10,
            agents: 100,
            idle: std::time::Duration::from_secs(1),
            ..Self::full(PathBuf::new())
        }
    }
}

/// The scenarios `--only` picks from.
pub const SCENARIOS: &[&str] = &["exec", "callers", "stream", "alone", "idle", "flood", "held", "ssh"];

/// What the generator takes (`scripts/bench --help` says how to run it).
fn usage() -> String {
    format!(
        "use --quick (a seconds-long smoke), --agents N (agents held), --bin DIR (aic-relay and aic-daemon), \
         --ssh-config FILE (OpenSSH beside aic), --only {} (some scenarios)",
        SCENARIOS.join(",")
    )
}

/// Lets this process hold as many sockets as the machine allows it.
fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some() {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let plan = Plan::from_args()?;
    if let Some(unknown) = plan.only.iter().find(|o| !SCENARIOS.contains(&o.as_str())) {
        anyhow::bail!("--only {unknown}: the scenarios are {}", SCENARIOS.join(","));
    }
    raise_nofile();
    let table = scenarios::run_all(&plan).await?;
    report::progress_done();
    table.print();
    Ok(())
}

//! The same measures through OpenSSH, for the ratios: a `true` round trip
//! cold and over a ControlMaster connection, 32 in parallel, and a transfer.
//! `scripts/sshd-bench` starts the sshd and writes the client config naming
//! the host `bench`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::report::{Samples, progress};

/// What OpenSSH measured.
pub struct SshFigures {
    pub cold: Samples,
    pub mux: Samples,
    pub parallel32: Samples,
    /// Bytes moved and how long it took.
    pub transfer: (u64, Duration),
}

/// `ssh -F config bench <args…>`.
fn ssh(config: &Path, extra: &[&str], remote: &str) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-F").arg(config).args(extra).arg("bench").arg(remote).stdin(Stdio::null());
    c
}

async fn run_true(config: &Path, extra: &[&str]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = ssh(config, extra, "true").stdout(Stdio::null()).status().await?;
    if !status.success() {
        bail!("ssh bench true failed ({status}); see scripts/sshd-bench");
    }
    Ok(started.elapsed())
}

/// Runs every OpenSSH measure against the host `bench` in `config`.
pub async fn measure(config: &Path, runs: usize, batches: usize, file: &Path) -> anyhow::Result<SshFigures> {
    let cold_opts = ["-o", "ControlMaster=no", "-o", "ControlPath=none"];
    let mut cold = Samples::default();
    for i in 0..runs.min(20) {
        progress("ssh cold", &format!("{i}"));
        cold.0.push(run_true(config, &cold_opts).await?);
    }
    run_true(config, &[]).await.context("opening the ControlMaster connection")?;
    let mut mux = Samples::default();
    for i in 0..runs {
        progress("ssh ControlMaster", &format!("{i}/{runs}"));
        mux.0.push(run_true(config, &[]).await?);
    }
    let mut parallel32 = Samples::default();
    for b in 0..batches {
        progress("ssh 32 parallel", &format!("{b}/{batches}"));
        let started = Instant::now();
        let all = (0..32).map(|_| run_true(config, &[]));
        for r in futures_util::future::join_all(all).await {
            r?;
        }
        parallel32.0.push(started.elapsed());
    }
    progress("ssh transfer", &file.display().to_string());
    let transfer = transfer(config, file).await?;
    Ok(SshFigures { cold, mux, parallel32, transfer })
}

/// `cat file` over the ControlMaster connection, counting what arrives.
async fn transfer(config: &Path, file: &Path) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut child = ssh(config, &[], &format!("cat {}", file.display())).stdout(Stdio::piped()).spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = out.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    child.wait().await?;
    Ok((total, started.elapsed()))
}

//! Each measure of the issue, one function each, and the table they make.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::http::Conn;
use crate::procs::{self, Proc};
use crate::report::{Samples, Table, ms, progress, ratio};
use crate::{Plan, agents, ssh};

const EXEC: &str = "/api/v1/exec";

/// The loopback address `a.b.c` under 127/8: callers from different ones
/// count as different clients for the relay's per-address limits.
fn lo(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

fn body(code: &str, command: &str) -> String {
    serde_json::json!({"code": code, "command": command}).to_string()
}

/// Everything measured, for the table.
#[derive(Default)]
struct Figures {
    spawn: Samples,
    /// `sh -c true` spawned the daemon's way: own group, piped output read to its end.
    spawn_piped: Samples,
    spawn32: Samples,
    exec: Samples,
    exec32: Samples,
    callers: Vec<(usize, Samples, f64)>,
    alone: (Samples, f64),
    /// Raw output (`application/octet-stream`), one stream and two at once.
    stream1: f64,
    stream2: f64,
    /// The same one stream as SSE events.
    stream_sse: f64,
    ttfb: Samples,
    relay_empty_kib: u64,
    daemon_kib: u64,
    daemon_cpu: (Duration, Duration),
    flood: (Samples, Samples, Flooded),
    held: Held,
    ssh: Option<ssh::SshFigures>,
}

/// What holding many idle agents cost.
#[derive(Default)]
struct Held {
    agents: usize,
    per_agent_kib: f64,
    before_kib: u64,
    after_kib: u64,
    per_sec: f64,
    exec: Samples,
}

/// Runs every scenario in turn.
pub async fn run_all(plan: &Plan) -> anyhow::Result<Table> {
    let dir = tempfile::tempdir()?;
    let mut f = Figures::default();
    if plan.wants("exec") {
        (f.spawn, f.spawn32) = spawn_floor(plan).await?;
        f.spawn_piped = spawn_piped(plan).await?;
    }
    let (part, whole) = output_files(dir.path(), plan)?;
    main_relay(plan, dir.path(), &part, &mut f).await?;
    if plan.wants("flood") {
        f.flood = flood(plan, dir.path()).await?;
    }
    if plan.wants("held") {
        f.held = agents_held(plan, dir.path()).await?;
    }
    if let Some(config) = plan.ssh_config.as_ref().filter(|_| plan.wants("ssh")) {
        f.ssh = Some(ssh::measure(config, plan.runs.min(200), plan.batches, &whole).await?);
    }
    Ok(table(plan, &f))
}

/// The relay every exec measure goes through, with two real daemons.
async fn main_relay(plan: &Plan, dir: &Path, part: &Path, f: &mut Figures) -> anyhow::Result<()> {
    let args = [
        "--rate-limit",
        "0",
        "--registrations-per-day",
        "0",
        "--max-connections",
        "19000",
        "--max-connections-per-ip",
        "19000",
        "--max-output",
        "209715200",
        "--max-in-flight",
        "256",
    ];
    let (relay, addr) = procs::relay(&plan.bin, dir.join("relay"), &args).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.relay_empty_kib = relay.rss_kib();
    let (daemon, code) = procs::daemon(&plan.bin, addr, dir.join("d1"), 256).await?;
    let (daemon2, code2) = procs::daemon(&plan.bin, addr, dir.join("d2"), 256).await?;
    if plan.wants("idle") {
        (f.daemon_kib, f.daemon_cpu) = daemon_idle(&daemon, plan).await;
    }
    if plan.wants("exec") {
        f.exec = sequential(addr, &code, plan.runs).await?;
        f.exec32 = parallel32(addr, &code, plan.batches).await?;
    }
    for callers in [32, 128].into_iter().filter(|_| plan.wants("callers")) {
        let (samples, per_sec) = concurrent(addr, std::slice::from_ref(&code), callers, plan.per_caller).await?;
        f.callers.push((callers, samples, per_sec));
    }
    if plan.wants("stream") {
        (f.stream1, f.stream2, f.stream_sse) = streaming(addr, &[&code, &code2], part, plan).await?;
        f.ttfb = first_output(addr, &code, plan).await?;
    }
    if plan.wants("alone") {
        f.alone = relay_alone(addr, plan).await?;
    }
    daemon.stop().await;
    daemon2.stop().await;
    relay.stop().await;
    Ok(())
}

/// `sh -c true` spawned directly, as the daemon spawns: one at a time, and 32 at once.
async fn spawn_floor(plan: &Plan) -> anyhow::Result<(Samples, Samples)> {
    let spawn = || async {
        let started = Instant::now();
        let status = tokio::process::Command::new("sh").args(["-c", "true"]).status().await?;
        anyhow::ensure!(status.success(), "sh -c true failed");
        Ok::<_, anyhow::Error>(started.elapsed())
    };
    let mut one = Samples::default();
    for i in 0..plan.runs {
        progress("spawn floor", &format!("{i}/{}", plan.runs));
        one.0.push(spawn().await?);
    }
    let mut batch = Samples::default();
    for b in 0..plan.batches {
        progress("32 parallel spawns", &format!("{b}/{}", plan.batches));
        let started = Instant::now();
        for r in futures_util::future::join_all((0..32).map(|_| spawn())).await {
            r?;
        }
        batch.0.push(started.elapsed());
    }
    Ok((one, batch))
}

/// `sh -c true` spawned as the daemon spawns it: its own process group,
/// stdout and stderr piped and read to their end, then waited for.
async fn spawn_piped(plan: &Plan) -> anyhow::Result<Samples> {
    use std::process::Stdio;
    use tokio::io::AsyncReadExt;
    let mut samples = Samples::default();
    for i in 0..plan.runs {
        progress("spawn floor, piped", &format!("{i}/{}", plan.runs));
        let started = Instant::now();
        let mut command = tokio::process::Command::new("sh");
        command.args(["-c", "true"]).process_group(0).stdin(Stdio::null());
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let (mut out, mut err) = (child.stdout.take().context("stdout")?, child.stderr.take().context("stderr")?);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        tokio::try_join!(out.read_to_end(&mut a), err.read_to_end(&mut b))?;
        anyhow::ensure!(child.wait().await?.success(), "sh -c true failed");
        samples.0.push(started.elapsed());
    }
    Ok(samples)
}

/// Writes the output the streaming measures read: a part (one command's
/// output) and the whole (all parts, for the ssh transfer); printable lines.
fn output_files(dir: &Path, plan: &Plan) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let line = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+\n";
    let part: Vec<u8> = line.iter().copied().cycle().take(plan.stream_bytes as usize).collect();
    let (part_path, whole_path) = (dir.join("part.txt"), dir.join("whole.txt"));
    std::fs::write(&part_path, &part)?;
    std::fs::write(&whole_path, part.repeat(plan.stream_reps))?;
    Ok((part_path, whole_path))
}

/// The daemon connected and idle: its RSS, and CPU time used over `plan.idle`.
async fn daemon_idle(daemon: &Proc, plan: &Plan) -> (u64, (Duration, Duration)) {
    progress("idle daemon", &format!("watching for {:?}", plan.idle));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = daemon.cpu();
    tokio::time::sleep(plan.idle).await;
    (daemon.rss_kib(), (daemon.cpu() - cpu, plan.idle))
}

/// One exec of `command` on `conn`, checked for success; its latency.
async fn exec_once(conn: &mut Conn, body: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let resp = conn.post(EXEC, body).await?;
    if resp.status != 200 {
        bail!("exec answered {}: {}", resp.status, String::from_utf8_lossy(&resp.body));
    }
    Ok(started.elapsed())
}

/// `true` one after another over one kept-alive connection (after 20 to warm up).
async fn sequential(addr: SocketAddr, code: &str, runs: usize) -> anyhow::Result<Samples> {
    let mut conn = Conn::open(addr, lo(0, 0, 1)).await?;
    let body = body(code, "true");
    for _ in 0..20 {
        exec_once(&mut conn, &body).await?;
    }
    let mut samples = Samples::default();
    for i in 0..runs {
        progress("exec round trip", &format!("{i}/{runs}"));
        samples.0.push(exec_once(&mut conn, &body).await?);
    }
    Ok(samples)
}

/// 32 `true` sent at once on 32 kept-alive connections; the wall time of each batch.
async fn parallel32(addr: SocketAddr, code: &str, batches: usize) -> anyhow::Result<Samples> {
    let mut conns = Vec::new();
    for _ in 0..32 {
        conns.push(Conn::open(addr, lo(0, 0, 1)).await?);
    }
    let body = body(code, "true");
    let mut samples = Samples::default();
    for b in 0..=batches {
        progress("32 parallel execs", &format!("{b}/{batches}"));
        let started = Instant::now();
        for r in futures_util::future::join_all(conns.iter_mut().map(|c| exec_once(c, &body))).await {
            r?;
        }
        // The first batch warms the connections up.
        if b > 0 {
            samples.0.push(started.elapsed());
        }
    }
    Ok(samples)
}

/// `callers` callers, each sending `per` commands in turn over its own
/// connection, spread over `codes`: every latency, and commands a second.
async fn concurrent(addr: SocketAddr, codes: &[String], callers: usize, per: usize) -> anyhow::Result<(Samples, f64)> {
    progress("concurrent callers", &format!("{callers} callers × {per}"));
    let mut conns = Vec::new();
    for _ in 0..callers {
        conns.push(Conn::open(addr, lo(0, 0, 1)).await?);
    }
    let started = Instant::now();
    let tasks = conns.into_iter().enumerate().map(|(i, mut conn)| {
        let body = body(&codes[i % codes.len()], "true");
        tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per);
            for _ in 0..per {
                samples.push(exec_once(&mut conn, &body).await?);
            }
            Ok::<_, anyhow::Error>(samples)
        })
    });
    let mut all = Samples::default();
    for r in futures_util::future::join_all(tasks).await {
        all.0.extend(r??);
    }
    let per_sec = all.0.len() as f64 / started.elapsed().as_secs_f64();
    Ok((all, per_sec))
}

/// Streams `cat part` as raw output: bytes of output a second for one
/// stream and for one stream per code at once; then one stream as SSE events.
async fn streaming(addr: SocketAddr, codes: &[&str], part: &Path, plan: &Plan) -> anyhow::Result<(f64, f64, f64)> {
    let command = format!("cat {}", part.display());
    let rate = |(bytes, took): (u64, Duration)| bytes as f64 / took.as_secs_f64();
    let one = stream_reps(addr, codes[0], &command, plan, true).await?;
    let started = Instant::now();
    let all = codes.iter().map(|code| stream_reps(addr, code, &command, plan, true));
    let total: u64 = futures_util::future::try_join_all(all).await?.iter().map(|(bytes, _)| bytes).sum();
    let aggregate = total as f64 / started.elapsed().as_secs_f64();
    let sse = stream_reps(addr, codes[0], &command, plan, false).await?;
    Ok((rate(one), aggregate, rate(sse)))
}

/// The time to the first output event of `echo hi` on SSE.
async fn first_output(addr: SocketAddr, code: &str, plan: &Plan) -> anyhow::Result<Samples> {
    let mut ttfb = Samples::default();
    let mut conn = Conn::open(addr, lo(0, 0, 1)).await?;
    let echo = body(code, "echo hi");
    for i in 0..plan.runs.min(100) {
        progress("time to first byte", &format!("{i}"));
        let started = Instant::now();
        let mut first = None;
        conn.stream(EXEC, &echo, |chunk| {
            if first.is_none() && chunk.windows(13).any(|w| w == b"event: output") {
                first = Some(started.elapsed());
            }
        })
        .await?;
        ttfb.0.push(first.context("no output event")?);
    }
    Ok(ttfb)
}

/// `plan.stream_reps` streamed runs of `command` one after another, raw or
/// as SSE events; output bytes (the payload, not its encoding) and the time taken.
async fn stream_reps(
    addr: SocketAddr,
    code: &str,
    command: &str,
    plan: &Plan,
    raw: bool,
) -> anyhow::Result<(u64, Duration)> {
    let mut conn = Conn::open(addr, lo(0, 0, 1)).await?;
    let body = body(code, command);
    let started = Instant::now();
    for rep in 0..plan.stream_reps {
        let how = if raw { "raw" } else { "SSE" };
        progress("streaming", &format!("{code} ({how}): run {}/{}", rep + 1, plan.stream_reps));
        let done = if raw { raw_run(&mut conn, &body, plan).await? } else { sse_run(&mut conn, &body).await? };
        if let Err(tail) = done {
            bail!("streaming {command} ({how}) failed: {tail}");
        }
    }
    Ok((plan.stream_bytes * plan.stream_reps as u64, started.elapsed()))
}

/// One raw run: whether every byte came and the command exited 0 (else what came instead).
async fn raw_run(conn: &mut Conn, body: &str, plan: &Plan) -> anyhow::Result<Result<(), String>> {
    let mut bytes = 0u64;
    let status = conn.raw(EXEC, body, |chunk| bytes += chunk.len() as u64).await?;
    let ok = status == 200 && bytes == plan.stream_bytes && conn.trailers.contains("aic-exit-code: 0");
    Ok(if ok { Ok(()) } else { Err(format!("{status}, {bytes} bytes, trailers {:?}", conn.trailers)) })
}

/// One SSE run: whether the result said exit 0, not truncated (else the stream's tail).
async fn sse_run(conn: &mut Conn, body: &str) -> anyhow::Result<Result<(), String>> {
    // The result event repeats the output after its exit code: look there.
    let (mut exited, mut tail) = (false, Vec::new());
    let status = conn
        .stream(EXEC, body, |chunk| {
            // Each event comes in a chunk of its own; only the result's head is looked at.
            if chunk.starts_with(b"event: result") {
                exited = chunk.windows(12).take(200).any(|w| w == b"\"exitCode\":0");
            }
            let end = &chunk[chunk.len().saturating_sub(200)..];
            tail.extend_from_slice(end);
            tail.drain(..tail.len().saturating_sub(200));
        })
        .await?;
    let tail = String::from_utf8_lossy(&tail).into_owned();
    Ok(if status == 200 && exited && tail.contains("\"truncated\":false") { Ok(()) } else { Err(tail) })
}

/// Simulated agents that answer at once, and 64 callers over them for
/// `plan.alone`: what the relay alone does, commands a second and latency.
async fn relay_alone(addr: SocketAddr, plan: &Plan) -> anyhow::Result<(Samples, f64)> {
    let stop = CancellationToken::new();
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(agents::register(addr, stop.clone()).await?);
    }
    let mut conns = Vec::new();
    for _ in 0..64 {
        conns.push(Conn::open(addr, lo(0, 0, 1)).await?);
    }
    progress("relay alone", &format!("64 callers over 8 simulated agents for {:?}", plan.alone));
    let started = Instant::now();
    let until = started + plan.alone;
    let tasks = conns.into_iter().enumerate().map(|(i, mut conn)| {
        let body = body(&codes[i % codes.len()], "true");
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < until {
                samples.push(exec_once(&mut conn, &body).await?);
            }
            Ok::<_, anyhow::Error>(samples)
        })
    });
    let mut all = Samples::default();
    for r in futures_util::future::join_all(tasks).await {
        all.0.extend(r??);
    }
    let per_sec = all.0.len() as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    Ok((all, per_sec))
}

/// Issue 17's load bullet: good callers' latency on a relay with its rate
/// limits on, alone and while one address sends up to `plan.flood` bad-code
/// requests, as fast as they are answered, until the good callers are done.
/// Each good caller moves to a fresh address before its budget there runs
/// out. The good latencies alone, while flooded, and what the flood got.
async fn flood(plan: &Plan, dir: &Path) -> anyhow::Result<(Samples, Samples, Flooded)> {
    let args = ["--registrations-per-day", "0"];
    let (relay, addr) = procs::relay(&plan.bin, dir.join("relay-flood"), &args).await?;
    let stop = CancellationToken::new();
    let code = agents::register(addr, stop.clone()).await?;
    progress("flood", "good callers alone");
    let quiet = good_callers(addr, &code, 1, plan.good, 1).await?;
    let done = CancellationToken::new();
    let flooding = tokio::spawn(bad_codes(addr, plan.flood, done.clone()));
    progress("flood", &format!("good callers beside up to {} bad-code requests", plan.flood));
    let loud = good_callers(addr, &code, 2, plan.good, plan.flood_rounds).await;
    done.cancel();
    let flooded = flooding.await??;
    let loud = loud?;
    stop.cancel();
    relay.stop().await;
    Ok((quiet, loud, flooded))
}

/// 8 callers, each `per` commands from one address and then from the next
/// (`127.net.caller.k`), `rounds` addresses each.
async fn good_callers(addr: SocketAddr, code: &str, net: u8, per: usize, rounds: usize) -> anyhow::Result<Samples> {
    let tasks = (0..8u8).map(|caller| {
        let body = body(code, "true");
        tokio::spawn(async move {
            let mut samples = Vec::new();
            for k in (1..=250u8).take(rounds) {
                let mut conn = Conn::open(addr, lo(net, caller, k)).await?;
                for _ in 0..per {
                    samples.push(exec_once(&mut conn, &body).await?);
                }
            }
            Ok::<_, anyhow::Error>(samples)
        })
    });
    let mut all = Samples::default();
    for r in futures_util::future::join_all(tasks).await {
        all.0.extend(r??);
    }
    Ok(all)
}

/// What the flooding address got.
#[derive(Default, Clone, Copy)]
struct Flooded {
    /// Requests answered.
    answered: usize,
    /// Of them, answered 429.
    limited: usize,
    /// How long it flooded.
    took: Duration,
}

/// Up to `total` requests for a code that does not exist, from one address
/// over 8 connections (a new one whenever the relay closes one), as fast as
/// answers come, until `done` is cancelled.
async fn bad_codes(addr: SocketAddr, total: usize, done: CancellationToken) -> anyhow::Result<Flooded> {
    let body = body("AIC-0000-0000-0000", "true");
    let started = Instant::now();
    let tasks = (0..8).map(|_| {
        let (body, done) = (body.clone(), done.clone());
        tokio::spawn(async move {
            let mut got = Flooded::default();
            let mut conn = None;
            let sending = async {
                for _ in 0..total / 8 {
                    let open = match conn.as_mut() {
                        Some(open) => open,
                        None => conn.insert(Conn::open(addr, lo(0, 0, 200)).await?),
                    };
                    let resp = open.post(EXEC, &body).await?;
                    anyhow::ensure!(resp.status != 200, "a bad code ran a command");
                    got.answered += 1;
                    got.limited += usize::from(resp.status == 429);
                    if resp.closed {
                        conn = None;
                    }
                }
                Ok::<_, anyhow::Error>(())
            };
            tokio::select! {
                sent = sending => sent?,
                () = done.cancelled() => {}
            }
            Ok::<_, anyhow::Error>(got)
        })
    });
    let mut all = Flooded::default();
    for r in futures_util::future::join_all(tasks).await {
        let got = r??;
        all.answered += got.answered;
        all.limited += got.limited;
    }
    all.took = started.elapsed();
    Ok(all)
}

/// `plan.agents` simulated agents registered anew (64 at a time), then held
/// idle on a fresh relay: its memory per agent, the registration rate, and
/// the latency of commands to one of them while all are connected.
async fn agents_held(plan: &Plan, dir: &Path) -> anyhow::Result<Held> {
    let args = [
        "--rate-limit",
        "0",
        "--registrations-per-day",
        "0",
        "--max-connections",
        "19500",
        "--max-connections-per-ip",
        "19500",
    ];
    let (relay, addr) = procs::relay(&plan.bin, dir.join("relay-held"), &args).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kib = relay.rss_kib();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let codes = register_many(addr, plan.agents, &stop).await?;
    let per_sec = plan.agents as f64 / started.elapsed().as_secs_f64();
    progress("agents held", &format!("{} connected, settling", plan.agents));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kib = relay.rss_kib();
    let mut exec = sequential(addr, &codes[codes.len() / 2], plan.runs.min(300)).await?;
    exec.0.shrink_to_fit();
    stop.cancel();
    relay.stop().await;
    let per_agent_kib = (after_kib.saturating_sub(before_kib)) as f64 / plan.agents as f64;
    Ok(Held { agents: plan.agents, per_agent_kib, before_kib, after_kib, per_sec, exec })
}

/// Registers `n` simulated agents, 64 handshakes in flight at a time; their codes.
async fn register_many(addr: SocketAddr, n: usize, stop: &CancellationToken) -> anyhow::Result<Vec<String>> {
    use futures_util::StreamExt;
    let mut codes = Vec::with_capacity(n);
    let mut registering =
        futures_util::stream::iter(0..n).map(|_| agents::register(addr, stop.clone())).buffer_unordered(64);
    while let Some(code) = registering.next().await {
        codes.push(code?);
        if codes.len() % 500 == 0 {
            progress("agents held", &format!("{}/{n} registered", codes.len()));
        }
    }
    Ok(codes)
}

/// The table: ratios first, then this machine's absolute figures.
fn table(plan: &Plan, f: &Figures) -> Table {
    let mut t = Table::default();
    let secs = |d: Duration| d.as_secs_f64();
    let ssh = f.ssh.as_ref();
    let (exec50, spawn50) = (secs(f.exec.p50()), secs(f.spawn.p50()));
    t.add("`true` round trip p50 vs bare spawn", ms(f.exec.p50()), ms(f.spawn.p50()), ratio(exec50, spawn50), "≤ 1.3x");
    let (piped, what) = (secs(f.spawn_piped.p50()), "`true` p50 vs a spawn the daemon's way (own group, pipes read)");
    t.add(what, ms(f.exec.p50()), ms(f.spawn_piped.p50()), ratio(exec50, piped), "");
    t.add(
        "`true` round trip p99 vs bare spawn",
        ms(f.exec.p99()),
        ms(f.spawn.p99()),
        ratio(secs(f.exec.p99()), secs(f.spawn.p99())),
        "",
    );
    if let Some(s) = ssh {
        t.add(
            "`true` p50: ssh ControlMaster / aic",
            ms(f.exec.p50()),
            ms(s.mux.p50()),
            ratio(secs(s.mux.p50()), exec50),
            "≥ 5x",
        );
        t.add("`true` p50: ssh cold / aic", ms(f.exec.p50()), ms(s.cold.p50()), ratio(secs(s.cold.p50()), exec50), "");
    }
    let (p32, s32) = (secs(f.exec32.p50()), secs(f.spawn32.p50()));
    t.add(
        "32 parallel `true`, wall (median batch) vs 32 spawns",
        ms(f.exec32.p50()),
        ms(f.spawn32.p50()),
        ratio(p32, s32),
        "< 1.2x",
    );
    if let Some(s) = ssh {
        let m = secs(s.parallel32.p50());
        t.add(
            "32 parallel `true`: ssh ControlMaster / aic",
            ms(f.exec32.p50()),
            ms(s.parallel32.p50()),
            ratio(m, p32),
            "",
        );
    }
    held_rows(&mut t, f);
    stream_rows(&mut t, f, ssh);
    for (callers, samples, per_sec) in &f.callers {
        let what = format!("{callers} concurrent callers, `true`: exec/s; p50 / p99");
        t.add(
            &what,
            format!("{per_sec:.0}/s; {} / {}", ms(samples.p50()), ms(samples.p99())),
            "".into(),
            "".into(),
            "",
        );
    }
    let (alone, per_sec) = &f.alone;
    let what = "relay alone (simulated agents, 64 callers): exec/s; p50 / p99";
    t.add(
        what,
        format!("{per_sec:.0}/s; {} / {}", ms(alone.p50()), ms(alone.p99())),
        "".into(),
        "".into(),
        "≥ 30 000/s, p99 < 10 ms",
    );
    idle_rows(&mut t, plan, f);
    t
}

fn held_rows(t: &mut Table, f: &Figures) {
    let h = &f.held;
    let what = format!("relay memory per idle agent ({} agents)", h.agents);
    let detail = format!("{:.1} KiB ({} → {} KiB)", h.per_agent_kib, h.before_kib, h.after_kib);
    t.add(&what, detail, "".into(), "".into(), "≤ 10 KiB");
    let what = format!("exec to one agent while {} are connected: p50 / p99", h.agents);
    t.add(&what, format!("{} / {}", ms(h.exec.p50()), ms(h.exec.p99())), "".into(), "".into(), "p99 < 10 ms");
    t.add("registrations (new agents) a second", format!("{:.0}/s", h.per_sec), "".into(), "".into(), "");
}

fn stream_rows(t: &mut Table, f: &Figures, ssh: Option<&ssh::SshFigures>) {
    let mb = |bps: f64| format!("{:.0} MB/s", bps / 1e6);
    let (against, r) = match ssh {
        Some(s) => {
            let bps = s.transfer.0 as f64 / s.transfer.1.as_secs_f64();
            (format!("ssh `cat`: {}", mb(bps)), ratio(f.stream1, bps))
        }
        None => (String::new(), String::new()),
    };
    t.add("output streaming, one stream (raw)", mb(f.stream1), against, r, "");
    t.add("output streaming, 2 streams on 2 daemons, aggregate (raw)", mb(f.stream2), "".into(), "".into(), "≥ 1 GB/s");
    t.add("output streaming, one stream (SSE events)", mb(f.stream_sse), "".into(), "".into(), "");
    let ttfb = format!("{} / {}", ms(f.ttfb.p50()), ms(f.ttfb.p99()));
    t.add("time to first output event (SSE, `echo hi`): p50 / p99", ttfb, "".into(), "".into(), "");
    let (quiet, loud, flooded) = &f.flood;
    let what = "good callers' p99 beside one address flooding bad-code requests";
    let detail = format!(
        "{} (the flood got {} answers in {:.1} s, {} of them 429)",
        ms(loud.p99()),
        flooded.answered,
        flooded.took.as_secs_f64(),
        flooded.limited
    );
    t.add(what, detail, format!("alone: {}", ms(quiet.p99())), ratio(secs(loud.p99()), secs(quiet.p99())), "≤ 2x");
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn idle_rows(t: &mut Table, plan: &Plan, f: &Figures) {
    t.add("relay RSS, no agents", format!("{} KiB", f.relay_empty_kib), "".into(), "".into(), "");
    t.add("daemon RSS, idle and connected", format!("{} KiB", f.daemon_kib), "".into(), "".into(), "< 10 MiB");
    let (used, over) = f.daemon_cpu;
    let share = format!("{} ms in {:?} ({:.2}%)", used.as_millis(), over, 100.0 * secs(used) / secs(over));
    t.add("daemon CPU, idle and connected", share, "".into(), "".into(), "none measurable");
    if plan.quick {
        t.add("(--quick: a smoke run; the figures mean nothing)", "".into(), "".into(), "".into(), "");
    }
}

//! `aic-console` subcommands: the console's operations as a scriptable
//! command line. Human-readable output by default, JSON with `--json`.

use std::io::Write;
use std::path::Path;

use uuid::Uuid;

use super::app::short;
use super::client::{Client, ClientError};
use super::sanitize;
use crate::protocol::control::{
    AccountChanged, Approval, CodeInfo, CommandState, Event, LinkState, LinkedAccount, Mode, ModeInfo, Op, Reply,
    StatusInfo, TrafficEntry,
};
use crate::protocol::jobs::JobInfo;

/// One subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The daemon at a glance.
    Status,
    /// Show the code.
    Code,
    /// Replace the code (asks first unless `yes`).
    CodeReset {
        /// Skip the question.
        yes: bool,
    },
    /// List linked accounts.
    Admins,
    /// Block account N (list number or id).
    AdminBlock(String),
    /// Unblock account N.
    AdminUnblock(String),
    /// Approve pending account N.
    AdminApprove(String),
    /// List commands waiting for approval.
    Approvals,
    /// Approve a waiting command (id or unique prefix).
    Approve(String),
    /// Deny a waiting command.
    Deny(String),
    /// Show or set the mode.
    Mode(Option<Mode>),
    /// Show the traffic ring; with `follow`, then one line per event until interrupted.
    Traffic {
        /// Keep printing events.
        follow: bool,
    },
    /// List the machine's jobs.
    Jobs,
    /// Cancel a job (id or unique prefix).
    JobCancel(String),
}

/// What `code` says before the relay has given one.
const NO_CODE: &str = "(no code yet: the daemon has not reached the relay)";

/// Runs `command` against the daemon at `socket`, writing to `out`.
/// `confirm` asks the operator a yes/no question.
pub async fn run(
    socket: &Path,
    command: Command,
    json: bool,
    out: &mut dyn Write,
    confirm: &mut dyn FnMut(&str) -> bool,
) -> Result<(), ClientError> {
    let mut client = Client::connect(socket).await?;
    let (reply, human) = match command {
        Command::Traffic { follow } => return traffic(&mut client, follow, json, out).await,
        Command::CodeReset { yes } => {
            let question = "Reset the session code? The current code stops working at once, and every linked account and block is cleared.";
            if !yes && !confirm(question) {
                return Err(ClientError::Daemon("the code was not reset".into()));
            }
            let code: CodeInfo = client.ask_for(Op::CodeReset).await?;
            let text = format!(
                "New session code: {}\nThe old code no longer works.",
                code.code.as_deref().unwrap_or_default()
            );
            (Reply::Code(code), text)
        }
        Command::AdminBlock(n) => account_op(&mut client, &n, |account| Op::AdminBlock { account }).await?,
        Command::AdminUnblock(n) => account_op(&mut client, &n, |account| Op::AdminUnblock { account }).await?,
        Command::AdminApprove(n) => account_op(&mut client, &n, |account| Op::AdminApprove { account }).await?,
        Command::Approve(id) => {
            let command = resolve_approval(&mut client, &id).await?;
            (client.ask(Op::Approve { command }).await?, format!("Approved {command}; it runs now."))
        }
        Command::Deny(id) => {
            let command = resolve_approval(&mut client, &id).await?;
            (client.ask(Op::Deny { command }).await?, format!("Denied {command}; its caller is told so."))
        }
        Command::Mode(None) => {
            let status: StatusInfo = client.ask_for(Op::Status).await?;
            (Reply::Mode(ModeInfo { mode: status.mode }), status.mode.to_string())
        }
        Command::Mode(Some(mode)) => (client.ask(Op::SetMode { mode }).await?, format!("Mode is now {mode}.")),
        Command::Status => read(&mut client, Op::Status, status_text).await?,
        Command::Code => {
            let words = |c: &CodeInfo| c.code.clone().unwrap_or_else(|| NO_CODE.into());
            read(&mut client, Op::Code, words).await?
        }
        Command::Admins => read(&mut client, Op::Admins, |a: &Vec<LinkedAccount>| accounts_text(a)).await?,
        Command::Approvals => {
            let words = |a: &Vec<Approval>| approvals_text(a, crate::clock::now_ms());
            read(&mut client, Op::Approvals, words).await?
        }
        Command::Jobs => read(&mut client, Op::Jobs, |j: &Vec<JobInfo>| jobs_text(j)).await?,
        Command::JobCancel(id) => {
            let job = resolve_job(&mut client, &id).await?;
            let info: JobInfo = client.ask_for(Op::JobCancel { job }).await?;
            let text = format!("Cancelled job {job}: its processes get SIGTERM, then SIGKILL after 2 s.");
            (Reply::Job(info), text)
        }
    };
    let text = if json { reply_json(&reply) } else { human };
    let _ = writeln!(out, "{text}");
    Ok(())
}

/// Asks `op`; its reply, and its content in words.
async fn read<T>(client: &mut Client, op: Op, words: impl FnOnce(&T) -> String) -> Result<(Reply, String), ClientError>
where
    T: TryFrom<Reply, Error = Reply> + Into<Reply>,
{
    let content: T = client.ask_for(op).await?;
    let text = words(&content);
    Ok((content.into(), text))
}

/// A reply as `--json` prints it: one line, keys sorted, nothing raw.
fn reply_json(reply: &Reply) -> String {
    sanitize::json(serde_json::to_value(reply).unwrap_or_default().to_string())
}

/// `traffic`: the ring, then (with `follow`) one line per event until interrupted.
async fn traffic(client: &mut Client, follow: bool, json: bool, out: &mut dyn Write) -> Result<(), ClientError> {
    if follow {
        client.ask(Op::Subscribe).await?;
    }
    let entries: Vec<TrafficEntry> = client.ask_for(Op::Traffic).await?;
    if json {
        for entry in &entries {
            let _ = writeln!(out, "{}", sanitize::json(serde_json::to_string(entry).unwrap_or_default()));
        }
    } else {
        if entries.is_empty() && !follow {
            let _ = writeln!(out, "No commands yet.");
        }
        for entry in &entries {
            let _ = writeln!(out, "{}", traffic_line(entry));
        }
        if follow {
            let _ = writeln!(out, "-- following; Ctrl-C to stop --");
            let _ = out.flush();
        }
    }
    if !follow {
        return Ok(());
    }
    loop {
        let event = client.next_event().await?;
        let text = if json {
            Some(sanitize::json(serde_json::to_string(&event).unwrap_or_default()))
        } else {
            event_line(&event)
        };
        if let Some(text) = text {
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    }
}

/// Finds the one waiting command whose id starts with `prefix`.
async fn resolve_approval(client: &mut Client, prefix: &str) -> Result<Uuid, ClientError> {
    if let Ok(id) = prefix.parse::<Uuid>() {
        return Ok(id);
    }
    let approvals: Vec<Approval> = client.ask_for(Op::Approvals).await?;
    pick_by_prefix(
        approvals.iter().map(|a| a.id),
        prefix,
        "command waiting for approval",
        "waiting commands",
        "approvals",
    )
}

/// The job whose id is or starts with `prefix`.
async fn resolve_job(client: &mut Client, prefix: &str) -> Result<Uuid, ClientError> {
    if let Ok(id) = prefix.parse::<Uuid>() {
        return Ok(id);
    }
    let jobs: Vec<JobInfo> = client.ask_for(Op::Jobs).await?;
    pick_by_prefix(jobs.iter().map(|j| j.id), prefix, "job", "jobs", "jobs")
}

/// The one id among `ids` that starts with `prefix` (any case); refuses none or several, naming the
/// `aic-console` subcommand that lists them. `one` and `many` name the things in the refusal.
fn pick_by_prefix(
    ids: impl Iterator<Item = Uuid>,
    prefix: &str,
    one: &str,
    many: &str,
    list: &str,
) -> Result<Uuid, ClientError> {
    let wanted = prefix.to_ascii_lowercase();
    let matches: Vec<Uuid> = ids.filter(|id| id.to_string().starts_with(&wanted)).collect();
    match matches.as_slice() {
        [id] => Ok(*id),
        [] => Err(ClientError::Daemon(format!(
            "no {one} has an id starting with {prefix:?}; list them with `aic-console {list}`"
        ))),
        _ => Err(ClientError::Daemon(format!("{prefix:?} matches several {many}; give more of the id"))),
    }
}

/// Jobs, one per line: id, state, exit, runtime, output size, who, command.
pub fn jobs_text(jobs: &[JobInfo]) -> String {
    if jobs.is_empty() {
        return "No jobs on this machine.".into();
    }
    let mut text = String::new();
    for j in jobs {
        let state = serde_json::to_value(j.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let exit = j.exit_code.map_or_else(|| "-".into(), |c| c.to_string());
        text.push_str(&format!(
            "{}  {state:<9} exit {exit:<4} {:>8}  {:>9} B  {}  {}\n",
            short(j.id),
            duration(j.duration_ms),
            j.output_bytes,
            sanitize::line(&j.who),
            sanitize::line(&j.command),
        ));
    }
    text.push_str("Cancel one with `aic-console jobs cancel ID`.");
    text
}

/// Finds account `n` (its number in `aic-console admins`, or its id) and applies `op`.
async fn account_op(client: &mut Client, n: &str, op: fn(String) -> Op) -> Result<(Reply, String), ClientError> {
    let accounts: Vec<LinkedAccount> = client.ask_for(Op::Admins).await?;
    let listed = ordered(&accounts);
    let account = match n.parse::<usize>() {
        Ok(i) if (1..=listed.len()).contains(&i) => listed[i - 1],
        _ => accounts.iter().find(|a| a.id == n).ok_or_else(|| {
            ClientError::Daemon(format!(
                "no linked account {n}: give its number or id from `aic-console admins` ({} linked)",
                accounts.len()
            ))
        })?,
    };
    let changed: AccountChanged = client.ask_for(op(account.id.clone())).await?;
    let (email, alias) = (sanitize::line(&account.shown_email()), sanitize::line(&account.alias));
    let text = format!("{email} ({alias}) is now {}.", changed.state);
    Ok((Reply::Account(changed), text))
}

/// Accounts in the order they are listed and numbered: active and pending, then blocked.
fn ordered(accounts: &[LinkedAccount]) -> Vec<&LinkedAccount> {
    let mut list: Vec<_> = accounts.iter().filter(|a| a.state != LinkState::Blocked).collect();
    list.extend(accounts.iter().filter(|a| a.state == LinkState::Blocked));
    list
}

/// The status as a few labelled lines.
pub fn status_text(s: &StatusInfo) -> String {
    let relay = &s.relay;
    let link = if relay.connected {
        let rtt = relay.rtt_ms.last().map(|r| format!(", round trip {r} ms")).unwrap_or_default();
        format!("connected to {}{rtt}, {} reconnects", relay.url, relay.reconnects)
    } else {
        let why = relay.last_error.as_deref().map(|e| format!(" ({})", sanitize::line(e))).unwrap_or_default();
        format!("NOT connected to {}{why}", relay.url)
    };
    format!(
        "Session:  {}\nMode:     {}\nRelay:    {link}\nQueue:    {} waiting for approval, {} running\nUptime:   {}\nVersion:  {}",
        s.code.as_deref().unwrap_or("(none yet)"),
        match s.mode {
            Mode::Auto => "auto (commands run without the operator's approval)".to_string(),
            mode => mode.to_string(),
        },
        s.pending,
        s.running,
        duration(s.uptime_s * 1000),
        s.version
    )
}

/// Waiting commands, each with everything the operator needs to decide.
pub fn approvals_text(list: &[Approval], now_ms: u64) -> String {
    if list.is_empty() {
        return "No commands are waiting for approval.".into();
    }
    let mut text = String::new();
    for a in list {
        let cwd = a.cwd.as_deref().map(sanitize::line).unwrap_or_else(|| "(daemon's directory)".into());
        text.push_str(&format!(
            "{}  from {} ({}){}, {} ago, expires in {}\n  cwd:     {cwd}\n  command: {}\n",
            short(a.id),
            sanitize::line(&a.who),
            a.ip,
            came_with(&a.code),
            duration(now_ms.saturating_sub(a.at_ms)),
            duration(a.expires_at_ms.saturating_sub(now_ms)),
            sanitize::line(&a.command),
        ));
    }
    text.push_str("Answer with `aic-console approve ID` or `aic-console deny ID`.");
    text
}

/// `, with code AIC-****-****-RTBN` when the daemon said which code a command came with.
fn came_with(code: &str) -> String {
    match code {
        "" => String::new(),
        code => format!(", with code {}", sanitize::line(code)),
    }
}

/// Linked accounts, numbered; blocked ones in their own section.
pub fn accounts_text(accounts: &[LinkedAccount]) -> String {
    if accounts.is_empty() {
        return "No accounts are linked to this machine.".into();
    }
    let mut text = String::new();
    let mut blocked_header = false;
    for (i, a) in ordered(accounts).into_iter().enumerate() {
        if a.state == LinkState::Blocked && !blocked_header {
            text.push_str("Blocked:\n");
            blocked_header = true;
        }
        text.push_str(&format!(
            "{:>3}. {}  alias {}  {}\n",
            i + 1,
            sanitize::line(&a.shown_email()),
            sanitize::line(&a.alias),
            a.state
        ));
    }
    text.pop();
    text
}

/// One traffic entry as a line.
pub fn traffic_line(e: &TrafficEntry) -> String {
    let state = match (e.state, e.exit_code) {
        (CommandState::Exited, Some(code)) => format!("exit {code}"),
        (state, _) => serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
    };
    let duration = e.duration_ms.map(|d| format!(" {}", duration(d))).unwrap_or_default();
    format!(
        "{} {} {} [{state}{duration}, {} B{}] {}",
        clock(e.at_ms),
        short(e.id),
        sanitize::line(&e.who),
        e.bytes,
        if e.truncated { ", truncated" } else { "" },
        sanitize::line(&e.command)
    )
}

/// One event as a line, or nothing for events not worth a line.
pub fn event_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::Traffic(entry) => traffic_line(entry),
        Event::Output { .. } | Event::Accounts => return None,
        Event::ApprovalQueued(a) => {
            format!("{} {} waiting for approval: {}", clock(a.at_ms), short(a.id), sanitize::line(&a.command))
        }
        Event::ApprovalDecided { command, decision } => {
            format!("{} {}", short(*command), serde_json::to_value(decision).ok()?.as_str()?)
        }
        Event::Relay(h) if h.connected => format!("relay connected ({})", h.url),
        Event::Relay(h) => {
            format!("relay NOT connected ({})", h.last_error.as_deref().map(sanitize::line).unwrap_or_default())
        }
        Event::CodeChanged(c) => format!("session code is now {}", c.code.as_deref().unwrap_or("(none)")),
        Event::ModeChanged { mode } => format!("mode is now {mode}"),
        Event::Lagged { missed } => format!("(missed {missed} events: this console read too slowly)"),
    })
}

/// `HH:MM:SS` (UTC) of a Unix time in ms.
pub fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// A short human duration: `850ms`, `12s`, `3m 20s`, `2h 5m`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}s", ms / 1000),
        60_000..3_600_000 => format!("{}m {}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h {}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_000), "12s");
        assert_eq!(duration(200_000), "3m 20s");
        assert_eq!(duration(7_500_000), "2h 5m");
        assert_eq!(clock(3_723_000), "01:02:03");
    }

    #[test]
    fn approvals_show_everything_and_nothing_raw() {
        let a = Approval {
            id: Uuid::nil(),
            at_ms: 1_000,
            who: "anonymous".into(),
            ip: "127.0.0.1".into(),
            command: "rm -rf /tmp/x\x1b[2J".into(),
            cwd: Some("/srv".into()),
            timeout_ms: 1000,
            expires_at_ms: 601_000,
            code: String::new(),
        };
        let text = approvals_text(&[a], 31_000);
        assert!(text.contains("00000000  from anonymous (127.0.0.1), 30s ago, expires in 9m 30s"), "{text}");
        assert!(text.contains("cwd:     /srv") && text.contains("command: rm -rf /tmp/x^[[2J"), "{text}");
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn blocked_accounts_are_listed_last_under_their_own_header() {
        let acct = |id: &str, state: LinkState| LinkedAccount {
            id: id.into(),
            email: format!("{id}****@ex****.com"),
            alias: "web".into(),
            state,
            linked_at_ms: 0,
            last_used_ms: None,
            fingerprint: String::new(),
        };
        let text = accounts_text(&[
            acct("b", LinkState::Blocked),
            acct("a", LinkState::Active),
            acct("p", LinkState::Pending),
        ]);
        assert_eq!(
            text,
            "  1. a****@ex****.com  alias web  active\n  2. p****@ex****.com  alias web  pending\nBlocked:\n  3. b****@ex****.com  alias web  blocked"
        );
    }

    #[test]
    fn an_id_prefix_picks_one_or_says_why_not() {
        let a: Uuid = "0a1b2c3d-0000-4000-8000-000000000001".parse().unwrap();
        let b: Uuid = "0a1bffff-0000-4000-8000-000000000002".parse().unwrap();
        let pick = |prefix: &str| pick_by_prefix([a, b].into_iter(), prefix, "job", "jobs", "jobs");
        assert_eq!(pick("0A1B2C").unwrap(), a);
        let several = pick("0a1b").unwrap_err().to_string();
        assert!(several.contains("\"0a1b\" matches several jobs; give more of the id"), "{several}");
        let none = pick("ff").unwrap_err().to_string();
        assert!(none.contains("no job has an id starting with \"ff\"; list them with `aic-console jobs`"), "{none}");
    }
}

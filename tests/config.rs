//! Config files, run through the real binaries: flags beat `AIC_*`
//! variables, which beat the file, which beats the default; bad files are
//! refused with the file, the key and what was expected; the shipped examples
//! parse. Account, key and login-link commands pointed at no relay's data
//! refuse instead of making a new database or secret.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs a binary with `args` and `envs` and nothing else from the caller's `AIC_*` settings.
fn run(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("AIC_")) {
        command.env_remove(key);
    }
    command.args(args).envs(envs.iter().copied()).output().expect("run the binary")
}

fn relay(args: &[&str], envs: &[(&str, &str)]) -> Output {
    run(env!("CARGO_BIN_EXE_aic-relay"), args, envs)
}

fn daemon(args: &[&str], envs: &[(&str, &str)]) -> Output {
    run(env!("CARGO_BIN_EXE_aic-daemon"), args, envs)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `text` as `name` in `dir` and returns its path as a string.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The listen address `connect-lines` reports (it names http://LISTEN when no public URL is set).
fn listen_seen(out: &Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let at = text.find("http://").expect("a URL") + "http://".len();
    text[at..].split(['/', ' ']).next().unwrap().to_string()
}

#[test]
fn relay_flag_beats_env_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.toml", "");
    let file = write(dir.path(), "relay.toml", "listen = \"127.0.0.1:9001\"\n");
    let env = [("AIC_RELAY_LISTEN", "127.0.0.1:9002")];
    assert_eq!(listen_seen(&relay(&["--config", &empty, "connect-lines"], &[])), "127.0.0.1:8080");
    assert_eq!(listen_seen(&relay(&["--config", &file, "connect-lines"], &[])), "127.0.0.1:9001");
    assert_eq!(listen_seen(&relay(&["connect-lines", "--config", &file], &env)), "127.0.0.1:9002");
    let flag = ["--config", &file, "--listen", "127.0.0.1:9003", "connect-lines"];
    assert_eq!(listen_seen(&relay(&flag, &env)), "127.0.0.1:9003");
    // The file can also come from the environment.
    let via_env = [("AIC_RELAY_CONFIG", file.as_str())];
    assert_eq!(listen_seen(&relay(&["connect-lines"], &via_env)), "127.0.0.1:9001");
}

#[test]
fn relay_refuses_unknown_keys_and_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let typo = write(dir.path(), "typo.toml", "listen = \"127.0.0.1:9001\"\nrate_limt = 5\n");
    let out = relay(&["--config", &typo, "connect-lines"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "aic-relay: config file {typo}: unknown key `rate_limt`; expected one of listen, public_url, \
             data_dir, database_url, nats_url, anonymous_window, max_output, rate_limit, trusted_proxy, metrics_listen, tls_cert, tls_key, \
             max_connections, max_connections_per_ip, header_timeout, registrations_per_day, mcp_output_max, \
             mcp_sessions_per_client, max_file, mcp_inline_max, file_link_ttl, max_in_flight, smtp_url, mail_from"
        )
    );
    let bad = write(dir.path(), "bad.toml", "rate_limit = \"many\"\n");
    // Checked even when a flag overrides the key.
    let out = relay(&["--config", &bad, "--rate-limit", "5", "connect-lines"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "aic-relay: config file {bad}, key `rate_limit`: expected requests a minute as a whole number \
             (0 turns limits off), got \"many\""
        )
    );
    let syntax = write(dir.path(), "syntax.toml", "listen = \"127.0.0.1:9001\"\nrate_limit = \n");
    let out = relay(&["--config", &syntax, "connect-lines"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(&format!("aic-relay: config file {syntax}, line 2: not valid TOML")),
        "{}",
        stderr(&out)
    );
    let missing = dir.path().join("missing.toml");
    let out = relay(&["--config", missing.to_str().unwrap(), "connect-lines"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("reading the config file {}", missing.display())), "{}", stderr(&out));
}

/// The host `aic-daemon run` refuses to send its token to in plain text: it names the relay it chose.
#[test]
fn relay_takes_its_mail_settings_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "relay.toml", "smtp_url = \"smtp://127.0.0.1:1\"\n");
    let data = dir.path().join("data");
    let out = relay(&["--config", &file, "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--smtp-url needs --mail-from"), "{}", stderr(&out));
}

fn relay_chosen(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = daemon(args, envs);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    let at = text.find("unencrypted to ").unwrap_or_else(|| panic!("not refused for plain ws://: {text}"));
    text[at + "unencrypted to ".len()..].split(':').next().unwrap().to_string()
}

#[test]
fn daemon_flag_beats_env_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = write(dir.path(), "daemon.toml", "relay = \"ws://file.example\"\n");
    let base = ["run", "--config", &file, "--state-dir", state.to_str().unwrap()];
    let env = [("AIC_RELAY_URL", "ws://env.example")];
    assert_eq!(relay_chosen(&base, &[]), "file.example");
    assert_eq!(relay_chosen(&base, &env), "env.example");
    assert_eq!(relay_chosen(&[&base[..], &["--relay", "ws://flag.example"]].concat(), &env), "flag.example");
    let empty = write(dir.path(), "empty.toml", "");
    let out = daemon(&["run", "--config", &empty], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no relay given: pass --relay"), "{}", stderr(&out));
}

#[test]
fn daemon_refuses_unknown_keys_and_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("mode = \"yolo\"\n", "key `mode`: expected one of \"supervised\", \"auto\", \"disabled\", got \"yolo\""),
        ("approval_timeout = 90\n", "key `approval_timeout`: expected a duration such as \"90s\" or \"10m\", got 90"),
        ("max_concurrent = -2\n", "key `max_concurrent`: expected a whole number of commands, at least 1, got -2"),
        ("relay = \"ws://127.0.0.1:1\"\nrelais = \"x\"\n", ": unknown key `relais`; expected one of relay, "),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("{i}.toml"), text);
        let out = daemon(&["run", "--config", &file, "--relay", "ws://127.0.0.1:1"], &[]);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = stderr(&out);
        assert!(err.starts_with(&format!("aic-daemon: config file {file}")) && err.contains(expected), "{err}");
    }
}

/// A config file another user could change (here: anyone) is refused, as
/// sshd refuses one: the daemon, often root, would obey its relay and mode.
#[test]
fn daemon_refuses_a_config_file_others_can_change() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A plain ws:// relay far away: without the check the daemon would refuse it, not the file, and exit.
    let file = write(dir.path(), "daemon.toml", "relay = \"ws://far.example\"\nmode = \"auto\"\n");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = daemon(&["run", "--config", &file, "--state-dir", dir.path().join("state").to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("can be written by other users (mode 0666)") && err.contains("chmod go-w"), "{err}");

    // So is a CA file: it decides which relay the daemon trusts.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ca = write(dir.path(), "ca.pem", "");
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o666)).unwrap();
    let state = dir.path().join("state");
    let out = daemon(&["run", "--config", &file, "--ca-cert", &ca, "--state-dir", state.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("CA file") && err.contains("(mode 0666)"), "{err}");
}

/// The example in packaging/config, and the same with every commented-out `# key = value` line switched on.
fn example(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/config").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let all_on = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    (path, all_on)
}

#[test]
fn shipped_example_files_parse() {
    let dir = tempfile::tempdir().unwrap();
    let (path, all_on) = example("relay.toml");
    let all_on = write(dir.path(), "relay.toml", &all_on);
    for file in [path.to_str().unwrap(), &all_on] {
        let out = relay(&["--config", file, "connect-lines"], &[]);
        assert!(out.status.success(), "{file}: {}", stderr(&out));
    }
    let out = relay(&["--config", &all_on, "connect-lines"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("https://relay.example.com/mcp"));

    let (path, all_on) = example("daemon.toml");
    let all_on = write(dir.path(), "daemon.toml", &all_on);
    for file in [path.to_str().unwrap(), &all_on] {
        // A plain ws:// relay far away is refused after the file is read: no config error came first.
        let out = daemon(&["run", "--config", file, "--relay", "ws://far.example"], &[]);
        assert!(stderr(&out).contains("unencrypted to far.example"), "{file}: {}", stderr(&out));
    }
}

/// `account add` on a data dir no relay made, or on PostgreSQL without the relays' secret, would hand
/// out a key no relay accepts: it refuses, saying what to give, and leaves nothing behind.
#[test]
fn admin_commands_refuse_data_no_relay_made() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    let out = relay(&["--data-dir", empty.to_str().unwrap(), "account", "add", "ops@example.com"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let expected =
        format!("aic-relay: no relay database in {}: give the relay's data dir with --data-dir", empty.display());
    assert!(stderr(&out).starts_with(&expected), "{}", stderr(&out));
    assert!(!empty.exists(), "made {}", empty.display());
    // With a database URL the secret must come from somewhere: refused before connecting.
    let pg = ["--data-dir", empty.to_str().unwrap(), "--database-url", "postgres://aic@127.0.0.1:1/aic"];
    let out = relay(&[&pg[..], &["key", "list", "ops@example.com"]].concat(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("aic-relay: no server secret:"), "{}", stderr(&out));
    assert!(stderr(&out).contains("AIC_RELAY_SECRET"), "{}", stderr(&out));
    assert!(!empty.exists(), "made {}", empty.display());
}

/// `login-link` without a public URL says which address its link names, and how to name another.
#[test]
fn login_link_says_when_it_names_the_default_url() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // What a relay leaves in its data dir: the secret, and the database (an empty file is an empty one).
    for (name, text) in [("secret.key", "ab".repeat(32)), ("relay.db", String::new())] {
        let path = write(dir.path(), name, &text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = dir.path().to_str().unwrap();
    let out = relay(&["--data-dir", data, "login-link", "ops@example.com"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("http://127.0.0.1:8080/login/link?t="));
    let note = stderr(&out);
    assert!(note.contains("the link names http://127.0.0.1:8080") && note.contains("--public-url"), "{note}");
    let named = ["--data-dir", data, "--public-url", "https://relay.example.com", "login-link", "ops@example.com"];
    let out = relay(&named, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("https://relay.example.com/login/link?t="));
    assert_eq!(stderr(&out), "");
}

//! README.md and the shipped config examples against the binaries' own `--help`: every flag of
//! `aic-relay` and `aic-daemon run` has one row in its README table naming its variable, every
//! setting a flag takes is also a config file key, and the example config files show every key.
//! A flag added without its documentation fails here. Each binary's `-h` says what that binary is.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

/// Flags that are not settings: they have no config file key.
const NOT_SETTINGS: &[&str] = &["help", "version", "config", "json", "secret", "log-dir", "log-keep", "log-level"];

/// Runs a binary with `args` and nothing from the caller's `AIC_*` settings.
fn run(bin: &str, args: &[&str]) -> Output {
    let mut command = Command::new(bin);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("AIC_")) {
        command.env_remove(key);
    }
    command.args(args).output().expect("run the binary")
}

/// A flag of `--help`: its long name and the variable it reads, if any.
#[derive(Debug)]
struct Flag {
    /// The long name, without `--`.
    name: String,
    /// The `[env: NAME=]` clap shows, if any.
    env: Option<String>,
}

/// The flags `args` (ending in `--help`) lists, each with the variable its description names.
fn help_flags(bin: &str, args: &[&str]) -> Vec<Flag> {
    let out = run(bin, args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let options = text.split("\nOptions:\n").nth(1).expect("an Options: section");
    let mut flags: Vec<Flag> = Vec::new();
    for line in options.lines() {
        let trimmed = line.trim_start();
        let trimmed = trimmed.strip_prefix("-h, ").or_else(|| trimmed.strip_prefix("-V, ")).unwrap_or(trimmed);
        let indent = line.len() - line.trim_start().len();
        if let Some(rest) = trimmed.strip_prefix("--")
            && indent <= 6
        {
            let name = rest.split([' ', '\t']).next().unwrap().to_string();
            flags.push(Flag { name, env: None });
        }
        if let (Some(at), Some(flag)) = (line.find("[env: "), flags.last_mut()) {
            let env = &line[at + "[env: ".len()..];
            flag.env = Some(env.split(['=', ']']).next().unwrap().to_string());
        }
    }
    assert!(flags.len() > 5, "no flags found in:\n{text}");
    flags
}

/// The README's text from `start` up to the next heading of level `until`.
fn readme_section(start: &str, until: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let from = text.find(&format!("\n{start}\n")).unwrap_or_else(|| panic!("README has no {start}"));
    let rest = &text[from + start.len() + 2..];
    let to = rest.find(&format!("\n{until} ")).unwrap_or(rest.len());
    rest[..to].to_string()
}

/// Checks that each flag has exactly one row in `section`'s tables, naming its variable.
fn check_table(what: &str, flags: &[Flag], section: &str) {
    let mut problems = Vec::new();
    for flag in flags.iter().filter(|f| f.name != "help" && f.name != "version") {
        let rows: Vec<&str> = section
            .lines()
            .filter(|l| {
                l.starts_with(&format!("| `--{} ", flag.name)) || l.starts_with(&format!("| `--{}`", flag.name))
            })
            .collect();
        match (rows.as_slice(), &flag.env) {
            ([], _) => problems.push(format!("--{} has no row", flag.name)),
            ([row], Some(env)) if !row.contains(&format!("`{env}`")) => {
                problems.push(format!("--{}'s row does not name {env}", flag.name))
            }
            ([_], _) => {}
            (many, _) => problems.push(format!("--{} has {} rows", flag.name, many.len())),
        }
    }
    assert!(problems.is_empty(), "README's {what} table disagrees with --help: {}", problems.join("; "));
}

#[test]
fn readme_tables_have_every_flag_of_help() {
    let relay = help_flags(env!("CARGO_BIN_EXE_aic-relay"), &["--help"]);
    check_table("aic-relay", &relay, &readme_section("### aic-relay", "###"));
    let daemon = help_flags(env!("CARGO_BIN_EXE_aic-daemon"), &["run", "--help"]);
    check_table("aic-daemon run", &daemon, &readme_section("### aic-daemon", "##"));
}

/// The keys a config file may hold, from the error an unknown key gets.
fn file_keys(bin: &str, args: &[&str], dir: &Path) -> BTreeSet<String> {
    let file = dir.join("unknown.toml");
    std::fs::write(&file, "zz_no_such_key = 1\n").unwrap();
    let out = run(bin, &[args, &["--config", file.to_str().unwrap()]].concat());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let list = err.split("expected one of ").nth(1).unwrap_or_else(|| panic!("no key list in: {err}"));
    list.trim().split(", ").map(str::to_string).collect()
}

/// The settings `--help` lists, as config keys.
fn settings(flags: &[Flag]) -> BTreeSet<String> {
    flags.iter().filter(|f| !NOT_SETTINGS.contains(&f.name.as_str())).map(|f| f.name.replace('-', "_")).collect()
}

/// Checks that the shipped example `name` shows each of `keys`, set or commented out.
fn check_example(name: &str, keys: &BTreeSet<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/config").join(name);
    let text = std::fs::read_to_string(path).unwrap();
    let shown: BTreeSet<String> = text
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_string()))
        .collect();
    let missing: Vec<_> = keys.difference(&shown).collect();
    assert!(missing.is_empty(), "packaging/config/{name} does not show {missing:?}");
}

#[test]
fn every_setting_is_a_config_key_and_in_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let relay_bin = env!("CARGO_BIN_EXE_aic-relay");
    let relay = settings(&help_flags(relay_bin, &["--help"]));
    assert_eq!(file_keys(relay_bin, &["connect-lines"], dir.path()), relay, "aic-relay's config keys and its flags");
    check_example("relay.toml", &relay);
    let daemon_bin = env!("CARGO_BIN_EXE_aic-daemon");
    let daemon = settings(&help_flags(daemon_bin, &["run", "--help"]));
    let run = ["run", "--relay", "ws://127.0.0.1:1"];
    assert_eq!(file_keys(daemon_bin, &run, dir.path()), daemon, "aic-daemon's config keys and its flags");
    check_example("daemon.toml", &daemon);
}

#[test]
fn each_binary_says_what_it_is() {
    let first_line = |bin: &str| {
        let out = run(bin, &["-h"]);
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().lines().next().unwrap().to_string()
    };
    let relay = first_line(env!("CARGO_BIN_EXE_aic-relay"));
    let daemon = first_line(env!("CARGO_BIN_EXE_aic-daemon"));
    let console = first_line(env!("CARGO_BIN_EXE_aic-console"));
    assert!(daemon.starts_with("The aic daemon: keeps an outbound link to an aic relay"), "{daemon}");
    assert!(console.starts_with("Watch and steer the aic daemon on this machine"), "{console}");
    assert!(relay != daemon && relay != console, "{relay}");
}

#[test]
fn a_mistyped_subcommand_is_refused_with_the_one_it_meant() {
    let cases = [
        (env!("CARGO_BIN_EXE_aic-daemon"), "rn", "'run'"),
        (env!("CARGO_BIN_EXE_aic-relay"), "ky", "'key'"),
        (env!("CARGO_BIN_EXE_aic-console"), "stauts", "'status'"),
    ];
    for (bin, typed, meant) in cases {
        let out = run(bin, &[typed]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin} {typed}: {stderr}");
        assert!(stderr.contains(&format!("a similar subcommand exists: {meant}")), "{bin} {typed}: {stderr}");
        let far = run(bin, &["zzzzzz"]);
        assert_eq!(far.status.code(), Some(2));
        assert!(!String::from_utf8_lossy(&far.stderr).contains("similar"), "{bin}: nothing is near zzzzzz");
    }
}

#[test]
fn generate_is_listed_for_packagers() {
    for bin in [env!("CARGO_BIN_EXE_aic-relay"), env!("CARGO_BIN_EXE_aic-daemon"), env!("CARGO_BIN_EXE_aic-console")] {
        let help = String::from_utf8(run(bin, &["--help"]).stdout).unwrap();
        let line =
            help.lines().find(|l| l.trim_start().starts_with("generate ")).unwrap_or_else(|| panic!("{bin}: {help}"));
        assert!(line.contains("shell completions or the man page"), "{line}");
    }
}

//! What an operator runs besides the service: `--version`, completions and
//! man pages, `doctor`; and what a monitoring system scrapes: `/metrics`.

use std::process::{Command, Output};

/// Runs binary `bin` (`aic-relay`, …) with `args`, with no `AIC_*` settings from the caller.
fn run(bin: &str, args: &[&str]) -> Output {
    let exe = match bin {
        "aic-relay" => env!("CARGO_BIN_EXE_aic-relay"),
        "aic-daemon" => env!("CARGO_BIN_EXE_aic-daemon"),
        _ => env!("CARGO_BIN_EXE_aic-console"),
    };
    let mut command = Command::new(exe);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("AIC_")) {
        command.env_remove(key);
    }
    command.args(args).output().expect("run the binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn version_names_binary_version_and_git_revision() {
    let git = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or_else(|| "unknown".to_string(), |out| stdout(&out).trim().to_string());
    for bin in ["aic-relay", "aic-daemon", "aic-console"] {
        let out = run(bin, &["--version"]);
        assert!(out.status.success());
        assert_eq!(stdout(&out), format!("{bin} {} (git {git})\n", env!("CARGO_PKG_VERSION")));
    }
}

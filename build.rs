//! Build script: records the git revision the binaries were built from, for
//! `--version`; "unknown" outside a git checkout (a source archive, a crate).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    let revision = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=AIC_GIT_REVISION={revision}");
    // Build again when HEAD moves: HEAD itself (checkout), the branch it names (commit), packed refs.
    // Only files that exist: cargo reruns the script on every build for a missing one.
    let mut watch = vec!["build.rs".to_string()];
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watch.push(format!("{dir}/HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        watch.push(format!("{common}/packed-refs"));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(format!("{common}/{branch}"));
        }
    }
    for path in watch.iter().filter(|path| std::path::Path::new(path).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
}

//! Shell completions and man pages, written from a binary's own clap
//! definition by its hidden `generate` subcommand, for packages and installers.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap_complete::Shell;

/// What `BIN generate` writes.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Generate {
    /// Bash, zsh and fish completions: BIN.bash, _BIN and BIN.fish in DIR.
    Completions {
        /// The directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// The man page, BIN.1 in DIR, with every subcommand's options.
    Man {
        /// The directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Writes what `what` asks for from `command` and prints each file's path.
pub fn run(what: &Generate, command: clap::Command) -> anyhow::Result<()> {
    let written = match what {
        Generate::Completions { out } => completions(command, out)?,
        Generate::Man { out } => vec![man(command, out)?],
    };
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

fn create(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Writes the completions for bash, zsh and fish into `dir`.
pub fn completions(mut command: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    create(dir)?;
    let name = command.get_name().to_string();
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| {
            clap_complete::generate_to(shell, &mut command, &name, dir)
                .with_context(|| format!("writing {shell} completions into {}", dir.display()))
        })
        .collect()
}

/// Writes the man page `NAME.1` into `dir`: the binary's page, then a section
/// of options for each subcommand that takes any.
pub fn man(command: clap::Command, dir: &Path) -> anyhow::Result<PathBuf> {
    create(dir)?;
    let name = command.get_name().to_string();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        subcommand_options(&mut page, &format!("{name} {}", sub.get_name()), sub)?;
        for nested in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
            subcommand_options(&mut page, &format!("{name} {} {}", sub.get_name(), nested.get_name()), nested)?;
        }
    }
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Appends `OPTIONS OF <title>` with `sub`'s own arguments, if it has any.
fn subcommand_options(page: &mut Vec<u8>, title: &str, sub: &clap::Command) -> anyhow::Result<()> {
    let own = |a: &&clap::Arg| !a.is_hide_set() && !a.is_global_set() && a.get_id().as_str() != "help";
    if !sub.get_arguments().any(|a| own(&a)) {
        return Ok(());
    }
    let mut section = Vec::new();
    clap_mangen::Man::new(sub.clone()).render_options_section(&mut section)?;
    let heading = format!(".SH \"OPTIONS OF {}\"\n", title.to_uppercase());
    let section = String::from_utf8(section)?.replacen(".SH OPTIONS\n", &heading, 1);
    page.extend_from_slice(section.as_bytes());
    Ok(())
}

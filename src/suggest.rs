//! Parsing a binary's arguments with a "did you mean" for short mistyped subcommands (`rn` for `run`),
//! which clap's own similarity measure lets through without a suggestion.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// The arguments of this process as `command` defines them; on a mistyped subcommand, an error that names
/// the nearest one, then exit (status 2, as clap exits on any bad argument).
pub fn matches(command: clap::Command) -> clap::ArgMatches {
    let names: Vec<String> = command.get_subcommands().map(|c| c.get_name().to_string()).collect();
    command.try_get_matches().unwrap_or_else(|mut e| {
        add_suggestion(&mut e, &names);
        e.exit()
    })
}

/// `T` from this process's arguments, as [`matches()`] reads them.
pub fn parse<T: clap::Parser>() -> T {
    T::from_arg_matches(&matches(T::command())).unwrap_or_else(|e| e.exit())
}

/// Adds the nearest of `names` to an unknown-subcommand error that carries no suggestion yet.
fn add_suggestion(error: &mut clap::Error, names: &[String]) {
    if error.kind() != ErrorKind::InvalidSubcommand || error.get(ContextKind::SuggestedSubcommand).is_some() {
        return;
    }
    let Some(ContextValue::String(typed)) = error.get(ContextKind::InvalidSubcommand) else { return };
    if let Some(near) = nearest(typed, names) {
        error.insert(ContextKind::SuggestedSubcommand, ContextValue::String(near.to_string()));
    }
}

/// The name of `names` within a small edit distance of `typed` (one edit, two for longer names), if any.
fn nearest<'a>(typed: &str, names: &'a [String]) -> Option<&'a str> {
    let allowed = if typed.chars().count() >= 5 { 2 } else { 1 };
    names
        .iter()
        .map(|n| (distance(typed, n), n))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n.as_str())
}

/// Levenshtein distance between `a` and `b`, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_near_name_is_suggested_and_a_far_one_is_not() {
        let names: Vec<String> = ["run", "doctor", "generate"].map(String::from).into();
        assert_eq!(nearest("rn", &names), Some("run"));
        assert_eq!(nearest("doctr", &names), Some("doctor"));
        assert_eq!(nearest("genrate", &names), Some("generate"));
        assert_eq!(nearest("xyz", &names), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}

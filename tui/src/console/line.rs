//! The `:` line read by the CLI's own clap definition ([`crate::cli::Cli`]):
//! [`parse`] checks a line as `dml` would, [`complete`] finishes the word
//! under the cursor from the same command tree. Pure: no IO.

use crate::cli::Cli;
use clap::{CommandFactory, Parser};

/// What [`parse`] makes of a line.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A command for the `dml` binary (the words after `dml`).
    Run(Vec<String>),
    /// Text to show instead of running anything (`help`, `--help`).
    Show(String),
}

/// Why a `:` line is not run.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("type a command as for dml, without \"dml\"; :help lists them")]
    Empty,
    #[error("that would open another console; give a command (:help lists them)")]
    Console,
    /// clap's own first line, as `dml` would print it.
    #[error("{0}")]
    Refused(String),
}

/// Checks `words` (without `dml`) against the CLI's clap definition.
pub fn parse(words: &[String]) -> Result<Parsed, LineError> {
    use clap::error::ErrorKind as K;
    if words.is_empty() {
        return Err(LineError::Empty);
    }
    match Cli::try_parse_from(std::iter::once("dml").chain(words.iter().map(String::as_str))) {
        Ok(cli) if cli.command.is_none() => Err(LineError::Console),
        Ok(_) => Ok(Parsed::Run(words.to_vec())),
        Err(e)
            if matches!(
                e.kind(),
                K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            Ok(Parsed::Show(e.render().to_string().trim_end().to_string()))
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            Err(LineError::Refused(
                first.strip_prefix("error: ").unwrap_or(first).to_string(),
            ))
        }
    }
}

/// Completes the last word of `line` from the command tree: subcommand
/// names, or `--flags` once it starts with `-`. Returns the new line and,
/// when several choices remain, the choices.
pub fn complete(line: &str) -> (String, Vec<String>) {
    let (done, word) = match line.rfind(' ') {
        Some(i) => (&line[..=i], &line[i + 1..]),
        None => ("", line),
    };
    let root = Cli::command();
    // Walk the finished words down the subcommand tree.
    let mut cmd = &root;
    for w in done.split_whitespace() {
        if let Some(sub) = cmd.find_subcommand(w) {
            cmd = sub;
        }
    }
    let mut names: Vec<String> = if word.starts_with('-') {
        cmd.get_arguments()
            .chain(root.get_arguments().filter(|a| a.is_global_set()))
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect()
    } else {
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_string())
            .chain(cmd.has_subcommands().then(|| "help".to_string()))
            .collect()
    };
    names.retain(|n| n.starts_with(word));
    names.sort();
    names.dedup();
    match &names[..] {
        [] => (line.to_string(), Vec::new()),
        [one] => (format!("{done}{one} "), Vec::new()),
        [first, rest @ ..] => {
            // The longest prefix they share.
            let mut common = first.clone();
            for n in rest {
                while !n.starts_with(&common) {
                    common.pop();
                }
            }
            (format!("{done}{common}"), names)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn a_line_is_checked_by_the_cli_definition() {
        assert_eq!(
            parse(&words("ls-all *")),
            Ok(Parsed::Run(words("ls-all *")))
        );
        let e = parse(&words("submit-job resnet50 0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'0'") && e.contains("NUM_IMAGES"), "{e}");
        let e = parse(&words("frobnicate")).unwrap_err().to_string();
        assert!(e.contains("unrecognized subcommand 'frobnicate'"), "{e}");
        assert!(parse(&[]).is_err());
        assert_eq!(parse(&words("--json")), Err(LineError::Console));
    }

    #[test]
    fn help_shows_the_clis_own_help() {
        let Ok(Parsed::Show(all)) = parse(&words("help")) else {
            panic!("help shows text");
        };
        assert!(
            all.contains("submit-job") && all.contains("get-versions"),
            "{all}"
        );
        let Ok(Parsed::Show(put)) = parse(&words("put --help")) else {
            panic!("put --help shows text");
        };
        assert!(put.contains("Examples:"), "{put}");
    }

    #[test]
    fn tab_completes_commands_subcommands_and_flags() {
        assert_eq!(complete("ls-a"), ("ls-all ".to_string(), vec![]));
        let (line, choices) = complete("get");
        assert_eq!(line, "get");
        assert!(choices.contains(&"get-versions".to_string()), "{choices:?}");
        assert_eq!(complete("sdfs no").0, "sdfs nodes ");
        assert_eq!(
            complete("submit-job resnet50 8 --da").0,
            "submit-job resnet50 8 --dataset "
        );
        // Global flags complete under any command.
        assert_eq!(complete("members --js").0, "members --json ");
        assert_eq!(complete("zzz"), ("zzz".to_string(), vec![]));
    }
}

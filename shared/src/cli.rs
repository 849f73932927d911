//! The command line both binaries open with: `-c/--config FILE` (global, so it may follow a
//! subcommand too; each binary has its own default path), then the binary's own subcommands
//! (none: serve). Each binary flattens a [`Cli`] into its `clap::Parser`, which carries its
//! name, version and about line.

use std::marker::PhantomData;
use std::path::PathBuf;

/// What differs between the binaries' `-c`.
pub trait Binary {
    /// The config file read when `-c` is not given.
    const CONFIG: &'static str;
    /// `-c`'s help line: the format, and how the environment overrides the file.
    const CONFIG_HELP: &'static str;
}

/// `-c FILE` and the subcommand `C`, if one was given.
#[derive(Debug, clap::Args)]
pub struct Cli<B: Binary, C: clap::Subcommand> {
    #[arg(short, long, global = true, default_value = B::CONFIG, help = B::CONFIG_HELP)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<C>,
    #[arg(skip)]
    binary: PhantomData<B>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    #[command(name = "t")]
    struct Args {
        #[command(flatten)]
        cli: Cli<Args, Command>,
    }

    impl Binary for Args {
        const CONFIG: &'static str = "/etc/t.toml";
        const CONFIG_HELP: &'static str = "The file";
    }

    #[derive(Debug, PartialEq, clap::Subcommand)]
    enum Command {
        Check,
    }

    #[test]
    fn config_has_the_binarys_default_and_may_follow_the_subcommand() {
        let a = Args::try_parse_from(["t"]).expect("parses");
        assert_eq!((a.cli.config, a.cli.command), (PathBuf::from("/etc/t.toml"), None));
        let a = Args::try_parse_from(["t", "check", "-c", "x.toml"]).expect("parses");
        assert_eq!((a.cli.config, a.cli.command), (PathBuf::from("x.toml"), Some(Command::Check)));
        let help = Args::try_parse_from(["t", "--help"]).expect_err("help").to_string();
        assert!(help.contains("The file") && help.contains("[default: /etc/t.toml]"), "{help}");
    }
}

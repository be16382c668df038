//! The `fanz-node` command line, generated from [`crate::config::SETTINGS`]: one flag
//! and one `FANZ_*` variable per setting, plus `--config PATH` for a TOML file.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

use crate::config::{read_file, Config, ConfigError, Origin, RawSettings, SETTINGS};

/// What to do.
#[derive(Debug)]
pub enum Invocation {
    /// Run the node.
    Serve(Config),
    /// Print the effective settings and exit.
    PrintConfig(Config),
    /// Print the HTTP/3 development certificate (made if missing) and exit.
    PrintDevCert(Config),
    /// Make a cluster CA, node certificates and a gossip keyring.
    ClusterInit {
        /// Where.
        dir: PathBuf,
        /// How many node directories.
        nodes: usize,
    },
}

/// The command line could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Usage error, `--help` or `--version` (clap prints these itself).
    #[error(transparent)]
    Usage(#[from] clap::Error),
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The clap command, with one argument per setting.
pub fn command() -> Command {
    let mut cmd = Command::new("fanz-node")
        .version(env!("CARGO_PKG_VERSION"))
        .about("FANZ Edge cache node. Every setting can be given as a flag, as a FANZ_* environment variable or in the TOML file; flags win over the environment, which wins over the file.")
        .subcommand(Command::new("serve").about("Run the node (what runs without a subcommand)"))
        .subcommand(Command::new("print-config").about("Print the effective settings as TOML and exit"))
        .subcommand(
            Command::new("print-dev-cert")
                .about("Print the development certificate HTTP/3 uses without tls_cert (PEM), for clients to trust"),
        )
        .subcommand(
            Command::new("cluster-init")
                .about("Make a cluster CA, one certificate directory per node (each a complete --cluster-dir) and a gossip keyring, for local and test clusters")
                .arg(Arg::new("dir").value_name("DIR").required(true).help("Directory to create them in (must not hold a CA yet)"))
                .arg(
                    Arg::new("nodes")
                        .long("nodes")
                        .value_name("N")
                        .default_value("3")
                        .value_parser(clap::value_parser!(u16).range(1..=1000))
                        .help("Node directories to make: DIR/node-1 ... DIR/node-N"),
                ),
        )
        .arg(
            Arg::new("config")
                .long("config")
                .env("FANZ_CONFIG")
                .value_name("PATH")
                .global(true)
                .help("TOML file of settings (keys as below, e.g. http_addr = \"127.0.0.1:8080\")"),
        );
    for spec in SETTINGS {
        let help = match spec.default {
            Some(d) => format!("{} [default: {d}]", spec.help),
            None => spec.help.to_string(),
        };
        cmd = cmd.arg(
            Arg::new(spec.name)
                .long(spec.flag())
                .env(spec.env())
                .value_name(spec.name.to_ascii_uppercase())
                .global(true)
                .hide_env_values(matches!(spec.name, "admin_token" | "purge_token"))
                .help(help),
        );
    }
    cmd
}

/// Parses the command line (and the environment, and the file it names).
pub fn parse<I, T>(args: I) -> Result<Invocation, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let (name, sub) = match matches.subcommand() {
        Some((name, sub)) => (name, sub),
        None => ("serve", &matches),
    };
    if name == "cluster-init" {
        return Ok(Invocation::ClusterInit {
            dir: PathBuf::from(sub.get_one::<String>("dir").expect("required")),
            nodes: usize::from(*sub.get_one::<u16>("nodes").expect("has a default")),
        });
    }
    let mut config = Config::resolve(&raw_settings(sub)?)?;
    config.config_file = sub.get_one::<String>("config").map(PathBuf::from);
    Ok(match name {
        "print-config" => Invocation::PrintConfig(config),
        "print-dev-cert" => Invocation::PrintDevCert(config),
        _ => Invocation::Serve(config),
    })
}

/// Layers the file under the environment and the flags.
fn raw_settings(matches: &ArgMatches) -> Result<RawSettings, ConfigError> {
    let mut raw = match matches.get_one::<String>("config") {
        Some(path) => read_file(&PathBuf::from(path))?,
        None => RawSettings::new(),
    };
    for spec in SETTINGS {
        let Some(value) = matches.get_one::<String>(spec.name) else {
            continue;
        };
        let origin = match matches.value_source(spec.name) {
            Some(ValueSource::EnvVariable) => Origin::Env(spec.env()),
            _ => Origin::Flag(spec.flag()),
        };
        raw.insert(spec.name, (value.clone(), origin));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "http_addr = \"127.0.0.1:1111\"\nadmin_addr = \"127.0.0.1:2222\"\n",
        )
        .unwrap();
        let args = [
            "fanz-node",
            "--config",
            path.to_str().unwrap(),
            "--http-addr",
            "127.0.0.1:3333",
        ];
        let Invocation::Serve(c) = parse(args).unwrap() else {
            panic!("expected serve")
        };
        assert_eq!(c.http_addr.port(), 3333);
        assert_eq!(c.admin_addr.port(), 2222);
    }

    #[test]
    fn subcommands_take_the_settings_too() {
        let Invocation::PrintConfig(c) =
            parse(["fanz-node", "print-config", "--memory-capacity", "1GiB"]).unwrap()
        else {
            panic!("expected print-config")
        };
        assert_eq!(c.memory_capacity, 1 << 30);
        assert!(matches!(
            parse(["fanz-node", "serve", "--max-ttl", "forever"]),
            Err(CliError::Config(_))
        ));
        assert!(matches!(
            parse(["fanz-node", "--no-such-flag"]),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn help_documents_every_setting() {
        let help = command().render_long_help().to_string();
        for spec in SETTINGS {
            assert!(
                help.contains(&format!("--{}", spec.flag())),
                "{} missing from --help",
                spec.name
            );
            assert!(
                help.contains(&spec.env()),
                "{} missing from --help",
                spec.env()
            );
        }
    }
}

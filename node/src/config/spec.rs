//! What a setting is ([`Spec`]), where its value came from ([`Origin`]), what can
//! be wrong with it ([`ConfigError`]), and the `settings!` macro that turns the one
//! table in `config/mod.rs` into the [`Spec`] list, the typed `Config`, its parser
//! and its effective values.

use std::fmt;
use std::path::PathBuf;

/// One setting: name (TOML key), default, help, and whether a reload applies it.
#[derive(Debug)]
pub struct Spec {
    /// TOML key; the flag is `--` plus this with dashes, the variable `FANZ_` plus it upper-cased.
    pub name: &'static str,
    /// Built-in default; `None` means unset.
    pub default: Option<&'static str>,
    /// What it does.
    pub help: &'static str,
    /// A reload (SIGHUP, `config_watch`) applies a change of it; any other change
    /// needs a restart.
    pub reloadable: bool,
}

impl Spec {
    /// `--http-addr` for `http_addr`.
    pub fn flag(&self) -> String {
        self.name.replace('_', "-")
    }
    /// `FANZ_HTTP_ADDR` for `http_addr`.
    pub fn env(&self) -> String {
        format!("FANZ_{}", self.name.to_ascii_uppercase())
    }
}

/// Where a setting's value came from; named in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A TOML file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(flag) => write!(f, "flag --{flag}"),
        }
    }
}

/// A setting that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid setting `{setting}` (from {origin}): {message}")]
    Invalid {
        /// Setting name.
        setting: &'static str,
        /// Where the value came from.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
    /// A key in the file that is not a setting.
    #[error("unknown setting `{key}` in {path}")]
    Unknown {
        /// The key.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// `reloadable` or `fixed`: whether a reload applies the setting. Any other word
/// does not compile.
macro_rules! reload_flag {
    (reloadable) => {
        true
    };
    (fixed) => {
        false
    };
}

/// The settings table. Each entry is one setting:
///
/// ```text
/// name: Type = default, how(parser), shown, reloadable|fixed, "help";
/// ```
///
/// `how` is a [`super::parse::Parser`] method: `required` (always has a value),
/// `optional` (an `Option`, unset by default) or `or_empty` (unset is the type's
/// default, an empty list). `parser` reads the text (`fn(&str) -> Result<T,
/// String>`), `shown` writes the value back for `print-config` and reload diffs
/// (`fn(&T) -> String`). From the table come [`SETTINGS`](super::SETTINGS), the
/// fields of `Config` (documented by their help), `Config::parse_each` and
/// `Config::effective`.
macro_rules! settings {
    ($( $name:ident : $ty:ty = $default:expr, $how:ident($parse:expr), $shown:expr, $reload:ident, $help:literal; )*) => {
        /// Every setting of the node, in `--help` order. Defaults are documented
        /// here, where they are defined.
        pub const SETTINGS: &[Spec] = &[
            $( Spec { name: stringify!($name), default: $default, help: $help, reloadable: spec::reload_flag!($reload) }, )*
        ];

        /// The node's typed settings: one field per entry of [`SETTINGS`].
        #[derive(Debug, Clone)]
        pub struct Config {
            $( #[doc = $help] pub $name: $ty, )*
            /// The settings file given with `--config`, if any (not a setting itself).
            pub config_file: Option<PathBuf>,
        }

        impl Config {
            /// Each setting parsed on its own (the checks across settings come after).
            fn parse_each(p: &parse::Parser<'_>) -> Result<Config, ConfigError> {
                Ok(Config {
                    $( $name: p.$how(stringify!($name), $parse)?, )*
                    config_file: None,
                })
            }

            /// Every setting's effective value, as text, in table order (the admin
            /// token redacted).
            pub fn effective(&self) -> Vec<(&'static str, String)> {
                vec![ $( (stringify!($name), ($shown)(&self.$name)), )* ]
            }
        }
    };
}

pub(super) use {reload_flag, settings};

//! Reading settings: the TOML file ([`read_file`]), the [`Parser`] that finds each
//! setting's text (given, or its default) and names the setting and the text's
//! origin in every error, and the value parsers and printers the table in
//! `config/mod.rs` uses, each written once: addresses, switches, whole numbers and
//! sizes within a range, durations, comma-separated lists.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::spec::{ConfigError, Origin, Spec};
use super::units::parse_duration;
use super::{parse_size, RawSettings, SETTINGS};

/// Reads a TOML settings file into raw values.
pub fn read_file(path: &Path) -> Result<RawSettings, ConfigError> {
    let file_err = |message: String| ConfigError::File {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_err(e.to_string()))?;
    let mut raw = RawSettings::new();
    for (key, value) in table {
        // `[[tls.certs]]`: the `tls_certs` setting.
        let (key, value) = match (key.as_str(), value) {
            ("tls", toml::Value::Table(mut tls)) => {
                match (tls.remove("certs"), tls.keys().next()) {
                    (Some(certs), None) => ("tls_certs".to_string(), certs),
                    (_, Some(other)) => {
                        return Err(file_err(format!(
                            "tls.{other}: unknown setting (the [tls] table holds `certs` only)"
                        )))
                    }
                    (None, None) => continue,
                }
            }
            (_, value) => (key, value),
        };
        let Some(spec) = SETTINGS.iter().find(|s| s.name == key) else {
            return Err(ConfigError::Unknown {
                key,
                path: path.to_path_buf(),
            });
        };
        let text = match value {
            // `[[rules]]` tables: read as the inline array the `rules` setting takes.
            array @ toml::Value::Array(_) if matches!(spec.name, "rules" | "tls_certs") => {
                array.to_string()
            }
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(ConfigError::Invalid {
                    setting: spec.name,
                    origin: Origin::File(path.to_path_buf()),
                    message: format!("expected a string or a number, got {}", other.type_str()),
                })
            }
        };
        raw.insert(spec.name, (text, Origin::File(path.to_path_buf())));
    }
    Ok(raw)
}

/// Finds each setting's text among the raw values (or its default) and parses it,
/// naming the setting and where the text came from when it is wrong.
pub(super) struct Parser<'a> {
    pub(super) raw: &'a RawSettings,
}

impl Parser<'_> {
    fn spec(name: &'static str) -> &'static Spec {
        // Invariant: callers pass names from SETTINGS (the table generates them;
        // the cross-setting checks are covered by unit tests).
        SETTINGS
            .iter()
            .find(|s| s.name == name)
            .expect("setting is in SETTINGS")
    }

    fn value(&self, name: &'static str) -> Option<(String, Origin)> {
        self.raw.get(name).cloned().or_else(|| {
            Self::spec(name)
                .default
                .map(|d| (d.to_string(), Origin::Default))
        })
    }

    /// The error for setting `name`, naming where its value came from.
    pub(super) fn invalid(&self, name: &'static str, message: String) -> ConfigError {
        let origin = self.value(name).map_or(Origin::Default, |(_, o)| o);
        ConfigError::Invalid {
            setting: name,
            origin,
            message,
        }
    }

    /// A setting that always has a value (its default, if not given).
    pub(super) fn required<T>(
        &self,
        name: &'static str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let (text, origin) = self
            .value(name)
            .ok_or_else(|| self.invalid(name, "has no value".into()))?;
        f(text.trim()).map_err(|message| ConfigError::Invalid {
            setting: name,
            origin,
            message,
        })
    }

    /// A setting that may be unset; set, it must not be empty.
    pub(super) fn optional<T>(
        &self,
        name: &'static str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.value(name) {
            None => Ok(None),
            Some((text, _)) if !text.is_empty() => {
                f(&text).map(Some).map_err(|m| self.invalid(name, m))
            }
            Some(_) => Err(self.invalid(name, "must not be empty when set".into())),
        }
    }

    /// A setting whose absence, or empty text, is its type's default (an empty
    /// list: `print-config` shows one as `""`, which must read back).
    pub(super) fn or_empty<T: Default>(
        &self,
        name: &'static str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.value(name) {
            Some((text, _)) if !text.trim().is_empty() => {
                f(&text).map_err(|m| self.invalid(name, m))
            }
            _ => Ok(T::default()),
        }
    }
}

/// `127.0.0.1:8080`.
pub(super) fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("expected an address like 127.0.0.1:8080, got {s:?}"))
}

/// An address, or `off` for a listener that is not opened.
pub(super) fn addr_or_off(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" {
        Ok(None)
    } else {
        addr(s).map(Some)
    }
}

/// `true` or `false`.
pub(super) fn switch(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("expected `true` or `false`, got {s:?}")),
    }
}

/// Text as given.
pub(super) fn text(s: &str) -> Result<String, String> {
    Ok(s.to_string())
}

/// A path.
pub(super) fn path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// A whole number from `min` to `max`.
pub(super) fn whole<T>(min: T, max: T) -> impl Fn(&str) -> Result<T, String>
where
    T: FromStr + PartialOrd + Display + Copy + Bounded,
{
    move |s| match s.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ if max == T::MAX => Err(format!(
            "expected a whole number of at least {min}, got {s:?}"
        )),
        _ => Err(format!(
            "expected a whole number from {min} to {max}, got {s:?}"
        )),
    }
}

/// The largest value of a number type (for [`whole`]'s message).
pub(super) trait Bounded {
    /// The largest value.
    const MAX: Self;
}

macro_rules! bounded {
    ($($t:ty),*) => { $( impl Bounded for $t { const MAX: Self = <$t>::MAX; } )* };
}
bounded!(u16, u32, u64, usize);

/// A size (`64MiB`, `8KiB`, `1024`) from `min` to `max` bytes.
pub(super) fn size<T: TryFrom<u64>>(min: u64, max: u64) -> impl Fn(&str) -> Result<T, String> {
    move |s| {
        let n = parse_size(s)?;
        if n < min {
            return Err(format!("must be at least {}", bytes(min)));
        }
        if n > max {
            return Err(format!("must be at most {}", bytes(max)));
        }
        T::try_from(n).map_err(|_| format!("{n} bytes is too large here"))
    }
}

/// `1MiB`, `8KiB`, `1 byte`: a size limit as an error message shows it.
fn bytes(n: u64) -> String {
    match n {
        1 => "1 byte".into(),
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// A duration (`500ms`, `2s`, `1h`, `7d`).
pub(super) fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// A duration greater than zero.
pub(super) fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        Err("must be greater than zero".into())
    } else {
        Ok(d)
    }
}

/// A comma-separated list, items trimmed, empty ones dropped.
/// Secrets, comma-separated: at least one, none empty or holding spaces (a stray
/// space would make a token nobody can present).
pub(super) fn tokens(s: &str) -> Result<Vec<String>, String> {
    let tokens: Vec<String> = s.split(',').map(|t| t.trim().to_string()).collect();
    if tokens.iter().any(|t| t.is_empty()) {
        return Err("a token is empty (a stray comma?)".into());
    }
    if tokens.iter().any(|t| t.contains(char::is_whitespace)) {
        return Err("a token holds whitespace".into());
    }
    Ok(tokens)
}

pub(super) fn list(s: &str) -> Result<Vec<String>, String> {
    Ok(s.split(',')
        .map(|item| item.trim().to_string())
        .filter(|item| !item.is_empty())
        .collect())
}

/// How [`super::Config::effective`] writes values back.
pub(super) mod shown {
    use std::fmt::Display;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// As displayed.
    pub(in crate::config) fn text(v: &impl Display) -> String {
        v.to_string()
    }

    /// In milliseconds (`1500ms`): exact, and parses back.
    pub(in crate::config) fn ms(d: &Duration) -> String {
        format!("{}ms", d.as_millis())
    }

    /// A path.
    pub(in crate::config) fn path(p: &Path) -> String {
        p.display().to_string()
    }

    /// Displayed, or `(unset)`.
    pub(in crate::config) fn unset(v: &Option<impl Display>) -> String {
        v.as_ref().map_or("(unset)".into(), |v| v.to_string())
    }

    /// An address, or `off`.
    pub(in crate::config) fn addr_or_off(a: &Option<std::net::SocketAddr>) -> String {
        a.map_or("off".into(), |a| a.to_string())
    }

    /// A path, or `(unset)`.
    pub(in crate::config) fn unset_path(p: &Option<PathBuf>) -> String {
        p.as_ref()
            .map_or("(unset)".into(), |p| p.display().to_string())
    }

    /// Comma-separated.
    pub(in crate::config) fn list(items: &[impl Display]) -> String {
        items
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `(redacted)` when set: a secret.
    pub(in crate::config) fn redacted<T>(v: &Option<T>) -> String {
        v.as_ref().map_or("(unset)".into(), |_| "(redacted)".into())
    }
}

/// One of the words in `words`, as the value it stands for.
pub(super) fn one_of<T: Copy>(
    words: &'static [(&'static str, T)],
) -> impl Fn(&str) -> Result<T, String> {
    move |s| {
        words
            .iter()
            .find(|(word, _)| *word == s)
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                let quoted: Vec<String> = words.iter().map(|(w, _)| format!("`{w}`")).collect();
                let (last, rest) = quoted.split_last().expect("a choice has words");
                if rest.is_empty() {
                    format!("expected {last}, got {s:?}")
                } else {
                    format!("expected {} or {last}, got {s:?}", rest.join(", "))
                }
            })
    }
}

/// The word in `words` that stands for `value`.
pub(super) fn word<T: PartialEq>(words: &'static [(&'static str, T)], value: &T) -> String {
    words
        .iter()
        .find(|(_, v)| v == value)
        .map_or_else(String::new, |(w, _)| (*w).to_string())
}

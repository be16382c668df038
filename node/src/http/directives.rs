//! The directive-list syntax shared by `Cache-Control`, `CDN-Cache-Control` and
//! `Surrogate-Control` (RFC 9111 §5.2): `name[=token|quoted-string]`, comma-separated.

use std::collections::BTreeMap;

/// Parsed directives: lower-cased name to (unquoted) argument. The first occurrence
/// of a directive wins (RFC 9111 §4.2.1 allows using the first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives(BTreeMap<String, Option<String>>);

impl Directives {
    /// Parses every value of one header field. Unknown directives are kept (callers
    /// ignore what they do not know); malformed syntax is an error.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for value in values {
            for item in split_list(value)? {
                // No whitespace around `=` (RFC 9110 §5.6.2's grammar): `max-age =5`
                // is not a directive with an argument.
                let (name, arg) = match item.split_once('=') {
                    Some((n, a))
                        if n.ends_with(char::is_whitespace)
                            || a.starts_with(char::is_whitespace) =>
                    {
                        return Err(format!("whitespace around `=` in {item:?}"));
                    }
                    Some((n, a)) => (n, Some(a.trim_end())),
                    None => (item, None),
                };
                if name.is_empty() || !name.bytes().all(is_tchar) {
                    return Err(format!("{item:?} is not a directive"));
                }
                let arg = match arg {
                    None => None,
                    Some(a) if a.len() >= 2 && a.starts_with('"') && a.ends_with('"') => {
                        Some(a[1..a.len() - 1].to_string())
                    }
                    Some(a) if !a.is_empty() && a.bytes().all(is_tchar) => Some(a.to_string()),
                    Some(_) => return Err(format!("bad argument in {item:?}")),
                };
                map.entry(name.to_ascii_lowercase()).or_insert(arg);
            }
        }
        Ok(Directives(map))
    }

    /// Whether the directive is present (with or without an argument).
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The argument of `name`.
    pub fn arg(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|a| a.as_deref())
    }

    /// A delta-seconds directive: `Ok(None)` when absent, `Err` when present without a
    /// valid number. Values past u32 saturate, as RFC 9111 §1.2.2 allows.
    pub fn seconds(&self, name: &str) -> Result<Option<u64>, String> {
        match self.0.get(name) {
            None => Ok(None),
            Some(arg) => delta_seconds(arg.as_deref())
                .map(Some)
                .ok_or_else(|| format!("{name} needs a number of seconds")),
        }
    }

    /// Whether no directive was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits a comma-separated list, dropping empty elements (RFC 9110 §5.6.1), but
/// keeping commas inside quoted strings.
fn split_list(value: &str) -> Result<Vec<&str>, String> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    for (i, c) in value.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                items.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err("unterminated quoted string".into());
    }
    items.push(value[start..].trim());
    items.retain(|s| !s.is_empty());
    Ok(items)
}

/// RFC 9110 token characters.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn delta_seconds(arg: Option<&str>) -> Option<u64> {
    let arg = arg?;
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        arg.parse::<u64>()
            .unwrap_or(u64::MAX)
            .min(u64::from(u32::MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_arguments_and_spacing_are_errors() {
        for bad in ["max-age =5", "max-age= 5", "max-age=\"5"] {
            assert!(Directives::parse([bad]).is_err(), "{bad:?}");
        }
        for not_a_number in ["max-age=a100", "max-age=1.5", "max-age=-1", "max-age="] {
            let d = Directives::parse([not_a_number]);
            assert!(
                d.is_err() || d.unwrap().seconds("max-age").is_err(),
                "{not_a_number:?}"
            );
        }
        let d = Directives::parse(["MAX-AGE=5, max-age=0, Public"]).unwrap();
        assert_eq!(
            d.seconds("max-age"),
            Ok(Some(5)),
            "names are case-insensitive; the first wins"
        );
        assert!(d.has("public"));
    }

    #[test]
    fn parses_lists_arguments_and_quotes() {
        let d = Directives::parse([
            "public, max-age=60",
            "no-cache=\"Set-Cookie, X\", s-maxage=\"5\",,",
        ])
        .unwrap();
        assert!(d.has("public"));
        assert_eq!(d.seconds("max-age"), Ok(Some(60)));
        assert_eq!(d.seconds("s-maxage"), Ok(Some(5)));
        assert_eq!(d.arg("no-cache"), Some("Set-Cookie, X"));
        assert_eq!(d.seconds("stale-if-error"), Ok(None));
    }

    #[test]
    fn first_occurrence_wins_and_bad_numbers_are_errors() {
        let d = Directives::parse(["MAX-AGE=1, max-age=2"]).unwrap();
        assert_eq!(d.seconds("max-age"), Ok(Some(1)));
        assert!(Directives::parse(["max-age=-1"])
            .unwrap()
            .seconds("max-age")
            .is_err());
        assert!(Directives::parse(["max-age"])
            .unwrap()
            .seconds("max-age")
            .is_err());
        assert_eq!(
            Directives::parse(["max-age=99999999999"])
                .unwrap()
                .seconds("max-age"),
            Ok(Some(u64::from(u32::MAX)))
        );
    }

    #[test]
    fn malformed_syntax() {
        for bad in ["max age=5", "=5", "max-age=\"5", "max-age=5 6", "a=b=c"] {
            assert!(Directives::parse([bad]).is_err(), "{bad}");
        }
    }
}

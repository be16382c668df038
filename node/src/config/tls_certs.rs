//! `tls_certs` (`[[tls.certs]]` in the config file): certificates chosen by the
//! server name a client asks for (SNI), each with the names it serves.

use std::path::PathBuf;

use serde::Deserialize;

/// One certificate and the server names it is presented for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertEntry {
    /// Host names (`a.example`), or wildcards for one label (`*.a.example`).
    pub names: Vec<String>,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Reads the entries from a TOML inline array of tables, the form the config
/// file's `[[tls.certs]]` is turned into. Names are lowercased; a name given twice
/// is refused (which certificate would it get?).
pub(super) fn parse(text: &str) -> Result<Vec<CertEntry>, String> {
    let document: toml::Table = format!("certs = {text}")
        .parse()
        .map_err(|e: toml::de::Error| format!("not a TOML array of tables: {}", e.message()))?;
    let Some(toml::Value::Array(list)) = document.get("certs") else {
        return Err("expected an array of tables".into());
    };
    let mut entries: Vec<CertEntry> = Vec::with_capacity(list.len());
    for (index, item) in list.iter().enumerate() {
        let at = |e: String| format!("tls_certs[{index}]: {e}");
        let mut entry: CertEntry = item
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| at(e.message().to_string()))?;
        if entry.names.is_empty() {
            return Err(at("names: at least one server name".into()));
        }
        for name in &mut entry.names {
            *name = name.to_ascii_lowercase();
            check_name(name).map_err(|e| at(format!("names: {e}")))?;
            if let Some(other) = entries.iter().position(|e| e.names.contains(name)) {
                return Err(at(format!("names: {name} is also in tls_certs[{other}]")));
            }
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// A host name, or `*.` and a host name.
fn check_name(name: &str) -> Result<(), String> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!("{name:?} is not a host name (or *. and one)"));
    }
    Ok(())
}

/// As `print-config` shows them: the inline array `parse` reads back.
pub(super) fn show(entries: &[CertEntry]) -> String {
    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    let items: Vec<String> = entries
        .iter()
        .map(|e| {
            let names: Vec<String> = e.names.iter().map(|n| quoted(n)).collect();
            format!(
                "{{ names = [{}], cert = {}, key = {} }}",
                names.join(", "),
                quoted(&e.cert.display().to_string()),
                quoted(&e.key.display().to_string())
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_show_back() {
        let text = r#"[{ names = ["A.example", "*.b.example"], cert = "/c/a.pem", key = "/c/a-key.pem" }, { names = ["c.example"], cert = "c.pem", key = "c-key.pem" }]"#;
        let entries = parse(text).unwrap();
        assert_eq!(entries[0].names, ["a.example", "*.b.example"]);
        assert_eq!(entries[1].key, PathBuf::from("c-key.pem"));
        assert_eq!(parse(&show(&entries)).unwrap(), entries);
        assert_eq!(parse("[]").unwrap(), []);
    }

    #[test]
    fn bad_entries_are_refused_naming_the_entry() {
        for (text, says) in [
            (
                r#"[{ names = ["a.example"], cert = "c" }]"#,
                "tls_certs[0]: missing field `key`",
            ),
            (
                r#"[{ names = ["a.example"], cert = "c", key = "k", sni = 1 }]"#,
                "tls_certs[0]: unknown field `sni`",
            ),
            (
                r#"[{ names = [], cert = "c", key = "k" }]"#,
                "tls_certs[0]: names: at least one",
            ),
            (
                r#"[{ names = ["a b"], cert = "c", key = "k" }]"#,
                "not a host name",
            ),
            (
                r#"[{ names = ["*.*.a"], cert = "c", key = "k" }]"#,
                "not a host name",
            ),
            (
                r#"[{ names = ["a.example"], cert = "c", key = "k" }, { names = ["A.example"], cert = "d", key = "e" }]"#,
                "tls_certs[1]: names: a.example is also in tls_certs[0]",
            ),
            ("{}", "expected an array of tables"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}

//! Reading `[[rules]]` from TOML: each field checked, every error naming the rule
//! and the field (`rules[2].path: ...`), and a rule an earlier one always wins over
//! refused.

use http::{HeaderName, HeaderValue};

use super::*;

/// The fields a rule may have.
const FIELDS: &[&str] = &[
    "host",
    "path",
    "query",
    "drop_params",
    "bypass",
    "ttl",
    "ttl_by_status",
    "grace",
    "key_headers",
    "key_cookies",
    "set_response_headers",
    "remove_response_headers",
    "set_request_headers",
    "remove_request_headers",
    "origin",
];

/// Fields no rule may set or remove: they frame the message, are hop-by-hop, or
/// say what this cache did.
const UNEDITABLE: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "host",
    "age",
    "cache-status",
];

/// Reads the rules from a TOML inline array of tables (`[{ host = "a.example" }]`),
/// the form the config file's `[[rules]]` is turned into.
pub fn parse(text: &str) -> Result<Rules, String> {
    let document: toml::Table = format!("rules = {text}")
        .parse()
        .map_err(|e: toml::de::Error| format!("not a TOML array of tables: {}", e.message()))?;
    let Some(toml::Value::Array(list)) = document.get("rules") else {
        return Err("expected an array of tables".into());
    };
    let mut rules: Vec<std::sync::Arc<Rule>> = Vec::with_capacity(list.len());
    for (index, item) in list.iter().enumerate() {
        let rule = parse_rule(index, item).map_err(|e| format!("rules[{index}].{e}"))?;
        if let Some(earlier) = rules.iter().find(|r| shadows(r, &rule)) {
            return Err(format!(
                "rules[{index}] can never match: rules[{}] matches every request it would (put the narrower rule first)",
                earlier.index
            ));
        }
        rules.push(std::sync::Arc::new(rule));
    }
    Ok(Rules::new(rules))
}

/// Whether `earlier` matches every request `later` would.
fn shadows(earlier: &Rule, later: &Rule) -> bool {
    let covers = |a: &Option<Glob>, b: &Option<Glob>| match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a.covers(b),
    };
    covers(&earlier.host, &later.host) && covers(&earlier.path, &later.path)
}

/// One rule; errors start with the field's name.
fn parse_rule(index: usize, item: &toml::Value) -> Result<Rule, String> {
    let toml::Value::Table(table) = item else {
        return Err("(rule): a rule is a table".into());
    };
    if let Some(unknown) = table.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "{unknown}: unknown field (a rule has {})",
            FIELDS.join(", ")
        ));
    }
    let text = |field: &str| -> Result<Option<&str>, String> {
        match table.get(field) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(format!(
                "{field}: expected a string, got {}",
                other.type_str()
            )),
        }
    };
    let host = text("host")?
        .map(|h| Glob::parse(&h.to_ascii_lowercase(), "host"))
        .transpose()
        .map_err(|e| format!("host: {e}"))?;
    let path = text("path")?
        .map(|p| {
            if !p.starts_with(['/', '*']) {
                return Err(format!("path {p:?} must start with / (or *)"));
            }
            Glob::parse(p, "path")
        })
        .transpose()
        .map_err(|e| format!("path: {e}"))?;
    let query = match text("query")? {
        None => QueryMode::Keep,
        Some(text) => one_of(QUERY_MODES)(text).map_err(|e| format!("query: {e}"))?,
    };
    let drop_params = match table.get("drop_params") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Glob::parse(s, "parameter"),
                other => Err(format!("expected strings, got {}", other.type_str())),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("drop_params: {e}"))?,
        Some(other) => {
            return Err(format!(
                "drop_params: expected an array of globs, got {}",
                other.type_str()
            ))
        }
    };
    let bypass = match table.get("bypass") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(other) => {
            return Err(format!(
                "bypass: expected true or false, got {}",
                other.type_str()
            ))
        }
    };
    let ttl = text("ttl")?
        .map(|t| crate::config::units::parse_duration(t).map_err(|e| format!("ttl: {e}")))
        .transpose()?;
    let grace = text("grace")?
        .map(|t| crate::config::units::parse_duration(t).map_err(|e| format!("grace: {e}")))
        .transpose()?;
    let key_fields = key_fields(table)?;
    let ttl_by_status = match table.get("ttl_by_status") {
        None => Vec::new(),
        Some(toml::Value::Table(statuses)) => {
            let mut list = Vec::with_capacity(statuses.len());
            for (key, value) in statuses {
                let status = StatusMatch::parse(key).map_err(|e| format!("ttl_by_status: {e}"))?;
                let toml::Value::String(value) = value else {
                    return Err(format!(
                        "ttl_by_status: {key}: expected a duration like \"30s\", got {}",
                        value.type_str()
                    ));
                };
                let ttl = crate::config::units::parse_duration(value)
                    .map_err(|e| format!("ttl_by_status: {key}: {e}"))?;
                list.push((status, ttl));
            }
            list
        }
        Some(other) => {
            return Err(format!(
            "ttl_by_status: expected a table like {{ 404 = \"30s\", \"5xx\" = \"5s\" }}, got {}",
            other.type_str()
        ))
        }
    };
    let response_edits = header_edits(table, "set_response_headers", "remove_response_headers")?;
    let request_edits = header_edits(table, "set_request_headers", "remove_request_headers")?;
    let origin = text("origin")?
        .map(|url| crate::config::OriginUrl::parse(url).map_err(|e| format!("origin: {e}")))
        .transpose()?;
    Ok(Rule {
        index,
        host,
        path,
        query,
        drop_params,
        bypass,
        ttl,
        ttl_by_status,
        grace,
        key_fields,
        response_edits,
        request_edits,
        origin,
    })
}

/// The prefix of a variant field that names a cookie rather than a header (no
/// header name holds `=`).
pub const COOKIE_FIELD: &str = "cookie=";

/// `key_headers` and `key_cookies` as variant fields, sorted as `Vary`'s are.
fn key_fields(table: &toml::Table) -> Result<Vec<String>, String> {
    let names = |field: &str| -> Result<Vec<String>, String> {
        match table.get(field) {
            None => Ok(Vec::new()),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(format!(
                        "{field}: expected strings, got {}",
                        other.type_str()
                    )),
                })
                .collect(),
            Some(other) => Err(format!(
                "{field}: expected an array of names, got {}",
                other.type_str()
            )),
        }
    };
    let mut fields = Vec::new();
    for name in names("key_headers")? {
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("key_headers: {name:?} is not a header name"))?;
        fields.push(parsed.as_str().to_string());
    }
    for name in names("key_cookies")? {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        if !token {
            return Err(format!("key_cookies: {name:?} is not a cookie name"));
        }
        fields.push(format!("{COOKIE_FIELD}{name}"));
    }
    fields.sort();
    fields.dedup();
    Ok(fields)
}

/// A field name a rule may edit; errors start with `field`.
fn editable(field: &str, name: &str) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{field}: {name:?} is not a header name"))?;
    if UNEDITABLE.contains(&parsed.as_str()) {
        return Err(format!(
            "{field}: {name} cannot be edited (it frames the message or says what this cache did)"
        ));
    }
    Ok(parsed)
}

/// The `set` table and `remove` list of one direction.
fn header_edits(table: &toml::Table, set: &str, remove: &str) -> Result<HeaderEdits, String> {
    let mut edits = HeaderEdits::default();
    match table.get(set) {
        None => {}
        Some(toml::Value::Table(fields)) => {
            for (name, value) in fields {
                let name = editable(set, name)?;
                let toml::Value::String(value) = value else {
                    return Err(format!("{set}: {name}: expected a string value"));
                };
                let value = HeaderValue::from_str(value)
                    .map_err(|_| format!("{set}: {name}: {value:?} is not a header value"))?;
                edits.set.push((name, value));
            }
        }
        Some(other) => {
            return Err(format!(
                "{set}: expected a table like {{ \"X-Frame-Options\" = \"DENY\" }}, got {}",
                other.type_str()
            ))
        }
    }
    match table.get(remove) {
        None => {}
        Some(toml::Value::Array(names)) => {
            for name in names {
                let toml::Value::String(name) = name else {
                    return Err(format!("{remove}: expected header names"));
                };
                edits.remove.push(editable(remove, name)?);
            }
        }
        Some(other) => {
            return Err(format!(
                "{remove}: expected a list of header names, got {}",
                other.type_str()
            ))
        }
    }
    Ok(edits)
}

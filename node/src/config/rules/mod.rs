//! `[[rules]]`: what an operator changes per host and path, read from the config
//! file (or `FANZ_RULES` / `--rules` as a TOML inline array), validated when read,
//! and applied by the proxy, first match wins. A rule is chosen by `host` and
//! `path` globs (`*` stands for any run of characters; a missing one matches
//! everything) and may set:
//!
//! - the cache key: `query = "keep" | "sort" | "ignore"` and `drop_params`, globs of
//!   query parameters left out (`["utm_*", "fbclid"]`). The normalised URL is also
//!   what the origin is asked for, so what it answers is what is stored under it;
//! - `bypass = true`: never stored, always passed to the origin;
//! - lifetimes: `ttl` replaces the origin's freshness lifetime, and
//!   `ttl_by_status = { 404 = "30s", "5xx" = "5s" }` sets one per status (an exact
//!   code wins over its class, both over `ttl`), storing statuses this cache would
//!   not store by default (negative caching, as nginx's `proxy_cache_valid`). They
//!   override `no-store`, `no-cache`, `max-age` and missing freshness, never
//!   `private`, `Set-Cookie` or `Authorization` (whose content it is, not how long
//!   it lasts); 206, 304 and 1xx are never stored;
//! - headers: `set_response_headers = { "Access-Control-Allow-Origin" = "*" }` and
//!   `remove_response_headers = ["Set-Cookie"]` edit what clients get (hits and
//!   misses alike; what is stored is the origin's), `set_request_headers` and
//!   `remove_request_headers` what the origin is asked with. Fields that frame the
//!   message or belong to this cache (`Content-Length`, `Transfer-Encoding`,
//!   `Connection`, `Host`, `Age`, `Cache-Status`, ...) cannot be edited;
//! - `origin = "http://10.0.0.5:8080"`: the origin that serves its requests, in place
//!   of the one `origin`/`origin_routes` give the host.
//!
//! Every error names the rule by its index and the field (`rules[2].path: ...`).
//! A rule that can never match, because an earlier one matches every request it
//! would, is an error too. Reading and checking them is `read`; their globs, `glob`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::parse::{one_of, word};

mod glob;
mod read;

pub use glob::Glob;
pub use read::{parse, COOKIE_FIELD};

/// What a rule does with the query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryMode {
    /// As the client sent it (less `drop_params`).
    #[default]
    Keep,
    /// Parameters sorted by name (then value), so their order does not split the cache.
    Sort,
    /// Dropped entirely.
    Ignore,
}

const QUERY_MODES: &[(&str, QueryMode)] = &[
    ("keep", QueryMode::Keep),
    ("sort", QueryMode::Sort),
    ("ignore", QueryMode::Ignore),
];

/// One `[[rules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its position in the file, from 0 (as errors and the status page name it).
    pub index: usize,
    /// Hosts it applies to (lower-case, without port); `None`: every host.
    pub host: Option<Glob>,
    /// Paths it applies to (without the query); `None`: every path.
    pub path: Option<Glob>,
    /// What happens to the query string.
    pub query: QueryMode,
    /// Query parameters left out of the URL.
    pub drop_params: Vec<Glob>,
    /// Never stored.
    pub bypass: bool,
    /// Freshness lifetime replacing the origin's.
    pub ttl: Option<Duration>,
    /// Lifetimes by status: exact codes, then classes (`5` for `5xx`).
    pub ttl_by_status: Vec<(StatusMatch, Duration)>,
    /// How long past its freshness a stored copy is still served when the origin
    /// is unreachable, times out or answers 5xx (Varnish's grace): the copy's
    /// `stale-if-error` window is at least this long.
    pub grace: Option<Duration>,
    /// What besides the URL tells its stored copies apart: request headers
    /// (lowercase) and cookies (`cookie=NAME`), as the variant fields of a
    /// response's `Vary` do. A purge of the URL covers every one of them.
    pub key_fields: Vec<String>,
    /// Header edits of the responses clients get.
    pub response_edits: HeaderEdits,
    /// Header edits of the requests the origin gets.
    pub request_edits: HeaderEdits,
    /// The origin that serves its requests, in place of the host's.
    pub origin: Option<super::OriginUrl>,
}

/// Fields set (replacing any value) and fields removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Set, in order.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Removed.
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Applies the edits: removals first, then the fields set.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// A status or a class of them, in `ttl_by_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// One code (`404`).
    Code(u16),
    /// A class (`5xx`: 5).
    Class(u16),
}

impl StatusMatch {
    fn parse(key: &str) -> Result<StatusMatch, String> {
        let never = |code: u16| code < 200 || code == 206 || code == 304;
        if let Some(class) = key.strip_suffix("xx").and_then(|d| d.parse::<u16>().ok()) {
            if (2..=5).contains(&class) {
                return Ok(StatusMatch::Class(class));
            }
        } else if let Ok(code) = key.parse::<u16>() {
            if (100..=599).contains(&code) && !never(code) {
                return Ok(StatusMatch::Code(code));
            }
            if never(code) && (100..=599).contains(&code) {
                return Err(format!(
                    "{key}: never stored (1xx, 206 and 304 are not responses to keep)"
                ));
            }
        }
        Err(format!(
            "{key:?}: expected a status (404) or a class (2xx to 5xx)"
        ))
    }

    fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(code) => code == status,
            StatusMatch::Class(class) => status / 100 == class,
        }
    }

    fn show(self) -> String {
        match self {
            StatusMatch::Code(code) => code.to_string(),
            StatusMatch::Class(class) => format!("{class}xx"),
        }
    }
}

impl Rule {
    /// Whether it applies to a request for `path` on `host`.
    pub fn applies(&self, host: &str, path: &str) -> bool {
        self.host.as_ref().is_none_or(|g| g.matches(host))
            && self.path.as_ref().is_none_or(|g| g.matches(path))
    }

    /// `path_and_query` with the rule's query handling: the same text when it
    /// changes nothing.
    pub fn normalise(&self, path_and_query: &str) -> String {
        let Some((path, query)) = path_and_query.split_once('?') else {
            return path_and_query.to_string();
        };
        if self.query == QueryMode::Ignore {
            return path.to_string();
        }
        fn name(param: &str) -> &str {
            param.split_once('=').map_or(param, |(n, _)| n)
        }
        let mut params: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| !self.drop_params.iter().any(|g| g.matches(name(p))))
            .collect();
        if self.query == QueryMode::Sort {
            params.sort_by(|a, b| (name(a), *a).cmp(&(name(b), *b)));
        }
        if params.is_empty() {
            return path.to_string();
        }
        format!("{path}?{}", params.join("&"))
    }

    /// The lifetime it sets for a response with `status`: an exact code's, else its
    /// class's, else `ttl`.
    pub fn ttl_for(&self, status: u16) -> Option<Duration> {
        let of = |exact: bool| {
            self.ttl_by_status
                .iter()
                .find(|(m, _)| matches!(m, StatusMatch::Code(_)) == exact && m.matches(status))
                .map(|(_, ttl)| *ttl)
        };
        of(true).or_else(|| of(false)).or(self.ttl)
    }

    /// Whether its query handling changes anything.
    pub fn rewrites_query(&self) -> bool {
        self.query != QueryMode::Keep || !self.drop_params.is_empty()
    }

    /// The rule as an inline TOML table, as `print-config` shows it.
    fn show(&self) -> String {
        let mut out = String::from("{ ");
        let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
        if let Some(host) = &self.host {
            let _ = write!(out, "host = {}, ", quoted(host.as_str()));
        }
        if let Some(path) = &self.path {
            let _ = write!(out, "path = {}, ", quoted(path.as_str()));
        }
        let _ = write!(out, "query = {}", quoted(&word(QUERY_MODES, &self.query)));
        if !self.drop_params.is_empty() {
            let list: Vec<String> = self
                .drop_params
                .iter()
                .map(|g| quoted(g.as_str()))
                .collect();
            let _ = write!(out, ", drop_params = [{}]", list.join(", "));
        }
        if self.bypass {
            out.push_str(", bypass = true");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(out, ", ttl = \"{}ms\"", ttl.as_millis());
        }
        if let Some(grace) = self.grace {
            let _ = write!(out, ", grace = \"{}ms\"", grace.as_millis());
        }
        let (headers, cookies): (Vec<&String>, Vec<&String>) = self
            .key_fields
            .iter()
            .partition(|f| !f.starts_with(COOKIE_FIELD));
        if !headers.is_empty() {
            let list: Vec<String> = headers.iter().map(|h| quoted(h)).collect();
            let _ = write!(out, ", key_headers = [{}]", list.join(", "));
        }
        if !cookies.is_empty() {
            let list: Vec<String> = cookies
                .iter()
                .map(|c| quoted(&c[COOKIE_FIELD.len()..]))
                .collect();
            let _ = write!(out, ", key_cookies = [{}]", list.join(", "));
        }
        if !self.ttl_by_status.is_empty() {
            let list: Vec<String> = self
                .ttl_by_status
                .iter()
                .map(|(m, ttl)| format!("\"{}\" = \"{}ms\"", m.show(), ttl.as_millis()))
                .collect();
            let _ = write!(out, ", ttl_by_status = {{ {} }}", list.join(", "));
        }
        for (edits, set, remove) in [
            (
                &self.response_edits,
                "set_response_headers",
                "remove_response_headers",
            ),
            (
                &self.request_edits,
                "set_request_headers",
                "remove_request_headers",
            ),
        ] {
            if !edits.set.is_empty() {
                let list: Vec<String> = edits
                    .set
                    .iter()
                    .map(|(n, v)| {
                        format!(
                            "{} = {}",
                            quoted(n.as_str()),
                            quoted(v.to_str().unwrap_or_default())
                        )
                    })
                    .collect();
                let _ = write!(out, ", {set} = {{ {} }}", list.join(", "));
            }
            if !edits.remove.is_empty() {
                let list: Vec<String> = edits.remove.iter().map(|n| quoted(n.as_str())).collect();
                let _ = write!(out, ", {remove} = [{}]", list.join(", "));
            }
        }
        if let Some(origin) = &self.origin {
            let _ = write!(out, ", origin = {}", quoted(&origin.to_string()));
        }
        out.push_str(" }");
        out
    }
}

/// Every rule, in file order, indexed by host: a request is checked only against
/// the rules naming its host exactly and those whose host is a glob or unset, in
/// file order, so a thousand rules for other hosts cost one hash lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    list: Vec<std::sync::Arc<Rule>>,
    /// Requests each rule matched since these rules were read.
    hits: Hits,
    /// Positions in `list` of the rules naming each exact host, ascending.
    by_host: std::collections::HashMap<String, Vec<usize>>,
    /// Positions of the rules for any host (a glob, or no host), ascending.
    any_host: Vec<usize>,
}

impl Rules {
    fn new(list: Vec<std::sync::Arc<Rule>>) -> Self {
        let mut by_host: std::collections::HashMap<String, Vec<usize>> = Default::default();
        let mut any_host = Vec::new();
        for (i, rule) in list.iter().enumerate() {
            match &rule.host {
                Some(glob) if !glob.as_str().contains('*') => by_host
                    .entry(glob.as_str().to_string())
                    .or_default()
                    .push(i),
                _ => any_host.push(i),
            }
        }
        Self {
            hits: Hits((0..list.len()).map(|_| AtomicU64::new(0)).collect()),
            list,
            by_host,
            any_host,
        }
    }

    /// Counts a client request rule `index` matched (the status page shows them).
    pub fn count_match(&self, index: usize) {
        if let Some(hits) = self.hits.0.get(index) {
            hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Each rule with how many client requests it matched since it was read.
    pub fn report(&self) -> Vec<RuleReport> {
        self.list
            .iter()
            .zip(self.hits.0.iter())
            .map(|(rule, hits)| RuleReport {
                index: rule.index,
                host: rule.host.as_ref().map(|g| g.as_str().to_string()),
                path: rule.path.as_ref().map(|g| g.as_str().to_string()),
                hits: hits.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The first rule (in file order) that applies to a request for `path` on `host`.
    pub fn matching(&self, host: &str, path: &str) -> Option<&std::sync::Arc<Rule>> {
        if self.list.is_empty() {
            return None;
        }
        let exact = self.by_host.get(host).map_or(&[][..], Vec::as_slice);
        let (mut a, mut b) = (exact.iter().peekable(), self.any_host.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => return None,
            };
            let rule = &self.list[*next?];
            if rule.applies(host, path) {
                return Some(rule);
            }
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Every rule, in order.
    pub fn iter(&self) -> impl Iterator<Item = &std::sync::Arc<Rule>> {
        self.list.iter()
    }
}

/// Per-rule match counts, shared by clones; not part of what the rules are, so
/// two sets of rules compare equal whatever they counted.
#[derive(Debug, Clone, Default)]
struct Hits(std::sync::Arc<[AtomicU64]>);

impl PartialEq for Hits {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Hits {}

/// One rule as the status page lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleReport {
    /// Its place in the file.
    pub index: usize,
    /// Its host glob, if it has one.
    pub host: Option<String>,
    /// Its path glob, if it has one.
    pub path: Option<String>,
    /// Client requests it matched since the rules were read.
    pub hits: u64,
}

/// The rules as an inline TOML array, as `print-config` shows them (and reads back).
pub fn show(rules: &Rules) -> String {
    let items: Vec<String> = rules.list.iter().map(|r| r.show()).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(s: &str) -> Glob {
        Glob::parse(s, "glob").unwrap()
    }

    #[test]
    fn globs_match_runs_of_anything() {
        assert!(glob("utm_*").matches("utm_source"));
        assert!(glob("utm_*").matches("utm_"));
        assert!(!glob("utm_*").matches("xutm_source"));
        assert!(glob("*.example.com").matches("a.example.com"));
        assert!(!glob("*.example.com").matches("example.com"));
        assert!(glob("/img/*.png").matches("/img/a/b.png"));
        assert!(!glob("/img/*.png").matches("/img/a.jpg"));
        assert!(glob("fbclid").matches("fbclid"));
        assert!(!glob("fbclid").matches("fbclid2"));
        assert!(glob("*").matches(""));
        assert!(glob("a*b*c").matches("abc") && glob("a*b*c").matches("a-b-b-c"));
        assert!(!glob("a*b*c").matches("acb"));
    }

    #[test]
    fn queries_are_sorted_stripped_or_dropped() {
        let rule = |query, drop: &[&str]| Rule {
            index: 0,
            host: None,
            path: None,
            query,
            drop_params: drop.iter().map(|g| glob(g)).collect(),
            bypass: false,
            ttl: None,
            ttl_by_status: Vec::new(),
            grace: None,
            key_fields: Vec::new(),
            response_edits: HeaderEdits::default(),
            request_edits: HeaderEdits::default(),
            origin: None,
        };
        let strip = rule(QueryMode::Keep, &["utm_*", "fbclid"]);
        assert_eq!(
            strip.normalise("/p?b=2&utm_source=x&a=1&fbclid=z"),
            "/p?b=2&a=1"
        );
        assert_eq!(strip.normalise("/p?utm_medium=y"), "/p");
        assert_eq!(strip.normalise("/p"), "/p");
        let sort = rule(QueryMode::Sort, &["utm_*"]);
        assert_eq!(sort.normalise("/p?b=2&a=1&utm_x=1&a=0"), "/p?a=0&a=1&b=2");
        assert_eq!(rule(QueryMode::Ignore, &[]).normalise("/p?a=1"), "/p");
    }

    #[test]
    fn rules_read_back_what_they_show_and_the_first_match_wins() {
        let rules = parse(
            r#"[{ host = "Shop.example", path = "/img/*", query = "ignore" },
                { host = "shop.example", drop_params = ["utm_*", "fbclid"], query = "sort" },
                { path = "/api/*", bypass = true }]"#,
        )
        .unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules.matching("shop.example", "/img/a").unwrap().index, 0);
        assert_eq!(rules.matching("shop.example", "/x").unwrap().index, 1);
        assert_eq!(rules.matching("other", "/api/v1").unwrap().index, 2);
        assert!(rules.matching("other", "/x").is_none());
        assert_eq!(parse(&show(&rules)).unwrap(), rules);
        assert_eq!(parse("[]").unwrap(), Rules::default());
    }

    #[test]
    fn an_exact_status_wins_over_its_class_and_both_over_ttl() {
        let rules = parse(
            r#"[{ ttl = "1h", ttl_by_status = { 404 = "30s", "4xx" = "10s", "5xx" = "5s" } }]"#,
        )
        .unwrap();
        let rule = rules.matching("h", "/").unwrap();
        let secs = |status| rule.ttl_for(status).map(|d| d.as_secs());
        assert_eq!(secs(404), Some(30));
        assert_eq!(secs(410), Some(10));
        assert_eq!(secs(503), Some(5));
        assert_eq!(secs(200), Some(3600));
        assert_eq!(parse(&show(&rules)).unwrap(), rules);
        let none = parse(r#"[{ path = "/x" }]"#).unwrap();
        assert_eq!(none.matching("h", "/x").unwrap().ttl_for(200), None);
    }

    #[test]
    fn key_fields_and_grace_read_back() {
        let rules = parse(
            r#"[{ key_headers = ["X-Device", "accept-language"], key_cookies = ["lang"], grace = "1h" }]"#,
        )
        .unwrap();
        let rule = rules.matching("h", "/").unwrap();
        assert_eq!(
            rule.key_fields,
            ["accept-language", "cookie=lang", "x-device"]
        );
        assert_eq!(rule.grace, Some(Duration::from_secs(3600)));
        assert_eq!(parse(&show(&rules)).unwrap(), rules);
    }

    #[test]
    fn header_edits_remove_then_set_and_read_back() {
        let rules = parse(
            r#"[{ set_response_headers = { "Access-Control-Allow-Origin" = "*", "X-Frame-Options" = "DENY" },
                  remove_response_headers = ["Set-Cookie", "X-Frame-Options"],
                  set_request_headers = { "X-Edge" = "fanz" }, remove_request_headers = ["Cookie"] }]"#,
        )
        .unwrap();
        let rule = rules.matching("h", "/").unwrap();
        let mut h = HeaderMap::new();
        h.insert("set-cookie", "a=1".parse().unwrap());
        h.insert("x-frame-options", "SAMEORIGIN".parse().unwrap());
        rule.response_edits.apply(&mut h);
        assert!(h.get("set-cookie").is_none());
        assert_eq!(h["x-frame-options"], "DENY", "set after remove");
        assert_eq!(h["access-control-allow-origin"], "*");
        assert_eq!(parse(&show(&rules)).unwrap(), rules);
    }

    #[test]
    fn the_host_index_keeps_file_order_between_exact_and_glob_hosts() {
        let rules = parse(
            r#"[{ host = "*.example", path = "/a/*" },
                { host = "x.example", path = "/b/*" },
                { path = "/c/*" },
                { host = "x.example" }]"#,
        )
        .unwrap();
        let first = |host: &str, path: &str| rules.matching(host, path).map(|r| r.index);
        assert_eq!(first("x.example", "/a/1"), Some(0));
        assert_eq!(first("x.example", "/b/1"), Some(1));
        assert_eq!(first("x.example", "/c/1"), Some(2));
        assert_eq!(first("x.example", "/d"), Some(3));
        assert_eq!(first("y.example", "/b/1"), None);
        assert_eq!(first("y.example", "/a/1"), Some(0));
    }

    #[test]
    fn a_bad_rule_is_named_by_its_index_and_field() {
        for (text, expected) in [
            (r#"[{ hots = "a" }]"#, "rules[0].hots: unknown field"),
            (r#"[{ key_headers = ["a b"] }]"#, "rules[0].key_headers: "),
            (r#"[{ key_cookies = ["a;b"] }]"#, "rules[0].key_cookies: "),
            (
                r#"[{ key_cookies = "lang" }]"#,
                "rules[0].key_cookies: expected an array",
            ),
            (r#"[{ grace = "soon" }]"#, "rules[0].grace: "),
            (r#"[{ host = "a" }, { path = "img/*" }]"#, "rules[1].path: "),
            (r#"[{ path = "/a b" }]"#, "rules[0].path: "),
            (r#"[{ query = "shuffle" }]"#, "rules[0].query: "),
            (r#"[{ drop_params = "utm_*" }]"#, "rules[0].drop_params: "),
            (r#"[{ drop_params = [""] }]"#, "rules[0].drop_params: "),
            (r#"[{ bypass = "yes" }]"#, "rules[0].bypass: "),
            (r#"[{ host = 3 }]"#, "rules[0].host: "),
            (r#"[{ path = "/**" }]"#, "rules[0].path: "),
            (r#"[{ ttl = "soon" }]"#, "rules[0].ttl: "),
            (
                r#"[{ ttl_by_status = { 404 = "a while" } }]"#,
                "rules[0].ttl_by_status: 404",
            ),
            (
                r#"[{ ttl_by_status = { 304 = "1m" } }]"#,
                "rules[0].ttl_by_status: 304",
            ),
            (
                r#"[{ ttl_by_status = { "6xx" = "1m" } }]"#,
                "rules[0].ttl_by_status: ",
            ),
            (r#"[{ ttl_by_status = "1m" }]"#, "rules[0].ttl_by_status: "),
            (
                r#"[{ remove_response_headers = ["Content-Length"] }]"#,
                "rules[0].remove_response_headers: Content-Length cannot be edited",
            ),
            (
                r#"[{ set_request_headers = { Host = "x" } }]"#,
                "rules[0].set_request_headers: Host cannot be edited",
            ),
            (
                r#"[{ set_response_headers = { "bad name" = "x" } }]"#,
                "rules[0].set_response_headers: ",
            ),
            (
                r#"[{ set_response_headers = { "X-A" = "bell\u0007" } }]"#,
                "rules[0].set_response_headers: ",
            ),
            (
                r#"[{ remove_request_headers = "Cookie" }]"#,
                "rules[0].remove_request_headers: ",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(expected), "{text}: {err}");
        }
        assert!(parse("not toml").is_err());
    }

    #[test]
    fn a_rule_an_earlier_one_always_wins_over_is_refused() {
        for text in [
            r#"[{ bypass = true }, { path = "/img/*" }]"#,
            r#"[{ path = "/img/*" }, { path = "/img/a/*" }]"#,
            r#"[{ host = "*" }, { host = "a.example", path = "/x" }]"#,
            r#"[{ host = "a", path = "/x" }, { host = "a", path = "/x" }]"#,
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains("can never match"), "{text}: {err}");
        }
        // Narrower first is fine.
        parse(r#"[{ path = "/img/a/*" }, { path = "/img/*" }, { bypass = true }]"#).unwrap();
        parse(r#"[{ host = "a", path = "/x" }, { host = "b", path = "/x" }]"#).unwrap();
    }
}

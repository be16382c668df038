//! The globs rules match hosts, paths and query parameters with: `*` stands for
//! any run of characters, everything else for itself.

/// A glob: `*` matches any run of characters, everything else itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// `text` as a glob; `what` names it in errors.
    pub(super) fn parse(text: &str, what: &str) -> Result<Glob, String> {
        if text.is_empty() {
            return Err(format!("{what} is empty"));
        }
        if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{what} {text:?} holds {c:?}: a glob has no spaces"));
        }
        if text.contains("**") {
            return Err(format!("{what} {text:?}: `**` means nothing more than `*`"));
        }
        Ok(Glob(text.to_string()))
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = text.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }

    /// Whether every text `other` matches, this matches too (checked only for the
    /// forms where it is simple: `*`, the same glob, and `prefix*` against anything
    /// starting with that prefix). `false` when unsure.
    pub(super) fn covers(&self, other: &Glob) -> bool {
        if self.0 == "*" || self == other {
            return true;
        }
        match self.0.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => {
                let literal = other.0.split('*').next().unwrap_or_default();
                literal.starts_with(prefix)
            }
            _ => false,
        }
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

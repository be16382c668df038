//! Parsers for the human units settings are written in: sizes (`256MiB`) and
//! durations (`10s`, `500ms`, `7d`).

use std::time::Duration;

/// Parses a byte size: a whole number with an optional unit (`B`, `KiB`, `MiB`,
/// `GiB`, `TiB`, or `K`/`M`/`G`/`T` meaning the same binary multiples, or `KB`/`MB`/
/// `GB`/`TB` for powers of 1000). Case-insensitive; spaces between number and unit are allowed.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text, "a size like 256MiB")?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("unknown size unit {other:?} in {:?}", text.trim())),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {:?} is too large", text.trim()))
}

/// Parses a duration: a whole number with a unit (`ms`, `s`, `m`, `h`, `d`); a bare
/// number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text, "a duration like 10s")?;
    let millis: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {:?}",
                text.trim()
            ))
        }
    };
    number
        .checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {:?} is too large", text.trim()))
}

/// Splits `text` into its leading whole number and the (trimmed) unit after it.
fn split_number<'a>(text: &'a str, expected: &str) -> Result<(u64, &'a str), String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number = number
        .parse()
        .map_err(|_| format!("expected {expected}, got {text:?}"))?;
    Ok((number, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("8k"), Ok(8192));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }
}

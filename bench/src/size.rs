//! Byte sizes on the command line: `4GiB`, `1MiB`, `64KiB`, `512`, and the decimal
//! `4GB`/`1MB`/`64KB` (powers of 1000), case-insensitive. Binary and decimal units are never
//! mixed up: `GiB` is 2^30 bytes, `GB` is 10^9 bytes, and a bare `G` is read as `GiB` (as fio
//! and dd read it).

/// Parses a byte size such as `4GiB`, `1MiB`, `1048576` or `4G`.
pub fn parse_size_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!("`{text}` does not start with a number of bytes"));
    }
    let count: u64 = digits
        .parse()
        .map_err(|error| format!("`{text}`: {error}"))?;
    let multiplier = unit_multiplier(unit.trim()).ok_or_else(|| {
        format!("`{text}`: unknown unit `{unit}` (use B, KiB, MiB, GiB, KB, MB, GB)")
    })?;
    count
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` overflows 64 bits"))
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    Some(multiplier)
}

#[cfg(test)]
mod tests {
    use super::parse_size_bytes;

    #[test]
    fn binary_units_are_powers_of_two() {
        assert_eq!(parse_size_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size_bytes("64kib"), Ok(64 << 10));
        assert_eq!(parse_size_bytes("4G"), Ok(4 << 30));
    }

    #[test]
    fn decimal_units_are_powers_of_ten_and_bare_numbers_are_bytes() {
        assert_eq!(parse_size_bytes("4GB"), Ok(4_000_000_000));
        assert_eq!(parse_size_bytes("1MB"), Ok(1_000_000));
        assert_eq!(parse_size_bytes("1048576"), Ok(1_048_576));
        assert_eq!(parse_size_bytes(" 512 B "), Ok(512));
    }

    #[test]
    fn rejects_garbage_units_and_overflow() {
        assert!(parse_size_bytes("GiB").is_err());
        assert!(parse_size_bytes("4 parsecs").is_err());
        assert!(parse_size_bytes("-1MiB").is_err());
        assert!(parse_size_bytes("99999999999TiB").is_err());
        assert!(parse_size_bytes("").is_err());
    }
}

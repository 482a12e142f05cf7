//! Input values as error messages quote them. A manifest can hold a
//! megabyte in one field, and a message that repeats it whole floods the
//! terminal and the log while saying nothing more; so every message that
//! quotes what it was given quotes it through here, cut to a readable
//! length and marked with the whole value's size.

use std::fmt;

/// How many characters of a value a message repeats.
pub const QUOTE_LIMIT: usize = 200;

/// `value` in backticks, as messages quote input: whole when it is at most
/// [`QUOTE_LIMIT`] characters, else its first [`QUOTE_LIMIT`] characters,
/// an ellipsis, and the whole value's length: `` `aaaa…` (1048576 bytes) ``.
pub fn quoted(value: &str) -> Quoted<'_> {
    Quoted { value }
}

/// A message that may hold input, from a parser Lanyard does not control
/// (serde's `invalid type: string "..."`, the YAML reader's): whole when it
/// is at most twice [`QUOTE_LIMIT`] characters, else its first and last
/// [`QUOTE_LIMIT`] characters around an ellipsis, so both the start and
/// the explanation such messages end with survive.
pub fn excerpt(text: &str) -> Excerpt<'_> {
    Excerpt(text)
}

/// A value as a message quotes it; see [`quoted`].
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a> {
    value: &'a str,
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value.char_indices().nth(QUOTE_LIMIT) {
            None => write!(f, "`{}`", self.value),
            Some((end, _)) => write!(
                f,
                "`{}\u{2026}` ({} bytes)",
                &self.value[..end],
                self.value.len()
            ),
        }
    }
}

/// A message cut to its ends; see [`excerpt`].
#[derive(Debug, Clone, Copy)]
pub struct Excerpt<'a>(&'a str);

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if text.char_indices().nth(2 * QUOTE_LIMIT).is_none() {
            return f.write_str(text);
        }
        let head_end = text
            .char_indices()
            .nth(QUOTE_LIMIT)
            .map_or(text.len(), |(i, _)| i);
        let tail_start = text
            .char_indices()
            .rev()
            .nth(QUOTE_LIMIT - 1)
            .map_or(0, |(i, _)| i);
        write!(
            f,
            "{}\u{2026}{} (cut from {} bytes)",
            &text[..head_end],
            &text[tail_start..],
            text.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_values_whole_or_cut_with_their_length() {
        let long = "a".repeat(1 << 20);
        let at_limit = "b".repeat(QUOTE_LIMIT);
        // 199 ASCII characters, then two-byte characters: the cut lands
        // after the first of them, on a character boundary.
        let wide = format!("{}{}", "c".repeat(QUOTE_LIMIT - 1), "é".repeat(10));
        let cases: [(&str, String, String); 6] = [
            (
                "quotes a short value whole",
                quoted("web").to_string(),
                "`web`".into(),
            ),
            (
                "quotes a value of exactly the limit whole",
                quoted(&at_limit).to_string(),
                format!("`{at_limit}`"),
            ),
            (
                "cuts a megabyte to its first 200 characters and says how long it was",
                quoted(&long).to_string(),
                format!("`{}…` (1048576 bytes)", "a".repeat(QUOTE_LIMIT)),
            ),
            (
                "cuts on a character boundary and counts bytes, not characters",
                quoted(&wide).to_string(),
                format!("`{}é…` ({} bytes)", "c".repeat(QUOTE_LIMIT - 1), wide.len()),
            ),
            (
                "keeps a message of up to twice the limit whole",
                excerpt(&"d".repeat(2 * QUOTE_LIMIT)).to_string(),
                "d".repeat(2 * QUOTE_LIMIT),
            ),
            (
                "keeps both ends of a long message, where serde puts the value and the reason",
                excerpt(&format!("invalid type: string \"{long}\", expected i32")).to_string(),
                format!(
                    "invalid type: string \"{}…{}\", expected i32 (cut from {} bytes)",
                    "a".repeat(QUOTE_LIMIT - 22),
                    "a".repeat(QUOTE_LIMIT - 15),
                    long.len() + 37
                ),
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}");
        }
    }
}

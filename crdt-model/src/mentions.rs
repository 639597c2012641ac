//! `@name` mentions in Markdown text.

/// The names mentioned in `text` with `@name`, in order, without duplicates. A mention starts
/// at the beginning or after a non-word character and runs over letters, digits, `_`, `-`
/// and `.` (a trailing `.` is punctuation). Mentions inside inline code spans are ignored.
pub fn parse(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut in_code = false;
    let mut prev: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '`' {
            in_code = !in_code;
        } else if c == '@' && !in_code && prev.is_none_or(|p| !is_word(p)) {
            let rest = &text[i + 1..];
            let end = rest
                .char_indices()
                .find(|&(_, ch)| !(is_word(ch) || ch == '-' || ch == '.'))
                .map_or(rest.len(), |(j, _)| j);
            let name = rest[..end].trim_end_matches('.');
            if !name.is_empty() && !out.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                out.push(name.to_owned());
            }
            for _ in 0..rest[..end].chars().count() {
                chars.next();
            }
        }
        prev = Some(c);
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn finds_mentions() {
        assert_eq!(parse("hi @alice and @bob."), ["alice", "bob"]);
        assert_eq!(parse("@Alice @alice"), ["Alice"]);
        assert_eq!(parse("mail me at a@b.c"), Vec::<String>::new());
        assert_eq!(parse("`@not` but @yes"), ["yes"]);
        assert_eq!(parse("@zoë-k!"), ["zoë-k"]);
        assert_eq!(parse("@"), Vec::<String>::new());
    }
}

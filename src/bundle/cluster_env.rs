//! cluster.env as bash reads it.
//!
//! `istio-start.sh` sources the file with `set -a` (tools/packaging/common/istio-start.sh),
//! so what counts is what bash assigns, not what a naive `KEY=VALUE` split sees.
//! We accept the subset of shell that istioctl and people editing the file write:
//! assignments (optionally after `export`), single quotes (Istio writes embedded `'`
//! as `'"'"'`), double quotes with their backslash escapes, backslash escapes,
//! comments and blank lines. Anything bash would expand or execute (`$`, backticks,
//! `;`, a second word that is a command, ...) is refused with the line number rather
//! than guessed at, because the agent would see something else than we validated.

use std::collections::BTreeMap;
use std::fmt;

/// Variables in file order; a later assignment wins, as in bash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterEnv {
    pub entries: Vec<(String, String)>,
    /// 1-based line of each entry of `entries` (same index).
    pub lines: Vec<usize>,
}

/// Why cluster.env is not what bash would read as plain assignments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    /// 1-based line where the problem is.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for EnvError {}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos + n).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn err(&self, line: usize, message: impl Into<String>) -> EnvError {
        EnvError {
            line,
            message: message.into(),
        }
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
    }

    fn skip_comment(&mut self) {
        while !matches!(self.peek(), None | Some('\n')) {
            self.pos += 1;
        }
    }

    /// A name as bash defines it: `[A-Za-z_][A-Za-z0-9_]*`.
    fn name(&mut self) -> Option<String> {
        let start = self.pos;
        match self.peek() {
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {}
            _ => return None,
        }
        while matches!(self.peek(), Some(c) if c == '_' || c.is_ascii_alphanumeric()) {
            self.pos += 1;
        }
        Some(self.chars[start..self.pos].iter().collect())
    }

    /// True at a character that ends a word.
    fn at_word_end(&self) -> bool {
        matches!(self.peek(), None | Some(' ' | '\t' | '\n'))
    }

    /// The value word after `=`, with quotes removed as bash does.
    fn value(&mut self) -> Result<String, EnvError> {
        let mut out = String::new();
        loop {
            let line = self.line;
            match self.peek() {
                None | Some(' ' | '\t' | '\n') => return Ok(out),
                Some('\'') => {
                    self.bump();
                    loop {
                        match self.bump() {
                            None => {
                                return Err(self.err(line, "single quote is never closed"));
                            }
                            Some('\'') => break,
                            Some(c) => out.push(c),
                        }
                    }
                }
                Some('"') => {
                    self.bump();
                    loop {
                        match self.bump() {
                            None => {
                                return Err(self.err(line, "double quote is never closed"));
                            }
                            Some('"') => break,
                            Some('\\') => match self.peek() {
                                // Inside double quotes a backslash only escapes these.
                                Some(c @ ('$' | '`' | '"' | '\\')) => {
                                    self.bump();
                                    out.push(c);
                                }
                                Some('\n') => {
                                    self.bump();
                                }
                                _ => out.push('\\'),
                            },
                            Some('$' | '`') => {
                                return Err(self.err(
                                    self.line,
                                    "`$` or backquote inside double quotes: bash would expand it; \
                                     use single quotes for a literal value",
                                ));
                            }
                            Some(c) => out.push(c),
                        }
                    }
                }
                Some('\\') => {
                    self.bump();
                    match self.bump() {
                        None => return Err(self.err(line, "backslash at the end of the file")),
                        // Line continuation: both characters disappear.
                        Some('\n') => {}
                        Some(c) => out.push(c),
                    }
                }
                Some('\r') => {
                    return Err(self.err(
                        line,
                        "carriage return (Windows line ending): bash would keep it in the value",
                    ));
                }
                Some('~') if out.is_empty() => {
                    return Err(self.err(line, "`~` at the start of a value: bash would expand it"));
                }
                Some(c @ ('$' | '`' | ';' | '&' | '|' | '<' | '>' | '(' | ')')) => {
                    return Err(self.err(
                        line,
                        format!(
                            "unquoted `{c}`: bash would treat it as shell syntax; \
                             quote the value with single quotes"
                        ),
                    ));
                }
                Some(c) => {
                    self.bump();
                    out.push(c);
                }
            }
        }
    }
}

impl ClusterEnv {
    /// Parse cluster.env bytes as bash would assign them.
    pub fn parse(bytes: &[u8]) -> Result<ClusterEnv, EnvError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            EnvError {
                line,
                message: "not UTF-8 text".into(),
            }
        })?;
        if let Some(pos) = text.find('\0') {
            return Err(EnvError {
                line: text[..pos].matches('\n').count() + 1,
                message: "NUL byte: not a text file".into(),
            });
        }
        let mut lx = Lexer {
            chars: text.chars().collect(),
            pos: 0,
            line: 1,
        };
        let mut env = ClusterEnv::default();
        loop {
            lx.skip_blanks();
            match lx.peek() {
                None => break,
                Some('\n') => {
                    lx.bump();
                    continue;
                }
                Some('\r') if lx.peek_at(1) == Some('\n') || lx.peek_at(1).is_none() => {
                    return Err(lx.err(
                        lx.line,
                        "carriage return (Windows line ending): bash would keep it in the value",
                    ));
                }
                Some('#') => {
                    lx.skip_comment();
                    continue;
                }
                _ => {}
            }
            // One command line: [export] NAME=value [NAME=value]... [# comment]
            let line = lx.line;
            let mut exported = false;
            let mut words = 0;
            loop {
                lx.skip_blanks();
                if matches!(lx.peek(), None | Some('\n')) {
                    break;
                }
                if lx.peek() == Some('#') {
                    lx.skip_comment();
                    break;
                }
                let start = lx.pos;
                let Some(name) = lx.name() else {
                    return Err(lx.err(
                        lx.line,
                        "expected NAME=value (a name is letters, digits and `_`, not starting \
                         with a digit)",
                    ));
                };
                if words == 0 && name == "export" && !exported && lx.at_word_end() {
                    exported = true;
                    continue;
                }
                match lx.peek() {
                    Some('=') => {
                        lx.bump();
                        let vline = lx.line;
                        let value = lx.value()?;
                        env.entries.push((name, value));
                        env.lines.push(vline);
                        words += 1;
                    }
                    // `export NAME` only marks an existing variable for export.
                    _ if exported && lx.at_word_end() => words += 1,
                    Some('+') if lx.peek_at(1) == Some('=') => {
                        return Err(lx.err(line, format!("`{name}+=` appends: write NAME=value")));
                    }
                    _ => {
                        let word: String = lx.chars[start..]
                            .iter()
                            .take_while(|c| !matches!(c, ' ' | '\t' | '\n'))
                            .collect();
                        return Err(lx.err(
                            line,
                            format!(
                                "`{word}` is not an assignment: bash would run it as a command"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(env)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// 1-based line of the assignment that wins for `key`.
    pub fn line(&self, key: &str) -> Option<usize> {
        self.entries
            .iter()
            .zip(&self.lines)
            .rev()
            .find(|((k, _), _)| k == key)
            .map(|(_, l)| *l)
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.entries.iter().cloned().collect()
    }

    /// The file as istioctl writes it: `KEY=<quoted value>` lines sorted,
    /// ending with a newline (istioctl/pkg/workload/workload.go `mapToString`).
    pub fn render(&self) -> String {
        let mut lines: Vec<String> = self
            .to_map()
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        lines.sort();
        let mut out = lines.join("\n");
        out.push('\n');
        out
    }
}

/// Quote a value like Istio's `shellescape.Quote` (pkg/util/shellescape/quote.go):
/// `''` when empty, the bare value when every character is in its "safe" class,
/// else single quotes with each `'` written as `'"'"'`.
///
/// Istio's class is the Go raw string `[^\\w@%+=:,./-]`, which (a quirk) means
/// "backslash, `w`, `@%+=:,./-`" are safe, so nearly every value is quoted. We
/// keep that, except that a backslash is never left bare: bash would eat it and
/// the value would not read back as written.
pub fn quote(value: &str) -> String {
    if value.is_empty() {
        return "''".to_string();
    }
    let safe = |c: char| matches!(c, 'w' | '@' | '%' | '+' | '=' | ':' | ',' | '.' | '/' | '-');
    if value.chars().all(safe) {
        return value.to_string();
    }
    format!("'{}'", value.replace('\'', r#"'"'"'"#))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kv(text: &str) -> Vec<(String, String)> {
        ClusterEnv::parse(text.as_bytes()).unwrap().entries
    }

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn istioctl_golden_reads() {
        let text = "CANONICAL_REVISION='latest'\nISTIO_INBOUND_PORTS='*'\n\
                    ISTIO_METAJSON_LABELS='{\"app\":\"foo\"}'\nISTIO_META_MESH_ID=''\n";
        let env = ClusterEnv::parse(text.as_bytes()).unwrap();
        assert_eq!(env.get("CANONICAL_REVISION"), Some("latest"));
        assert_eq!(env.get("ISTIO_INBOUND_PORTS"), Some("*"));
        assert_eq!(env.get("ISTIO_METAJSON_LABELS"), Some("{\"app\":\"foo\"}"));
        assert_eq!(env.get("ISTIO_META_MESH_ID"), Some(""));
        assert_eq!(env.line("ISTIO_META_MESH_ID"), Some(4));
    }

    #[test]
    fn shell_forms() {
        assert_eq!(kv("A='it'\"'\"'s'\n"), vec![pair("A", "it's")]);
        assert_eq!(
            kv("export A=1 B=\"x y\"\n"),
            vec![pair("A", "1"), pair("B", "x y")]
        );
        assert_eq!(kv("  # c\n\nA=a#b # comment\n"), vec![pair("A", "a#b")]);
        assert_eq!(kv("A=\"q\\\"\\$\\\\\\n\"\n"), vec![pair("A", "q\"$\\\\n")]);
        assert_eq!(kv("A=a\\ b\n"), vec![pair("A", "a b")]);
        assert_eq!(kv("A='multi\nline'\n"), vec![pair("A", "multi\nline")]);
        assert_eq!(kv("A=1\\\n2"), vec![pair("A", "12")]);
        assert_eq!(kv("export A\nA=\n"), vec![pair("A", "")]);
        assert_eq!(kv("A=*"), vec![pair("A", "*")]);
        let env = ClusterEnv::parse(b"A=1\nA=2\n").unwrap();
        assert_eq!(env.get("A"), Some("2"));
        assert_eq!(env.to_map().len(), 1);
    }

    #[test]
    fn refused_with_line() {
        for (text, line) in [
            ("A=1\nB='x\n", 2),
            ("A=$HOME\n", 1),
            ("A=\"$HOME\"\n", 1),
            ("\nA=1 echo\n", 2),
            ("1A=1\n", 1),
            ("A=1\r\n", 1),
            ("A=`id`\n", 1),
            ("A=1;B=2\n", 1),
            ("A+=1\n", 1),
            ("just words\n", 1),
            ("A=~/x\n", 1),
            ("A=\"x\n", 1),
        ] {
            let err = ClusterEnv::parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
        }
        let err = ClusterEnv::parse(b"A=1\nB=\xff\n").unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (2, "not UTF-8 text"));
    }

    #[test]
    fn error_names_the_line_and_the_reason() {
        let err = |text: &str| ClusterEnv::parse(text.as_bytes()).unwrap_err();
        assert_eq!(
            err("A=1\nB=2 ls\n").to_string(),
            format!("line 2: {}", err("B=2 ls").message)
        );
        assert!(
            err("A=1 ls -l\n")
                .message
                .starts_with("`ls` is not an assignment")
        );
        assert!(err("A+=1\n").message.contains("appends"));
        // A CR alone on a line, or last in the file, is a Windows line end.
        for text in ["A=1\n\r\n", "A=1\n\r"] {
            let e = err(text);
            assert_eq!(e.line, 2, "{text:?}");
            assert!(e.message.contains("carriage return"), "{text:?}: {e}");
        }
        let e = err("A=1\nB=2\0\n");
        assert_eq!(
            (e.line, e.message.as_str()),
            (2, "NUL byte: not a text file")
        );
        let e = err("\n\nA=\"x\ny\n");
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn only_a_carriage_return_ending_a_line_is_a_windows_line_end() {
        // Elsewhere at the start of a line it is the first character of a
        // word that is not a name.
        let err = ClusterEnv::parse(b"A=1\n\rB=2\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(
            err.message.starts_with("expected NAME=value"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_plus_is_an_append_only_before_equals() {
        let err = ClusterEnv::parse(b"A+B=1\n").unwrap_err();
        assert_eq!(
            err.message,
            "`A+B=1` is not an assignment: bash would run it as a command"
        );
        let err = ClusterEnv::parse(b"A+=1\n").unwrap_err();
        assert_eq!(err.message, "`A+=` appends: write NAME=value");
    }

    #[test]
    fn export_is_a_keyword_only_first_and_alone() {
        assert_eq!(kv("export=1\n"), vec![pair("export", "1")]);
        assert_eq!(kv("export export=1\n"), vec![pair("export", "1")]);
        assert_eq!(kv("exportA=1\n"), vec![pair("exportA", "1")]);
        assert!(ClusterEnv::parse(b"A=1 export B=2\n").is_err());
        assert!(ClusterEnv::parse(b"export A B\n").is_ok());
        assert!(ClusterEnv::parse(b"_a=1\n").is_ok());
        assert!(ClusterEnv::parse(b"-a=1\n").is_err());
    }

    #[test]
    fn tilde_and_continuations_inside_values() {
        assert_eq!(kv("A=a~b\n"), vec![pair("A", "a~b")]);
        assert_eq!(kv("A=\"a\\\nb\"\n"), vec![pair("A", "ab")]);
        assert_eq!(kv("A=\"a\\zb\"\n"), vec![pair("A", "a\\zb")]);
        // Lines after a multi-line value are counted.
        let env = ClusterEnv::parse(b"A='1\n2'\nB=3\n").unwrap();
        assert_eq!(env.line("B"), Some(3));
        assert_eq!(env.line("A"), Some(1));
        assert_eq!(env.line("C"), None);
        assert_eq!(env.get("C"), None);
    }

    #[test]
    fn quoting_matches_istio() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("22,15090,15021"), "'22,15090,15021'");
        assert_eq!(quote("w"), "w");
        assert_eq!(quote("it's"), r#"'it'"'"'s'"#);
        assert_eq!(quote("\\"), "'\\'");
        let env = ClusterEnv::parse(b"B='2'\nA='x'\n").unwrap();
        assert_eq!(env.render(), "A='x'\nB='2'\n");
    }

    proptest! {
        #[test]
        fn round_trip(map in proptest::collection::btree_map(
            "[A-Za-z_][A-Za-z0-9_]{0,12}",
            // Any text bash can hold in a variable (no NUL).
            "[^\u{0}]{0,24}",
            0..8,
        )) {
            let env = ClusterEnv {
                lines: vec![0; map.len()],
                entries: map.clone().into_iter().collect(),
            };
            let text = env.render();
            let back = ClusterEnv::parse(text.as_bytes()).unwrap();
            prop_assert_eq!(back.to_map(), map);
            prop_assert_eq!(back.render(), text);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ClusterEnv::parse(&bytes);
        }
    }
}

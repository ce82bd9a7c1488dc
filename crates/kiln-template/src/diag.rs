//! Diagnostics: what went wrong, where (file:line:column with the offending line and a caret), and
//! how to fix it. Every layer that reads user input reports through these, so the CLI renders all
//! problems of a run the same way.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A position in a template file, with the text of its line kept for rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub file: Arc<Path>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub col: usize,
    /// The whole line the position is on, without its newline.
    pub text: Arc<str>,
}

impl Span {
    /// Builds a span from a byte offset into `src`.
    pub fn from_offset(file: &Arc<Path>, src: &str, offset: usize) -> Span {
        let offset = offset.min(src.len());
        let offset = (0..=offset)
            .rev()
            .find(|o| src.is_char_boundary(*o))
            .unwrap_or(0);
        let before = &src[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let col = before[line_start..].chars().count() + 1;
        let line_end = src[line_start..]
            .find('\n')
            .map_or(src.len(), |i| line_start + i);
        let text = src[line_start..line_end].trim_end_matches('\r');
        Span {
            file: file.clone(),
            line,
            col,
            text: Arc::from(text),
        }
    }

    /// A span that points at a whole file (used when no finer position is known).
    pub fn file_only(file: &Path) -> Span {
        Span {
            file: Arc::from(file),
            line: 0,
            col: 0,
            text: Arc::from(""),
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub span: Option<Span>,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Option<Span>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            hint: None,
        }
    }

    pub fn warning(message: impl Into<String>, span: Option<Span>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            message: message.into(),
            span,
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// Renders as `error: file:line:col: message`, then the line and a caret, then the hint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.span {
            Some(span) => write!(f, "{level}: {span}: {}", self.message)?,
            None => write!(f, "{level}: {}", self.message)?,
        }
        if let Some(span) = &self.span {
            if span.line > 0 {
                let num = span.line.to_string();
                let pad = " ".repeat(num.len());
                let text: String = span
                    .text
                    .chars()
                    .map(|c| if c == '\t' { ' ' } else { c })
                    .collect();
                // Very long lines (minified JSON) are cut around the column.
                let (shown, caret_col) = clip_line(&text, span.col);
                write!(
                    f,
                    "\n {pad} |\n {num} | {shown}\n {pad} | {}^",
                    " ".repeat(caret_col.saturating_sub(1))
                )?;
            }
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  = hint: {hint}")?;
        }
        Ok(())
    }
}

fn clip_line(text: &str, col: usize) -> (String, usize) {
    const MAX: usize = 160;
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= MAX {
        return (text.to_string(), col);
    }
    let start = col
        .saturating_sub(MAX / 2)
        .min(chars.len().saturating_sub(MAX));
    let end = (start + MAX).min(chars.len());
    let mut s: String = chars[start..end].iter().collect();
    let mut caret = col - start;
    if start > 0 {
        s.insert(0, '…');
        caret += 1;
    }
    if end < chars.len() {
        s.push('…');
    }
    (s, caret)
}

/// All diagnostics of a run, in the order they were found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        if !self.0.contains(&d) {
            self.0.push(d);
        }
    }
    pub fn error(&mut self, message: impl Into<String>, span: Option<Span>) {
        self.push(Diagnostic::error(message, span));
    }
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }
    /// Masks every one of `secrets` in messages, hints and shown source lines.
    pub fn redact(&mut self, secrets: &[String]) {
        let secrets: Vec<String> = secrets.iter().filter(|s| s.len() >= 2).cloned().collect();
        if secrets.is_empty() {
            return;
        }
        for d in &mut self.0 {
            d.message = crate::redact(&secrets, &d.message);
            d.hint = d.hint.as_deref().map(|h| crate::redact(&secrets, h));
            if let Some(s) = &mut d.span {
                let t = crate::redact(&secrets, &s.text);
                if *t != *s.text {
                    s.text = Arc::from(t.as_str());
                }
            }
        }
    }
    pub fn extend(&mut self, other: Diagnostics) {
        for d in other.0 {
            self.push(d);
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The closest candidate to `name` by edit distance, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = levenshtein(&name.to_lowercase(), &c.to_lowercase());
        let limit = (c.len().max(name.len()) / 3).max(1);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Paths shown in messages are kept as given (relative stays relative).
pub fn display_path(p: &Path) -> PathBuf {
    p.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_from_offset_counts_lines_and_columns() {
        let f: Arc<Path> = Arc::from(Path::new("a.pkr.hcl"));
        let src = "a = 1\n  bb = x\n";
        let s = Span::from_offset(&f, src, 10);
        assert_eq!((s.line, s.col, &*s.text), (2, 5, "  bb = x"));
    }

    #[test]
    fn diagnostic_renders_line_and_caret() {
        let f: Arc<Path> = Arc::from(Path::new("t.pkr.hcl"));
        let src = "source \"qemu\" \"x\" {\n  memmory = 1\n}\n";
        let d = Diagnostic::error("unknown attribute", Some(Span::from_offset(&f, src, 22)))
            .with_hint("did you mean `memory`?");
        let text = d.to_string();
        assert!(
            text.starts_with("error: t.pkr.hcl:2:3: unknown attribute"),
            "{text}"
        );
        assert!(text.contains(" 2 |   memmory = 1\n   |   ^"), "{text}");
        assert!(text.ends_with("hint: did you mean `memory`?"), "{text}");
    }

    #[test]
    fn unknown_name_suggests_nearest() {
        assert_eq!(did_you_mean("memmory", ["cpus", "memory"]), Some("memory"));
        assert_eq!(did_you_mean("zzzzzz", ["cpus", "memory"]), None);
    }
}

//! `kiln fmt`: rewrites HCL templates in the canonical style (two-space indentation by nesting,
//! `=` aligned within runs of attributes, no trailing spaces, one final newline) while keeping
//! every comment and the author's blank lines. It works on lines and a small scanner that knows
//! strings, `${ }` templates, heredocs and comments, so it never changes what a template means.

/// Scanner state carried from line to line.
#[derive(Default)]
struct Scan {
    /// Open brackets outside strings and comments.
    depth: i32,
    /// Inside `/* */`.
    in_block_comment: bool,
    /// Terminator of the heredoc being copied, and whether it may be indented (`<<-`).
    heredoc: Option<String>,
}

/// What one line contributes.
struct LineInfo {
    /// Closing brackets before any other code on the line (they dedent the line itself).
    leading_closers: i32,
    /// Net bracket change over the line.
    delta: i32,
    /// A heredoc opened on this line.
    heredoc: Option<String>,
    /// The line ends inside a `/* */` comment.
    ends_in_comment: bool,
}

fn scan_line(line: &str, start_in_comment: bool) -> LineInfo {
    let b: Vec<char> = line.chars().collect();
    let mut i = 0;
    let mut delta = 0;
    let mut leading = 0;
    let mut seen_code = false;
    let mut in_comment = start_in_comment;
    let mut heredoc = None;
    // Stack of contexts inside a string: 'q' = quoted string, 't' = template interpolation.
    let mut ctx: Vec<char> = Vec::new();
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if in_comment {
            if c == '*' && next == Some('/') {
                in_comment = false;
                i += 2;
                continue;
            }
            i += 1;
            continue;
        }
        match ctx.last() {
            Some('q') => {
                if c == '\\' {
                    i += 2;
                    continue;
                }
                if c == '"' {
                    ctx.pop();
                } else if (c == '$' || c == '%') && next == Some('{') {
                    if b.get(i.wrapping_sub(1)) != Some(&c) {
                        ctx.push('t');
                    }
                    i += 2;
                    continue;
                }
                i += 1;
                continue;
            }
            // Inside `${ }` (t) or a brace nested in it (b): the same rules.
            Some('t') | Some('b') => {
                match c {
                    '"' => ctx.push('q'),
                    '{' => ctx.push('b'),
                    '}' => {
                        ctx.pop();
                    }
                    _ => {}
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        match c {
            '#' => break,
            '/' if next == Some('/') => break,
            '/' if next == Some('*') => {
                in_comment = true;
                i += 2;
                continue;
            }
            '"' => {
                seen_code = true;
                ctx.push('q');
            }
            '<' if next == Some('<') => {
                let rest: String = b[i + 2..].iter().collect();
                let rest = rest.strip_prefix('-').unwrap_or(&rest);
                let word: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !word.is_empty() {
                    heredoc = Some(word);
                    break;
                }
            }
            '{' | '[' | '(' => {
                seen_code = true;
                delta += 1;
            }
            '}' | ']' | ')' => {
                if !seen_code {
                    leading += 1;
                }
                delta -= 1;
            }
            c if !c.is_whitespace() => seen_code = true,
            _ => {}
        }
        i += 1;
    }
    LineInfo {
        leading_closers: leading,
        delta,
        heredoc,
        ends_in_comment: in_comment,
    }
}

/// `key = value` at the start of a line (identifier or quoted key; not `==`).
fn split_attr(line: &str) -> Option<(&str, &str)> {
    let key_end = if line.starts_with('"') {
        let mut esc = false;
        let mut end = None;
        for (i, c) in line.char_indices().skip(1) {
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                end = Some(i + 1);
                break;
            }
        }
        end?
    } else {
        let e = line.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))?;
        if e == 0
            || !line
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
        {
            return None;
        }
        e
    };
    let rest = line[key_end..].trim_start();
    let value = rest.strip_prefix('=')?;
    if value.starts_with('=') {
        return None;
    }
    Some((&line[..key_end], value.trim_start()))
}

/// Formats HCL source text.
pub fn format_hcl(src: &str) -> String {
    let src = src.replace("\r\n", "\n");
    let mut out: Vec<String> = Vec::new();
    // Pending run of attribute lines: (out index, indent, key, value).
    let mut run: Vec<(usize, usize, String, String)> = Vec::new();
    let mut st = Scan::default();
    let flush = |run: &mut Vec<(usize, usize, String, String)>, out: &mut Vec<String>| {
        let width = run.iter().map(|r| r.2.chars().count()).max().unwrap_or(0);
        for (idx, indent, key, value) in run.drain(..) {
            let pad = width - key.chars().count();
            out[idx] = format!("{}{key}{} = {value}", " ".repeat(indent), " ".repeat(pad));
        }
    };
    for raw in src.split('\n') {
        if let Some(term) = &st.heredoc {
            out.push(raw.trim_end().to_string());
            if raw.trim() == term {
                st.heredoc = None;
            }
            continue;
        }
        let line = raw.trim();
        if st.in_block_comment {
            out.push(raw.trim_end().to_string());
            st.in_block_comment = scan_line(raw, true).ends_in_comment;
            continue;
        }
        if line.is_empty() {
            flush(&mut run, &mut out);
            out.push(String::new());
            continue;
        }
        let info = scan_line(line, false);
        let level = (st.depth - info.leading_closers).max(0) as usize;
        let indent = level * 2;
        let is_comment = line.starts_with('#') || line.starts_with("//") || line.starts_with("/*");
        match (is_comment, split_attr(line)) {
            (false, Some((key, value))) => {
                if run.first().is_some_and(|r| r.1 != indent) {
                    flush(&mut run, &mut out);
                }
                // As in `terraform fmt`, a value spanning lines is not aligned with its
                // neighbours and ends the run.
                let multiline = info.delta != 0 || info.heredoc.is_some();
                if multiline {
                    flush(&mut run, &mut out);
                }
                out.push(String::new());
                run.push((out.len() - 1, indent, key.to_string(), value.to_string()));
                if multiline {
                    flush(&mut run, &mut out);
                }
            }
            _ => {
                flush(&mut run, &mut out);
                out.push(format!("{}{line}", " ".repeat(indent)));
            }
        }
        st.depth = (st.depth + info.delta).max(0);
        st.heredoc = info.heredoc;
        st.in_block_comment = info.ends_in_comment;
    }
    flush(&mut run, &mut out);
    while out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::format_hcl;

    #[test]
    fn indents_aligns_and_keeps_comments() {
        let src = "source \"qemu\" \"x\" {\n# the base\n    iso_url = \"a.qcow2\"   \n  memory=512\n  http_content = {\n\"/user-data\" = \"x\"\n  }\n}\n\n\n";
        let want = "source \"qemu\" \"x\" {\n  # the base\n  iso_url = \"a.qcow2\"\n  memory  = 512\n  http_content = {\n    \"/user-data\" = \"x\"\n  }\n}\n";
        assert_eq!(format_hcl(src), want);
        assert_eq!(format_hcl(want), want);
    }

    #[test]
    fn strings_heredocs_and_templates_are_left_alone() {
        let src = "locals {\n  s = \"${lookup(var.m, \"{\")} }\"\n  h = <<-EOT\n      keep   this {\n    EOT\n  n = 1\n}\n";
        let out = format_hcl(src);
        assert!(out.contains("      keep   this {\n    EOT\n"), "{out}");
        assert!(out.contains("  n = 1\n}"), "{out}");
        assert_eq!(format_hcl(&out), out);
    }
}

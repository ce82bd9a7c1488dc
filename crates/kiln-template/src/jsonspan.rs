//! A small JSON parser that keeps the byte offset of every key and value and rejects duplicate
//! keys (as Packer does), which serde_json cannot report. Used for legacy templates and JSON
//! variable files so their errors carry file:line:column.

#[derive(Debug, Clone)]
pub struct Key {
    pub text: String,
    pub offset: usize,
}

#[derive(Debug, Clone)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub value: NodeValue,
    pub offset: usize,
}

#[derive(Debug, Clone)]
pub struct ParseError {
    pub message: String,
    pub offset: usize,
}

impl Node {
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            NodeValue::Null => serde_json::Value::Null,
            NodeValue::Bool(b) => serde_json::Value::Bool(*b),
            NodeValue::Number(n) => serde_json::Value::Number(n.clone()),
            NodeValue::String(s) => serde_json::Value::String(s.clone()),
            NodeValue::Array(a) => serde_json::Value::Array(a.iter().map(Node::to_json).collect()),
            NodeValue::Object(o) => serde_json::Value::Object(
                o.iter()
                    .map(|(k, v)| (k.text.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            NodeValue::Object(o) => o.iter().find(|(k, _)| k.text == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn key_offset(&self, key: &str) -> Option<usize> {
        match &self.value {
            NodeValue::Object(o) => o.iter().find(|(k, _)| k.text == key).map(|(k, _)| k.offset),
            _ => None,
        }
    }
}

const MAX_DEPTH: usize = 128;

pub fn parse(src: &str) -> Result<Node, ParseError> {
    let mut p = Parser {
        s: src.as_bytes(),
        src,
        i: 0,
        depth: 0,
    };
    p.ws();
    let n = p.value()?;
    p.ws();
    if p.i < p.s.len() {
        return Err(p.error("unexpected text after the end of the JSON value"));
    }
    Ok(n)
}

struct Parser<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, m: &str) -> ParseError {
        ParseError {
            message: m.to_string(),
            offset: self.i,
        }
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Result<Node, ParseError> {
        let offset = self.i;
        let value =
            match self.s.get(self.i) {
                None => return Err(self.error("unexpected end of file: the JSON is truncated")),
                Some(b'{') => self.object()?,
                Some(b'[') => self.array()?,
                Some(b'"') => NodeValue::String(self.string()?),
                Some(b't') => self.word("true", NodeValue::Bool(true))?,
                Some(b'f') => self.word("false", NodeValue::Bool(false))?,
                Some(b'n') => self.word("null", NodeValue::Null)?,
                Some(c) if *c == b'-' || c.is_ascii_digit() => self.number()?,
                Some(_) => return Err(self.error(
                    "expected a JSON value (object, array, string, number, true, false or null)",
                )),
            };
        Ok(Node { value, offset })
    }

    fn word(&mut self, w: &str, v: NodeValue) -> Result<NodeValue, ParseError> {
        if self.src[self.i..].starts_with(w) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(self.error("invalid literal; expected true, false or null"))
        }
    }

    fn number(&mut self) -> Result<NodeValue, ParseError> {
        let start = self.i;
        while self.i < self.s.len()
            && matches!(
                self.s[self.i],
                b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
            )
        {
            self.i += 1;
        }
        let text = &self.src[start..self.i];
        serde_json::from_str::<serde_json::Number>(text)
            .map(NodeValue::Number)
            .map_err(|_| ParseError {
                message: format!("invalid number {text:?}"),
                offset: start,
            })
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let start = self.i;
        self.i += 1;
        loop {
            match self.s.get(self.i) {
                None => {
                    return Err(ParseError {
                        message: "unterminated string".into(),
                        offset: start,
                    })
                }
                Some(b'"') => break,
                Some(b'\\') => self.i += 2,
                Some(b'\n') => return Err(self.error("newline inside a string; use \\n")),
                Some(_) => self.i += 1,
            }
        }
        self.i += 1;
        let raw = self
            .src
            .get(start..self.i)
            .ok_or_else(|| self.error("invalid string"))?;
        serde_json::from_str::<String>(raw).map_err(|e| ParseError {
            message: format!("invalid string: {e}"),
            offset: start,
        })
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("JSON is nested too deeply (more than 128 levels)"));
        }
        Ok(())
    }

    fn array(&mut self) -> Result<NodeValue, ParseError> {
        self.enter()?;
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(NodeValue::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value()?);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    break;
                }
                None => {
                    return Err(self.error("unexpected end of file inside an array: missing `]`"))
                }
                _ => return Err(self.error("expected `,` or `]` after an array element")),
            }
        }
        self.depth -= 1;
        Ok(NodeValue::Array(items))
    }

    fn object(&mut self) -> Result<NodeValue, ParseError> {
        self.enter()?;
        self.i += 1;
        let mut entries: Vec<(Key, Node)> = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(NodeValue::Object(entries));
        }
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return Err(self.error(if self.i >= self.s.len() {
                    "unexpected end of file inside an object: missing `}`"
                } else {
                    "expected a quoted key"
                }));
            }
            let offset = self.i;
            let text = self.string()?;
            if let Some((first, _)) = entries.iter().find(|(k, _)| k.text == text) {
                let line = self.src[..first.offset].matches('\n').count() + 1;
                return Err(ParseError {
                    message: format!("duplicate key {text:?} (first set on line {line})"),
                    offset,
                });
            }
            self.ws();
            if self.s.get(self.i) != Some(&b':') {
                return Err(self.error("expected `:` after the key"));
            }
            self.i += 1;
            self.ws();
            let v = self.value()?;
            entries.push((Key { text, offset }, v));
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                None => {
                    return Err(self.error("unexpected end of file inside an object: missing `}`"))
                }
                _ => return Err(self.error("expected `,` or `}` after a value")),
            }
        }
        self.depth -= 1;
        Ok(NodeValue::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_offsets_and_rejects_duplicates() {
        let n = parse("{\"a\": [1, \"x\"],\n \"b\": {\"c\": null}}").expect("valid JSON");
        assert_eq!(n.key_offset("b"), Some(17));
        assert_eq!(
            n.to_json(),
            serde_json::json!({"a": [1, "x"], "b": {"c": null}})
        );
        let e = parse("{\"a\": 1, \"a\": 2}").expect_err("duplicate rejected");
        assert!(e.message.contains("duplicate key \"a\""));
        assert_eq!(e.offset, 9);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(parse(&deep).is_err());
    }
}

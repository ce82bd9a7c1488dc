//! Variable type constraints (`string`, `list(number)`, `object({...})`, …) and the conversions HCL
//! applies when a value is assigned to a typed variable.

use crate::funcs::{to_str, type_name};
use hcl::{Expression, Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    Any,
    String,
    Number,
    Bool,
    List(Box<Type>),
    Set(Box<Type>),
    Map(Box<Type>),
    Tuple(Vec<Type>),
    /// Attribute name, type, optional.
    Object(Vec<(String, Type, bool)>),
}

impl Type {
    /// Parses a type expression such as `list(string)`.
    pub fn parse(expr: &Expression) -> Result<Type, String> {
        match expr {
            Expression::Variable(v) => match v.as_str() {
                "string" => Ok(Type::String),
                "number" => Ok(Type::Number),
                "bool" => Ok(Type::Bool),
                "any" => Ok(Type::Any),
                "list" | "set" | "map" => Ok(match v.as_str() {
                    "list" => Type::List(Box::new(Type::Any)),
                    "set" => Type::Set(Box::new(Type::Any)),
                    _ => Type::Map(Box::new(Type::Any)),
                }),
                other => Err(format!(
                    "unknown type {other:?}: use string, number, bool, any, list(T), set(T), map(T), tuple([...]) or object({{...}})"
                )),
            },
            Expression::FuncCall(call) => {
                let name = call.name.to_string();
                let one = || -> Result<Type, String> {
                    match call.args.as_slice() {
                        [a] => Type::parse(a),
                        _ => Err(format!("{name}(...) takes exactly one element type")),
                    }
                };
                match name.as_str() {
                    "list" => Ok(Type::List(Box::new(one()?))),
                    "set" => Ok(Type::Set(Box::new(one()?))),
                    "map" => Ok(Type::Map(Box::new(one()?))),
                    "tuple" => match call.args.as_slice() {
                        [Expression::Array(items)] => Ok(Type::Tuple(items.iter().map(Type::parse).collect::<Result<_, _>>()?)),
                        _ => Err("tuple(...) takes a list of element types, e.g. tuple([string, number])".into()),
                    },
                    "object" => match call.args.as_slice() {
                        [Expression::Object(attrs)] => {
                            let mut out = Vec::new();
                            for (k, v) in attrs {
                                let key = match k {
                                    hcl::ObjectKey::Identifier(i) => i.to_string(),
                                    hcl::ObjectKey::Expression(Expression::String(s)) => s.clone(),
                                    _ => return Err("object type attribute names must be plain names".into()),
                                };
                                let (ty, optional) = match v {
                                    Expression::FuncCall(c) if c.name.to_string() == "optional" => match c.args.first() {
                                        Some(a) => (Type::parse(a)?, true),
                                        None => return Err("optional(...) takes a type".into()),
                                    },
                                    other => (Type::parse(other)?, false),
                                };
                                out.push((key, ty, optional));
                            }
                            Ok(Type::Object(out))
                        }
                        _ => Err("object(...) takes an object of attribute types, e.g. object({ name = string })".into()),
                    },
                    other => Err(format!("unknown type constructor {other:?}")),
                }
            }
            _ => Err("not a type: use string, number, bool, any, list(T), set(T), map(T), tuple([...]) or object({...})".into()),
        }
    }

    /// Converts `v` to this type as HCL does (e.g. "1" to 1 for number), or says why it cannot.
    pub fn convert(&self, v: &Value) -> Result<Value, String> {
        if v.is_null() {
            return Ok(Value::Null);
        }
        match (self, v) {
            (Type::Any, _) => Ok(v.clone()),
            (Type::String, Value::String(_) | Value::Number(_) | Value::Bool(_)) => {
                to_str(v).map(Value::from)
            }
            (Type::Number, Value::Number(_)) => Ok(v.clone()),
            (Type::Number, Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .map(crate::funcs::num)
                .map_err(|_| format!("a number is required, got {s:?}")),
            (Type::Bool, Value::Bool(_)) => Ok(v.clone()),
            (Type::Bool, Value::String(s)) if s == "true" || s == "false" => {
                Ok(Value::from(s == "true"))
            }
            (Type::List(t) | Type::Set(t), Value::Array(items)) => {
                let mut out: Vec<Value> = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let c = t.convert(item).map_err(|e| format!("element {i}: {e}"))?;
                    if !(matches!(self, Type::Set(_)) && out.contains(&c)) {
                        out.push(c);
                    }
                }
                Ok(Value::Array(out))
            }
            (Type::Tuple(ts), Value::Array(items)) => {
                if ts.len() != items.len() {
                    return Err(format!(
                        "a tuple of {} elements is required, got {}",
                        ts.len(),
                        items.len()
                    ));
                }
                ts.iter()
                    .zip(items)
                    .enumerate()
                    .map(|(i, (t, v))| t.convert(v).map_err(|e| format!("element {i}: {e}")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
            (Type::Map(t), Value::Object(m)) => {
                let mut out = Map::new();
                for (k, v) in m {
                    out.insert(
                        k.clone(),
                        t.convert(v).map_err(|e| format!("key {k:?}: {e}"))?,
                    );
                }
                Ok(Value::Object(out))
            }
            (Type::Object(attrs), Value::Object(m)) => {
                let mut out = Map::new();
                for (name, t, optional) in attrs {
                    match m.get(name) {
                        Some(v) => {
                            out.insert(
                                name.clone(),
                                t.convert(v)
                                    .map_err(|e| format!("attribute {name:?}: {e}"))?,
                            );
                        }
                        None if *optional => {
                            out.insert(name.clone(), Value::Null);
                        }
                        None => return Err(format!("attribute {name:?} is required")),
                    }
                }
                if let Some(extra) = m.keys().find(|k| !attrs.iter().any(|(n, _, _)| n == *k)) {
                    return Err(format!("unexpected attribute {extra:?}"));
                }
                Ok(Value::Object(out))
            }
            (t, v) => Err(format!(
                "{} is required, got {}",
                t.describe(),
                type_name(v)
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            Type::Any => "any value".into(),
            Type::String => "a string".into(),
            Type::Number => "a number".into(),
            Type::Bool => "a bool".into(),
            Type::List(_) => "a list".into(),
            Type::Set(_) => "a set".into(),
            Type::Map(_) => "a map".into(),
            Type::Tuple(_) => "a tuple".into(),
            Type::Object(_) => "an object".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> Type {
        Type::parse(&s.parse::<Expression>().expect("test type parses"))
            .expect("test type is valid")
    }

    #[test]
    fn converts_like_hcl() {
        assert_eq!(
            ty("number").convert(&Value::from("42")),
            Ok(Value::from(42))
        );
        assert_eq!(
            ty("string").convert(&Value::from(true)),
            Ok(Value::from("true"))
        );
        assert_eq!(
            ty("list(number)").convert(&Value::from_iter(["1", "2"])),
            Ok(Value::from_iter([1, 2]))
        );
        assert_eq!(
            ty("set(string)").convert(&Value::from_iter(["a", "a"])),
            Ok(Value::from_iter(["a"]))
        );
        assert!(ty("object({ a = string })")
            .convert(&Value::from_iter([("b", "x")]))
            .is_err());
        assert!(ty("bool").convert(&Value::from("yes")).is_err());
        assert!(Type::parse(&"strnig".parse::<Expression>().expect("parses")).is_err());
    }
}

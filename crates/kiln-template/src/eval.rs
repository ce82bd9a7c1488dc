//! Expression evaluation on top of hcl-rs: `try`/`can` (which need unevaluated arguments),
//! friendly errors for undeclared `var.*`/`local.*` references, and value conversion to JSON.

use crate::diag::did_you_mean;
use hcl::eval::{Context, Evaluate};
use hcl::{Expression, Value};
use std::sync::OnceLock;

/// Evaluates `expr`, resolving `try(...)` and `can(...)` first.
pub fn evaluate(expr: &Expression, ctx: &Context<'_>) -> Result<Value, String> {
    let resolved = resolve_try(expr, ctx);
    resolved
        .evaluate(ctx)
        .map_err(|e| clean_error(&e.to_string()))
}

fn clean_error(msg: &str) -> String {
    let msg = msg.strip_prefix("eval error: ").unwrap_or(msg);
    // hcl-rs appends the whole expression; long ones drown the message.
    match msg.find(" in expression `") {
        Some(i) if msg.len() - i > 120 => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

fn resolve_try(expr: &Expression, ctx: &Context<'_>) -> Expression {
    match expr {
        Expression::FuncCall(call) => {
            let name = call.name.to_string();
            if name == "try" || name == "can" {
                for arg in &call.args {
                    let r = resolve_try(arg, ctx).evaluate(ctx);
                    match (name.as_str(), r) {
                        ("try", Ok(v)) => return value_to_expr(v),
                        ("can", Ok(_)) => return Expression::Bool(true),
                        _ => {}
                    }
                }
                if name == "can" {
                    return Expression::Bool(false);
                }
                // Leave it for hcl-rs, which reports "undefined function try" unhelpfully: make a call
                // that fails with our message instead.
                return Expression::FuncCall(Box::new(
                    hcl::expr::FuncCall::builder("__try_failed").build(),
                ));
            }
            let mut c = (**call).clone();
            c.args = c.args.iter().map(|a| resolve_try(a, ctx)).collect();
            Expression::FuncCall(Box::new(c))
        }
        Expression::Array(items) => {
            Expression::Array(items.iter().map(|e| resolve_try(e, ctx)).collect())
        }
        Expression::Object(obj) => Expression::Object(
            obj.iter()
                .map(|(k, v)| (k.clone(), resolve_try(v, ctx)))
                .collect(),
        ),
        Expression::Parenthesis(e) => Expression::Parenthesis(Box::new(resolve_try(e, ctx))),
        Expression::Conditional(c) => {
            let mut c = (**c).clone();
            c.cond_expr = resolve_try(&c.cond_expr, ctx);
            c.true_expr = resolve_try(&c.true_expr, ctx);
            c.false_expr = resolve_try(&c.false_expr, ctx);
            Expression::Conditional(Box::new(c))
        }
        Expression::Operation(op) => {
            let mut op = (**op).clone();
            match &mut op {
                hcl::expr::Operation::Unary(u) => u.expr = resolve_try(&u.expr, ctx),
                hcl::expr::Operation::Binary(b) => {
                    b.lhs_expr = resolve_try(&b.lhs_expr, ctx);
                    b.rhs_expr = resolve_try(&b.rhs_expr, ctx);
                }
            }
            Expression::Operation(Box::new(op))
        }
        Expression::Traversal(t) => {
            let mut t = (**t).clone();
            t.expr = resolve_try(&t.expr, ctx);
            Expression::Traversal(Box::new(t))
        }
        other => other.clone(),
    }
}

/// A value as a literal expression.
pub fn value_to_expr(v: Value) -> Expression {
    match v {
        Value::Null => Expression::Null,
        Value::Bool(b) => Expression::Bool(b),
        Value::Number(n) => Expression::Number(n),
        Value::String(s) => Expression::String(s),
        Value::Array(a) => Expression::Array(a.into_iter().map(value_to_expr).collect()),
        Value::Object(o) => Expression::Object(
            o.into_iter()
                .map(|(k, v)| {
                    (
                        hcl::ObjectKey::Expression(Expression::String(k)),
                        value_to_expr(v),
                    )
                })
                .collect(),
        ),
    }
}

/// hcl value to JSON value.
pub fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                serde_json::Value::from(i)
            } else if let Some(u) = n.as_u64() {
                serde_json::Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
        Value::Object(o) => {
            serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

/// JSON value to hcl value.
pub fn from_json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_u64().map(Value::from))
            .or_else(|| n.as_f64().map(crate::funcs::num))
            .unwrap_or(Value::Null),
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(from_json).collect()),
        serde_json::Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), from_json(v))).collect())
        }
    }
}

fn ref_regex() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"(?:^|[^\w.])(var|local)\.([A-Za-z_][A-Za-z0-9_-]*)")
            .expect("static regex compiles")
    })
}

fn data_regex() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(
            r"(?:^|[^\w.])(data)\.([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_-]*)",
        )
        .expect("static regex compiles")
    })
}

/// `(kind, name, byte offset)` of each `var.X` / `local.X` / `data.T.N` (name `T.N`) reference in
/// an expression's source text.
pub fn references(src: &str) -> Vec<(&'static str, String, usize)> {
    let mut out: Vec<(&'static str, String, usize)> = ref_regex()
        .captures_iter(src)
        .filter_map(|c| {
            let kind = if &c[1] == "var" { "var" } else { "local" };
            let m = c.get(1)?;
            Some((kind, c[2].to_string(), m.start()))
        })
        .collect();
    out.extend(data_regex().captures_iter(src).filter_map(|c| {
        let m = c.get(1)?;
        Some(("data", format!("{}.{}", &c[2], &c[3]), m.start()))
    }));
    out.sort_by_key(|r| r.2);
    out
}

/// The message for a reference to something that was never declared.
pub fn undeclared_message<'a>(
    kind: &str,
    name: &str,
    declared: impl IntoIterator<Item = &'a str>,
) -> (String, Option<String>) {
    let what = match kind {
        "var" => "variable",
        "data" => "data source",
        _ => "local",
    };
    let msg = format!("reference to undeclared {what} {kind}.{name}");
    let hint = match did_you_mean(name, declared) {
        Some(s) => format!("did you mean {kind}.{s}?"),
        None if kind == "var" => format!("declare it with a `variable \"{name}\" {{ ... }}` block"),
        None if kind == "data" => {
            let (t, n) = name.split_once('.').unwrap_or((name, ""));
            format!("declare it with a `data \"{t}\" \"{n}\" {{ ... }}` block")
        }
        None => format!("define it in a `locals {{ {name} = ... }}` block"),
    };
    (msg, Some(hint))
}

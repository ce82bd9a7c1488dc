//! `required_version` constraints (`>= 1.7.0, < 2.0.0`, `~> 1.9`) checked against the Packer
//! version whose templates kiln reads.

fn parse(v: &str) -> Option<Vec<u64>> {
    let v = v.trim().trim_start_matches('v');
    let v = v.split(['-', '+']).next()?;
    v.split('.').map(|p| p.parse().ok()).collect()
}

fn cmp(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| a.get(i).unwrap_or(&0).cmp(b.get(i).unwrap_or(&0)))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

/// Checks `have` against a constraint string; the error says which part failed.
pub fn check(constraint: &str, have: &str) -> Result<(), String> {
    let have_v = parse(have).ok_or_else(|| format!("invalid version {have:?}"))?;
    for part in constraint.split(',') {
        let part = part.trim();
        let (op, ver) = ["~>", ">=", "<=", "!=", ">", "<", "="]
            .iter()
            .find_map(|op| part.strip_prefix(op).map(|r| (*op, r)))
            .unwrap_or(("=", part));
        let want = parse(ver).ok_or_else(|| {
            format!("invalid version constraint {part:?}: write it like \">= 1.7.0\"")
        })?;
        use std::cmp::Ordering::*;
        let c = cmp(&have_v, &want);
        let ok = match op {
            ">=" => c != Less,
            "<=" => c != Greater,
            ">" => c == Greater,
            "<" => c == Less,
            "!=" => c != Equal,
            "~>" => {
                let mut upper = want[..want.len().saturating_sub(1).max(1)].to_vec();
                if let Some(last) = upper.last_mut() {
                    *last += 1;
                }
                if want.len() == 1 {
                    upper = vec![u64::MAX];
                }
                c != Less && cmp(&have_v, &upper) == Less
            }
            _ => c == Equal,
        };
        if !ok {
            return Err(format!("required_version {constraint:?} is not met: kiln reads Packer {have} templates (fails at {part:?})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn constraints_are_checked() {
        assert!(check(">= 1.7.0", "1.11.2").is_ok());
        assert!(check(">= 1.7.0, < 2.0.0", "1.11.2").is_ok());
        assert!(check("~> 1.9", "1.11.2").is_ok());
        assert!(check("~> 1.9.0", "1.11.2").is_err());
        assert!(check(">= 2.0", "1.11.2").is_err());
        assert!(check("banana", "1.11.2").is_err());
    }
}

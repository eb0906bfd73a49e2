//! Looking into `dml --json` output without depending on its exact shape: the tests ask
//! whether a value appears anywhere, or what every field of a given name holds.

use serde_json::Value;

/// Every string anywhere in `v`.
pub fn strings(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(v, &mut |_, x| {
        if let Value::String(s) = x {
            out.push(s.clone());
        }
    });
    out
}

/// Whether `s` is a string anywhere in `v`, or a part of one (an address inside an
/// "addr#started" identity, say).
pub fn mentions(v: &Value, s: &str) -> bool {
    strings(v).iter().any(|x| x.contains(s))
}

/// The values of every field named `key`, at any depth.
pub fn fields<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
    let mut out = Vec::new();
    walk(v, &mut |k, x| {
        if k == Some(key) {
            out.push(x);
        }
    });
    out
}

/// The unsigned integers held by fields named `key`.
pub fn u64_fields(v: &Value, key: &str) -> Vec<u64> {
    fields(v, key)
        .into_iter()
        .filter_map(Value::as_u64)
        .collect()
}

fn walk<'a>(v: &'a Value, f: &mut impl FnMut(Option<&str>, &'a Value)) {
    fn go<'a>(key: Option<&str>, v: &'a Value, f: &mut impl FnMut(Option<&str>, &'a Value)) {
        f(key, v);
        match v {
            Value::Array(a) => a.iter().for_each(|x| go(None, x, f)),
            Value::Object(o) => o.iter().for_each(|(k, x)| go(Some(k), x, f)),
            _ => {}
        }
    }
    go(None, v, f);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_strings_and_fields_at_any_depth() {
        let v: Value = serde_json::from_str(
            r#"{"name":"a","versions":[{"version":1,"replicas":["127.0.0.1:9#5"]},{"version":2}]}"#,
        )
        .unwrap();
        assert!(mentions(&v, "127.0.0.1:9"));
        assert!(!mentions(&v, "127.0.0.1:8"));
        assert_eq!(u64_fields(&v, "version"), vec![1, 2]);
        assert_eq!(fields(&v, "name").len(), 1);
    }
}

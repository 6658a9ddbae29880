//! `CNI_ARGS` ("K=V;K2=V2"), parsed with the reference's `LoadArgs` rules: every pair
//! must split into exactly two parts, keys are case-sensitive, and unknown keys are an
//! error unless `IgnoreUnknown` is true. Each applet names the keys it understands.

use crate::error::{cni_err, Code};
use anyhow::Result;

/// A malformed `CNI_ARGS` is a bad environment variable: code 4.
macro_rules! env_bail {
    ($($fmt:tt)+) => {
        return Err(cni_err(Code::InvalidEnv, format!($($fmt)+)))
    };
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// Parse and validate `raw` against the keys an applet accepts (besides `IgnoreUnknown`).
    pub fn parse(raw: &str, known: &[&str]) -> Result<CniArgs> {
        let mut pairs = Vec::new();
        if raw.is_empty() {
            return Ok(CniArgs { pairs });
        }
        let mut ignore_unknown = false;
        let mut unknown = Vec::new();
        for seg in raw.split(';') {
            let kv: Vec<&str> = seg.split('=').collect();
            if kv.len() != 2 {
                env_bail!("CNI_ARGS: invalid pair {seg:?} (expected KEY=VALUE)");
            }
            let (k, v) = (kv[0], kv[1]);
            if k.is_empty() {
                env_bail!("CNI_ARGS: empty key in {seg:?}");
            }
            if k == "IgnoreUnknown" {
                ignore_unknown = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        env_bail!("CNI_ARGS: IgnoreUnknown={v:?} must be true/false/1/0")
                    }
                };
                continue;
            }
            if known.contains(&k) {
                pairs.push((k.to_string(), v.to_string()));
            } else {
                unknown.push(seg.to_string());
            }
        }
        if !unknown.is_empty() && !ignore_unknown {
            env_bail!("CNI_ARGS: unknown args {unknown:?} (add IgnoreUnknown=1 to ignore them)");
        }
        Ok(CniArgs { pairs })
    }

    /// The value of `key` (the last one if repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The lenient splitter the dhcp plugin uses: split on the first `=`, keep everything.
pub fn parse_lenient(raw: &str) -> Vec<(String, String)> {
    raw.split(';')
        .filter_map(|seg| {
            seg.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys() {
        let a = CniArgs::parse("IP=10.0.0.2;MAC=aa", &["IP", "MAC"]).unwrap();
        assert_eq!(a.get("IP"), Some("10.0.0.2"));
        assert_eq!(a.get("MAC"), Some("aa"));
        assert_eq!(CniArgs::parse("", &[]).unwrap(), CniArgs::default());
        assert_eq!(CniArgs::parse("IP=", &["IP"]).unwrap().get("IP"), Some(""));
    }

    #[test]
    fn unknown_keys() {
        let e = CniArgs::parse("FOO=1", &["IP"]).unwrap_err().to_string();
        assert_eq!(
            e,
            r#"CNI_ARGS: unknown args ["FOO=1"] (add IgnoreUnknown=1 to ignore them)"#
        );
        assert!(CniArgs::parse("FOO=1;IgnoreUnknown=1", &["IP"]).is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=TRUE;FOO=1", &["IP"]).is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=0;FOO=1", &["IP"]).is_err());
        assert!(CniArgs::parse("IgnoreUnknown=maybe", &["IP"]).is_err());
        // keys are case-sensitive: host-local rejects lower-case ip
        assert!(CniArgs::parse("ip=10.0.0.2", &["IP"]).is_err());
    }

    #[test]
    fn malformed_pairs() {
        for bad in ["A=B=C", "A=1;;B=2", "A=1;", "A", ";"] {
            let e = CniArgs::parse(bad, &["A", "B"]).unwrap_err();
            let c = crate::error::CniError::from_anyhow(&e);
            assert!(
                c.msg.starts_with("CNI_ARGS: invalid pair"),
                "{bad}: {}",
                c.msg
            );
            assert_eq!(c.code, 4, "{bad}");
        }
        // An empty key is refused even when unknown keys are ignored.
        for bad in ["=1", "IgnoreUnknown=1;=1"] {
            let e = CniArgs::parse(bad, &["A"]).unwrap_err();
            assert_eq!(crate::error::CniError::from_anyhow(&e).code, 4, "{bad}");
        }
    }

    #[test]
    fn lenient() {
        assert_eq!(
            parse_lenient("a=b=c;x"),
            vec![("a".to_string(), "b=c".to_string())]
        );
    }
}

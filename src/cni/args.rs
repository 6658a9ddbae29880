//! `CNI_ARGS` ("K=V;K2=V2"), parsed with the reference's `LoadArgs` rules: every pair
//! must split into exactly two parts, keys are case-sensitive, and unknown keys are an
//! error unless `IgnoreUnknown` is true. Each applet names the keys it understands.

use anyhow::{anyhow, bail, Result};

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
                bail!("ARGS: invalid pair {seg:?}");
            }
            let (k, v) = (kv[0], kv[1]);
            if k == "IgnoreUnknown" {
                ignore_unknown = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        bail!("ARGS: error setting IgnoreUnknown to {v:?}: must be true/false/1/0")
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
            return Err(anyhow!("ARGS: unknown args {unknown:?}"));
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
        assert_eq!(e, r#"ARGS: unknown args ["FOO=1"]"#);
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
            let e = CniArgs::parse(bad, &["A", "B"]).unwrap_err().to_string();
            assert!(e.starts_with("ARGS: invalid pair"), "{bad}: {e}");
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

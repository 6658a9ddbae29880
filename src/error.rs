//! The one CNI error type.
//!
//! Applets work with `anyhow::Result` and add context freely. When a failure has a
//! spec-defined meaning (bad env, bad config, ...) it is raised as a [`CniError`] with
//! that code; `anyhow` keeps it inside the chain, and the harness digs it out again with
//! [`CniError::from_anyhow`] so the code survives to the printed JSON. Anything without a
//! code is reported as 999, like the reference's skel does.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Error codes from the CNI spec (1.1.0, "Error" section), plus the reference's 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnv = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    /// Reference extension: CNI_NETNS is the plugin's own netns.
    InvalidNetns = 8,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot serve ADD.
    NotAvailable = 50,
    /// STATUS: cannot serve ADD, and existing containers may have reduced connectivity.
    LimitedConnectivity = 51,
    Internal = 999,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            cni_version: String::new(),
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Turn any error chain into the object we print. A coded error anywhere in the
    /// chain wins; the outer context layers then become the human-readable `msg`
    /// so a user sees both what failed and why.
    pub fn from_anyhow(err: &anyhow::Error) -> CniError {
        if let Some(inner) = err.chain().find_map(|e| e.downcast_ref::<CniError>()) {
            let mut out = inner.clone();
            let outer: Vec<String> = err
                .chain()
                .take_while(|e| e.downcast_ref::<CniError>().is_none())
                .map(|e| e.to_string())
                .collect();
            if !outer.is_empty() {
                out.msg = format!("{}: {}", outer.join(": "), inner.msg);
            }
            return out;
        }
        CniError::new(Code::Internal, format!("{err:#}"))
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "{}; {}", self.msg, self.details)
        }
    }
}

impl std::error::Error for CniError {}

/// Build a coded error as an `anyhow::Error` in one expression.
pub fn cni_err(code: Code, msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(CniError::new(code, msg))
}

/// The CNI code of a coded error somewhere in `err`'s chain (`None`: uncoded, 999).
pub fn code_of(err: &anyhow::Error) -> Option<u32> {
    err.chain()
        .find_map(|e| e.downcast_ref::<CniError>())
        .map(|c| c.code)
}

/// `bail!` for coded errors.
#[macro_export]
macro_rules! cni_bail {
    ($code:ident, $($fmt:tt)+) => {
        return Err($crate::error::cni_err($crate::error::Code::$code, format!($($fmt)+)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn code_survives_context_layers() {
        let e: anyhow::Result<()> = Err(cni_err(Code::InvalidConfig, "missing network name"));
        let e = e.context("parse config").context("bridge ADD").unwrap_err();
        let c = CniError::from_anyhow(&e);
        assert_eq!(c.code, 7);
        assert_eq!(c.msg, "bridge ADD: parse config: missing network name");
    }

    #[test]
    fn code_of_finds_the_code_under_context() {
        let e = cni_err(Code::TryAgainLater, "busy").context("outer");
        assert_eq!(code_of(&e), Some(11));
        assert_eq!(code_of(&anyhow::anyhow!("plain")), None);
    }

    #[test]
    fn uncoded_is_internal() {
        let e = anyhow::anyhow!("boom").context("outer");
        let c = CniError::from_anyhow(&e);
        assert_eq!(c.code, 999);
        assert_eq!(c.msg, "outer: boom");
    }

    #[test]
    fn json_shape() {
        let c = CniError::new(Code::Decode, "bad").with_details("x");
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": 6, "msg": "bad", "details": "x"})
        );
    }
}

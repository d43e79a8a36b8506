//! istio-token: the ServiceAccount token from a TokenRequest (audience
//! `istio-ca`), a compact JWS. Only the claims are decoded; the signature can
//! only be checked by the API server (istiod does it with a TokenReview).
//!
//! Errors never quote the token: it is a credential.

use std::fmt;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

/// The audience istiod's CA and XDS server expect (`TOKEN_AUDIENCES` default).
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// The header's `alg` (`RS256`; `none` would be an unsigned token).
    pub alg: String,
    /// Unix seconds.
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    /// `aud`, a string or an array of strings in the token.
    pub aud: Vec<String>,
    pub sub: Option<String>,
    pub iss: Option<String>,
    /// `kubernetes.io.namespace`.
    pub k8s_namespace: Option<String>,
    /// `kubernetes.io.serviceaccount.name`.
    pub k8s_service_account: Option<String>,
    /// `kubernetes.io.pod` is present: the token is bound to a pod.
    pub k8s_pod_bound: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    pub message: String,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TokenError {}

fn err(message: impl Into<String>) -> TokenError {
    TokenError {
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Aud {
    One(String),
    Many(Vec<String>),
}

/// A NumericDate; some issuers write fractions.
fn numeric_date(v: Option<&Value>, name: &str) -> Result<Option<i64>, TokenError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| err(format!("claim `{name}` is not a time"))),
        Some(_) => Err(err(format!("claim `{name}` is not a number"))),
    }
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    // base64url without padding per RFC 7515; tolerate padding.
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| err(format!("the {what} is not base64url")))
}

impl Claims {
    pub fn decode(bytes: &[u8]) -> Result<Claims, TokenError> {
        let text = std::str::from_utf8(bytes).map_err(|_| err("not text (not UTF-8)"))?;
        // istioctl writes no newline, but an editor may add one.
        let text = text.trim();
        if text.is_empty() {
            return Err(err("the file is empty"));
        }
        if text.chars().any(char::is_whitespace) {
            return Err(err("contains whitespace inside the token"));
        }
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() != 3 {
            return Err(err(format!(
                "has {} dot-separated parts, a JWT (compact JWS) has 3",
                parts.len()
            )));
        }
        let header: Value = serde_json::from_slice(&b64(parts[0], "header")?)
            .map_err(|_| err("the header is not JSON"))?;
        let Some(alg) = header
            .get("alg")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return Err(err("the header has no `alg`"));
        };
        if parts[2].is_empty() {
            return Err(err("the signature is empty (an unsigned token)"));
        }
        b64(parts[2], "signature")?;
        let payload: Value = serde_json::from_slice(&b64(parts[1], "payload")?)
            .map_err(|_| err("the payload is not JSON"))?;
        let Value::Object(p) = payload else {
            return Err(err("the payload is not a JSON object"));
        };
        let aud = match p.get("aud") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => match Aud::deserialize(v) {
                Ok(Aud::One(s)) => vec![s],
                Ok(Aud::Many(v)) => v,
                Err(_) => return Err(err("claim `aud` is not a string or a list of strings")),
            },
        };
        let string = |name: &str| -> Result<Option<String>, TokenError> {
            match p.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(err(format!("claim `{name}` is not a string"))),
            }
        };
        let k8s = p.get("kubernetes.io");
        let k8s_str = |ptr: &str| {
            k8s.and_then(|v| v.pointer(ptr))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Ok(Claims {
            alg,
            exp: numeric_date(p.get("exp"), "exp")?,
            nbf: numeric_date(p.get("nbf"), "nbf")?,
            iat: numeric_date(p.get("iat"), "iat")?,
            aud,
            sub: string("sub")?,
            iss: string("iss")?,
            k8s_namespace: k8s_str("/namespace"),
            k8s_service_account: k8s_str("/serviceaccount/name"),
            k8s_pod_bound: k8s.and_then(|v| v.get("pod")).is_some(),
        })
    }

    /// `(namespace, service account)` from `sub`
    /// (`system:serviceaccount:<ns>:<sa>`).
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let rest = self
            .sub
            .as_deref()?
            .strip_prefix("system:serviceaccount:")?;
        let (ns, sa) = rest.split_once(':')?;
        (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then_some((ns, sa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn jwt(payload: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.{}",
            e(r#"{"alg":"RS256","kid":"k"}"#),
            e(payload),
            e("sig")
        )
    }

    #[test]
    fn reference_payload() {
        let t = jwt(
            r#"{"aud":["istio-ca"],"exp":1767225600,"iat":1767222000,"nbf":1767222000,
            "iss":"https://kubernetes.default.svc.cluster.local",
            "kubernetes.io":{"namespace":"vm-apps","serviceaccount":{"name":"ratings-sa","uid":"u"}},
            "sub":"system:serviceaccount:vm-apps:ratings-sa"}"#,
        );
        let c = Claims::decode(format!("{t}\n").as_bytes()).unwrap();
        assert_eq!(c.exp, Some(1_767_225_600));
        assert_eq!(c.aud, ["istio-ca"]);
        assert_eq!(c.service_account(), Some(("vm-apps", "ratings-sa")));
        assert_eq!(c.k8s_namespace.as_deref(), Some("vm-apps"));
        assert_eq!(c.k8s_service_account.as_deref(), Some("ratings-sa"));
        assert!(!c.k8s_pod_bound);
    }

    #[test]
    fn aud_string_and_fractions() {
        let c = Claims::decode(jwt(r#"{"aud":"istio-ca","exp":1.5e9}"#).as_bytes()).unwrap();
        assert_eq!(c.aud, ["istio-ca"]);
        assert_eq!(c.exp, Some(1_500_000_000));
    }

    #[test]
    fn refused_without_echoing() {
        let good = jwt(r#"{"sub":"secret-ish"}"#);
        let two = good.rsplit_once('.').unwrap().0.to_string();
        let unsigned = format!("{two}.");
        for bad in [
            String::new(),
            two,
            unsigned,
            "a.b.c".to_string(),
            good.replace('.', ". "),
            jwt("[1]"),
            jwt(r#"{"exp":"soon"}"#),
            jwt(r#"{"aud":[1]}"#),
            jwt(r#"{"sub":5}"#),
        ] {
            let e = Claims::decode(bad.as_bytes()).unwrap_err();
            assert!(!e.message.contains("secret"));
        }
        assert!(Claims::decode(&[0xff, 0x2e, 0x2e]).is_err());
    }

    #[test]
    fn error_text_is_the_message() {
        let e = Claims::decode(b"a.b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "has 2 dot-separated parts, a JWT (compact JWS) has 3"
        );
    }

    #[test]
    fn service_account_needs_both_parts() {
        let sa = |sub: &str| {
            Claims {
                sub: Some(sub.into()),
                ..Claims::default()
            }
            .service_account()
            .map(|(n, s)| format!("{n}/{s}"))
        };
        assert_eq!(sa("system:serviceaccount:ns:sa").as_deref(), Some("ns/sa"));
        assert_eq!(sa("system:serviceaccount::sa"), None);
        assert_eq!(sa("system:serviceaccount:ns:"), None);
        assert_eq!(sa("system:serviceaccount:ns:sa:x"), None);
        assert_eq!(sa("system:serviceaccount:ns"), None);
        assert_eq!(sa("user:ns:sa"), None);
    }

    #[test]
    fn pod_binding_and_issuer() {
        let c = Claims::decode(
            jwt(r#"{"iss":"https://k8s","kubernetes.io":{"pod":{"name":"p"}},"nbf":null}"#)
                .as_bytes(),
        )
        .unwrap();
        assert!(c.k8s_pod_bound);
        assert_eq!(c.iss.as_deref(), Some("https://k8s"));
        assert_eq!(c.nbf, None);
    }

    proptest! {
        #[test]
        fn never_panics(s in "[A-Za-z0-9._=-]{0,80}") {
            let _ = Claims::decode(s.as_bytes());
        }
    }
}

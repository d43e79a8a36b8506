//! root-cert.pem and istio-token checks.

use super::{CERT_SOON_SECS, TOKEN_SOON_SECS};
use super::{HINT_NEW_TOKEN, SKEW_SECS, span_text, time_text};
use crate::bundle::root_cert::CertInfo;
use crate::bundle::token::{Claims, ISTIO_CA_AUDIENCE};
use crate::bundle::{ClusterEnv, ROOT_CERT, TOKEN};
use crate::report::Finding;

pub(super) fn check_certs(certs: &[CertInfo], now: i64, f: &mut Vec<Finding>) {
    let many = certs.len() > 1;
    for (i, c) in certs.iter().enumerate() {
        let which = if many {
            format!("certificate {} ({})", i + 1, c.subject)
        } else {
            format!("root certificate ({})", c.subject)
        };
        if c.not_after <= now {
            f.push(Finding::error(
                "cert.expired",
                Some(ROOT_CERT),
                format!("{which} expired at {}", time_text(c.not_after)),
                "the mesh root CA was rotated or this is an old bundle: take the current \
                 root-cert.pem from configmap istio-ca-root-cert (or regenerate the bundle)",
            ));
        } else if c.not_after - now < CERT_SOON_SECS {
            f.push(Finding::warning(
                "cert.expires_soon",
                Some(ROOT_CERT),
                format!(
                    "{which} expires at {} (in {})",
                    time_text(c.not_after),
                    span_text(c.not_after - now)
                ),
                "plan the root CA rotation: once istiod uses the new root, place the new \
                 root-cert.pem on this VM (re-run istio-vm install with a fresh bundle)",
            ));
        }
        if c.not_before > now + SKEW_SECS {
            f.push(Finding::error(
                "cert.not_yet_valid",
                Some(ROOT_CERT),
                format!(
                    "{which} is valid only from {} (in {})",
                    time_text(c.not_before),
                    span_text(c.not_before - now)
                ),
                "check this VM's clock (timedatectl; enable NTP): it is behind the CA's \
                 clock, and TLS to istiod will fail until it is right",
            ));
        }
        if !c.is_ca {
            f.push(Finding::error(
                "cert.not_ca",
                Some(ROOT_CERT),
                format!("{which} is not a CA certificate (basicConstraints CA is not set)"),
                "root-cert.pem must hold the mesh root CA, not a workload or leaf \
                 certificate: take it from configmap istio-ca-root-cert",
            ));
        }
        // A keyUsage extension without keyCertSign forbids signing
        // certificates (RFC 5280 4.2.1.3): Go's crypto/x509 (istiod, the
        // agent) and BoringSSL (Envoy) then refuse every chain through it.
        // Without the extension there is no restriction.
        if c.key_cert_sign == Some(false) {
            f.push(Finding::error(
                "cert.no_cert_sign",
                Some(ROOT_CERT),
                format!(
                    "{which} has a keyUsage extension without keyCertSign: it may not sign \
                     certificates, so no workload certificate would verify against it"
                ),
                "root-cert.pem must hold the mesh root CA as istiod uses it: take it from \
                 configmap istio-ca-root-cert (a CA made by hand needs keyUsage \
                 keyCertSign, cRLSign)",
            ));
        }
    }
}

pub(super) fn check_token(c: &Claims, env: Option<&ClusterEnv>, now: i64, f: &mut Vec<Finding>) {
    // `alg: none` is an unsigned token (RFC 7518 3.6): whatever its claims
    // say, anyone could have written it, and the API server's TokenReview
    // refuses it.
    if c.alg.eq_ignore_ascii_case("none") {
        f.push(Finding::error(
            "token.unsigned",
            Some(TOKEN),
            "token header says `alg: none`: an unsigned token, which istiod's token \
             review refuses",
            HINT_NEW_TOKEN,
        ));
    }
    if let Some(exp) = c.exp {
        if exp <= now {
            f.push(Finding::error(
                "token.expired",
                Some(TOKEN),
                format!(
                    "token expired at {} ({} ago)",
                    time_text(exp),
                    span_text(now.saturating_sub(exp))
                ),
                HINT_NEW_TOKEN,
            ));
        } else if exp.saturating_sub(now) < TOKEN_SOON_SECS {
            f.push(Finding::warning(
                "token.expires_soon",
                Some(TOKEN),
                format!(
                    "token expires at {} (in {})",
                    time_text(exp),
                    span_text(exp.saturating_sub(now))
                ),
                format!(
                    "the agent needs the token for its first certificate: install right \
                     away, or {HINT_NEW_TOKEN}"
                ),
            ));
        }
    }
    if let Some(nbf) = c.nbf
        && nbf.saturating_sub(SKEW_SECS) > now
    {
        f.push(Finding::error(
            "token.not_yet_valid",
            Some(TOKEN),
            format!(
                "token is valid only from {} (in {})",
                time_text(nbf),
                span_text(nbf.saturating_sub(now))
            ),
            "check this VM's clock (timedatectl; enable NTP): it is behind the cluster's",
        ));
    }
    if !c.aud.iter().any(|a| a == ISTIO_CA_AUDIENCE) {
        let has = if c.aud.is_empty() {
            "no audience (a legacy, non-expiring ServiceAccount secret token?)".to_string()
        } else {
            format!("audience {}", c.aud.join(", "))
        };
        f.push(Finding::error(
            "token.audience",
            Some(TOKEN),
            format!("token has {has}, istiod expects `{ISTIO_CA_AUDIENCE}`"),
            "use the token istioctl requests (audience istio-ca): re-run `istioctl x workload \
             entry configure`; or `kubectl create token <sa> -n <ns> --audience istio-ca`",
        ));
    }
    let Some(env) = env else { return };
    let (Some(ns), Some(sa)) = (env.get("POD_NAMESPACE"), env.get("SERVICE_ACCOUNT")) else {
        return;
    };
    let want = format!("system:serviceaccount:{ns}:{sa}");
    let sub = c.sub.as_deref().unwrap_or("");
    if sub != want {
        let got = if sub.is_empty() {
            "no subject".to_string()
        } else {
            format!("subject `{sub}`")
        };
        f.push(Finding::error(
            "token.subject_mismatch",
            Some(TOKEN),
            format!(
                "token has {got}, but cluster.env says POD_NAMESPACE={ns} and \
                 SERVICE_ACCOUNT={sa} (expected `{want}`); istiod would refuse the \
                 workload's identity"
            ),
            "the token and cluster.env come from different bundles: use the files of one \
             `istioctl x workload entry configure` run",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Severity;

    const NOW: i64 = 1_800_000_000;

    fn cert(not_before: i64, not_after: i64) -> CertInfo {
        CertInfo {
            subject: "O=cluster.local".into(),
            issuer: "O=cluster.local".into(),
            not_before,
            not_after,
            is_ca: true,
            key_cert_sign: Some(true),
            sha256: String::new(),
        }
    }

    fn cert_codes(certs: &[CertInfo]) -> Vec<(String, Severity)> {
        let mut f = Vec::new();
        check_certs(certs, NOW, &mut f);
        f.into_iter().map(|f| (f.code, f.severity)).collect()
    }

    fn code(c: &str, s: Severity) -> (String, Severity) {
        (c.to_string(), s)
    }

    #[test]
    fn cert_time_limits_are_exact() {
        let year = 365 * 86_400;
        assert!(cert_codes(&[cert(NOW - year, NOW + year)]).is_empty());
        assert_eq!(
            cert_codes(&[cert(NOW - year, NOW)]),
            [code("cert.expired", Severity::Error)]
        );
        assert!(cert_codes(&[cert(NOW - year, NOW + CERT_SOON_SECS)]).is_empty());
        assert_eq!(
            cert_codes(&[cert(NOW - year, NOW + CERT_SOON_SECS - 1)]),
            [code("cert.expires_soon", Severity::Warning)]
        );
        assert!(cert_codes(&[cert(NOW + SKEW_SECS, NOW + year)]).is_empty());
        assert_eq!(
            cert_codes(&[cert(NOW + SKEW_SECS + 1, NOW + year)]),
            [code("cert.not_yet_valid", Severity::Error)]
        );
    }

    #[test]
    fn soon_means_30_days_for_certs_and_10_minutes_for_tokens() {
        let day = 86_400;
        assert_eq!(
            cert_codes(&[cert(NOW - day, NOW + 29 * day)]),
            [code("cert.expires_soon", Severity::Warning)]
        );
        assert!(cert_codes(&[cert(NOW - day, NOW + 31 * day)]).is_empty());
        let exp = |secs: i64| Claims {
            exp: Some(NOW + secs),
            ..claims()
        };
        assert_eq!(
            token_codes(&exp(9 * 60), None),
            [code("token.expires_soon", Severity::Warning)]
        );
        assert!(token_codes(&exp(11 * 60), None).is_empty());
    }

    #[test]
    fn cert_must_be_a_ca_that_may_sign() {
        let year = 365 * 86_400;
        let mut c = cert(NOW - year, NOW + year);
        c.key_cert_sign = None;
        assert!(cert_codes(&[c.clone()]).is_empty());
        c.key_cert_sign = Some(false);
        assert_eq!(
            cert_codes(&[c.clone()]),
            [code("cert.no_cert_sign", Severity::Error)]
        );
        c.key_cert_sign = Some(true);
        c.is_ca = false;
        assert_eq!(cert_codes(&[c]), [code("cert.not_ca", Severity::Error)]);
    }

    #[test]
    fn messages_and_hints_are_single_spaced() {
        let mut c = cert(NOW + 86_400, NOW);
        c.is_ca = false;
        c.key_cert_sign = Some(false);
        let mut f = Vec::new();
        check_certs(&[c], NOW, &mut f);
        let bad = Claims {
            alg: "none".into(),
            exp: Some(NOW + 1),
            nbf: Some(NOW + 86_400),
            aud: vec![],
            sub: None,
            ..Default::default()
        };
        let env = ClusterEnv::parse(b"POD_NAMESPACE=ns\nSERVICE_ACCOUNT=sa\n").unwrap();
        check_token(&bad, Some(&env), NOW, &mut f);
        assert_eq!(f.len(), 9, "{f:?}");
        for f in &f {
            assert!(!f.message.contains("  ") && !f.hint.contains("  "), "{f:?}");
        }
    }

    #[test]
    fn certs_are_numbered_when_there_are_several() {
        let year = 365 * 86_400;
        let mut f = Vec::new();
        check_certs(&[cert(NOW - year, NOW)], NOW, &mut f);
        assert!(
            f[0].message
                .starts_with("root certificate (O=cluster.local) expired"),
            "{}",
            f[0].message
        );
        let mut f = Vec::new();
        check_certs(
            &[cert(NOW - year, NOW + year), cert(NOW - year, NOW)],
            NOW,
            &mut f,
        );
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message
                .starts_with("certificate 2 (O=cluster.local) expired"),
            "{}",
            f[0].message
        );
    }

    fn claims() -> Claims {
        Claims {
            alg: "RS256".into(),
            exp: Some(NOW + 3600),
            aud: vec!["istio-ca".into()],
            sub: Some("system:serviceaccount:ns:sa".into()),
            ..Default::default()
        }
    }

    fn token_codes(c: &Claims, env: Option<&ClusterEnv>) -> Vec<(String, Severity)> {
        let mut f = Vec::new();
        check_token(c, env, NOW, &mut f);
        f.into_iter().map(|f| (f.code, f.severity)).collect()
    }

    #[test]
    fn token_time_limits_are_exact() {
        assert!(token_codes(&claims(), None).is_empty());
        let with = |exp: Option<i64>, nbf: Option<i64>| Claims {
            exp,
            nbf,
            ..claims()
        };
        assert!(token_codes(&with(None, None), None).is_empty());
        assert_eq!(
            token_codes(&with(Some(NOW), None), None),
            [code("token.expired", Severity::Error)]
        );
        assert!(token_codes(&with(Some(NOW + TOKEN_SOON_SECS), None), None).is_empty());
        assert_eq!(
            token_codes(&with(Some(NOW + TOKEN_SOON_SECS - 1), None), None),
            [code("token.expires_soon", Severity::Warning)]
        );
        assert!(token_codes(&with(None, Some(NOW + SKEW_SECS)), None).is_empty());
        assert_eq!(
            token_codes(&with(None, Some(NOW + SKEW_SECS + 1)), None),
            [code("token.not_yet_valid", Severity::Error)]
        );
    }

    #[test]
    fn token_alg_audience_and_subject() {
        let c = Claims {
            alg: "NONE".into(),
            ..claims()
        };
        assert_eq!(
            token_codes(&c, None),
            [code("token.unsigned", Severity::Error)]
        );
        let c = Claims {
            aud: vec!["api".into(), "istio-ca".into()],
            ..claims()
        };
        assert!(token_codes(&c, None).is_empty());
        let c = Claims {
            aud: vec!["api".into()],
            ..claims()
        };
        assert_eq!(
            token_codes(&c, None),
            [code("token.audience", Severity::Error)]
        );
        let env = |text: &str| ClusterEnv::parse(text.as_bytes()).unwrap();
        let good = env("POD_NAMESPACE=ns\nSERVICE_ACCOUNT=sa\n");
        assert!(token_codes(&claims(), Some(&good)).is_empty());
        // Without both keys there is nothing to compare with.
        assert!(
            token_codes(
                &Claims {
                    sub: None,
                    ..claims()
                },
                Some(&env("POD_NAMESPACE=ns\n"))
            )
            .is_empty()
        );
        let other = env("POD_NAMESPACE=ns\nSERVICE_ACCOUNT=other\n");
        let mut f = Vec::new();
        check_token(&claims(), Some(&other), NOW, &mut f);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "token.subject_mismatch");
        assert!(
            f[0].message
                .contains("expected `system:serviceaccount:ns:other`"),
            "{}",
            f[0].message
        );
        let mut f = Vec::new();
        check_token(
            &Claims {
                sub: None,
                ..claims()
            },
            Some(&good),
            NOW,
            &mut f,
        );
        assert!(
            f[0].message.starts_with("token has no subject"),
            "{}",
            f[0].message
        );
    }
}

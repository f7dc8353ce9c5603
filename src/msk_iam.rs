//! Amazon MSK IAM authentication (`KAFKA_SASL_MECHANISM=AWS_MSK_IAM`) as librdkafka's
//! SASL/OAUTHBEARER: the token is what AWS's own MSK signers (aws-msk-iam-sasl-signer for
//! Go, Python and JavaScript) produce, a SigV4-presigned URL for
//! `https://kafka.<region>.amazonaws.com/?Action=kafka-cluster%3AConnect`, valid 900 s,
//! with a `User-Agent` parameter added after signing, base64url-encoded without padding.
//!
//! librdkafka asks for a token when the client starts and again at 80% of the previous
//! token's lifetime, on its own timer: the Kafka clients' polling thread answers through
//! [`MskIam::oauth_token`], so an idle producer still has a fresh token when the broker
//! asks it to authenticate again. The lifetime is the presigned URL's, or shorter when the
//! credentials expire sooner.
//!
//! Signing is done here ([`sigv4`]) with `hmac` and `sha2`, and the credentials come from
//! [`crate::aws_credentials`]: the AWS SDK would bring an async runtime and an HTTP stack
//! into a synchronous processor for one signature every twelve minutes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use base64::Engine as _;
use log::{info, warn};
use rdkafka::client::OAuthToken;

use crate::aws_credentials::{self, CredentialCache, Credentials, Env};
use crate::config::Config;

/// The value of `KAFKA_SASL_MECHANISM` (the name the Java client uses).
pub const MECHANISM: &str = "AWS_MSK_IAM";
/// The service the signature is for.
const SERVICE: &str = "kafka-cluster";
/// The action a client needs to connect.
const ACTION: &str = "kafka-cluster:Connect";
/// How long a token is valid, as AWS's signers set it.
pub const TOKEN_EXPIRY: Duration = Duration::from_secs(900);
/// Identifies this client in the token, as the signers' `User-Agent` does theirs.
pub const USER_AGENT: &str = concat!("kinesis-kafka-replicator/", env!("CARGO_PKG_VERSION"));

/// A token and when it stops being valid.
pub struct Token {
    /// The OAUTHBEARER token: the presigned URL, base64url without padding.
    pub token: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// The presigned MSK connect URL for `region`, signed at `now` with `credentials`, with
/// `user_agent` appended after the signature. The parameters are in the order the Python
/// signer writes them (the broker reads them in any order).
pub fn presigned_url(
    credentials: &Credentials,
    region: &str,
    now: SystemTime,
    user_agent: &str,
) -> String {
    let amz_date = sigv4::amz_date(now);
    let host = format!("kafka.{region}.amazonaws.com");
    let scope = sigv4::Scope {
        date: &amz_date[..8],
        region,
        service: SERVICE,
    };
    let credential = format!("{}/{}", credentials.access_key_id, scope.path());
    let expires = TOKEN_EXPIRY.as_secs().to_string();
    let mut params: Vec<(&str, &str)> = vec![
        ("Action", ACTION),
        ("X-Amz-Algorithm", sigv4::ALGORITHM),
        ("X-Amz-Credential", &credential),
        ("X-Amz-Date", &amz_date),
        ("X-Amz-Expires", &expires),
        ("X-Amz-SignedHeaders", "host"),
    ];
    if let Some(session_token) = &credentials.session_token {
        params.push(("X-Amz-Security-Token", session_token));
    }
    let canonical_request = sigv4::canonical_request(
        "GET",
        "/",
        &sigv4::canonical_query(&params),
        &[("host", &host)],
        sigv4::EMPTY_PAYLOAD_SHA256,
    );
    let signature = sigv4::signature(
        &credentials.secret_access_key,
        &amz_date,
        &scope,
        &canonical_request,
    );
    let query: Vec<String> = params
        .iter()
        .chain([
            &("X-Amz-Signature", signature.as_str()),
            &("User-Agent", user_agent),
        ])
        .map(|(k, v)| format!("{}={}", sigv4::uri_encode(k), sigv4::uri_encode(v)))
        .collect();
    format!("https://{host}/?{}", query.join("&"))
}

/// The MSK IAM token for `region` at `now`: the presigned URL, base64url without padding.
/// It expires with the URL, or earlier with the credentials.
pub fn token(credentials: &Credentials, region: &str, now: SystemTime, user_agent: &str) -> Token {
    let url = presigned_url(credentials, region, now, user_agent);
    let signed_at = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut expires_at_ms = (signed_at + TOKEN_EXPIRY.as_secs() as i64) * 1000;
    if let Some(expiration) = credentials.expiration {
        let ms = expiration
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        expires_at_ms = expires_at_ms.min(ms);
    }
    Token {
        token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url),
        expires_at_ms,
    }
}

/// Where the region of the cluster was found, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionSource {
    BrokerHost,
    AwsRegion,
    KclRegion,
    AwsDefaultRegion,
}

impl RegionSource {
    fn describe(self) -> &'static str {
        match self {
            RegionSource::BrokerHost => "the broker host name",
            RegionSource::AwsRegion => "AWS_REGION",
            RegionSource::KclRegion => "KCL_REGION",
            RegionSource::AwsDefaultRegion => "AWS_DEFAULT_REGION",
        }
    }
}

/// The region an MSK broker host name names: `b-1.c.x1y2z3.c4.kafka.eu-west-1.amazonaws.com`,
/// `boot-abc.c1.kafka-serverless.us-east-1.amazonaws.com` (the first such host of the list).
pub fn region_from_bootstrap(bootstrap_servers: &str) -> Option<String> {
    bootstrap_servers.split(',').find_map(|server| {
        let host = server.trim();
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let labels: Vec<&str> = host.split('.').collect();
        let at = labels
            .iter()
            .position(|l| *l == "kafka" || *l == "kafka-serverless")?;
        let region = labels.get(at + 1)?;
        let rest = labels.get(at + 2..)?;
        let is_aws = rest.first().is_some_and(|d| *d == "amazonaws");
        let looks_like_region = region.split('-').count() >= 3
            && region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        (is_aws && looks_like_region).then(|| region.to_string())
    })
}

/// The region a token is signed for: the broker host name's (Java's aws-msk-iam-auth takes
/// it from there too, and it is the cluster's own), else `AWS_REGION`, `KCL_REGION`,
/// `AWS_DEFAULT_REGION`.
pub fn resolve_region(bootstrap_servers: &str, env: &Env) -> Result<(String, RegionSource)> {
    if let Some(region) = region_from_bootstrap(bootstrap_servers) {
        return Ok((region, RegionSource::BrokerHost));
    }
    for (name, source) in [
        ("AWS_REGION", RegionSource::AwsRegion),
        ("KCL_REGION", RegionSource::KclRegion),
        ("AWS_DEFAULT_REGION", RegionSource::AwsDefaultRegion),
    ] {
        if let Some(region) = env(name)
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
        {
            if !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                bail!("{name}={region:?} is not an AWS region; set it to the MSK cluster's region, such as eu-west-1");
            }
            return Ok((region, source));
        }
    }
    bail!("cannot tell the MSK cluster's region for AWS_MSK_IAM: the broker host names ({bootstrap_servers}) do not name one; set AWS_REGION to the cluster's region")
}

/// Makes the OAUTHBEARER tokens of one Kafka client.
pub struct MskIam {
    region: String,
    region_source: RegionSource,
    credentials: CredentialCache,
}

impl MskIam {
    /// For a client of `bootstrap_servers`, with credentials and region from `env`.
    pub fn new(bootstrap_servers: &str, env: Env) -> Result<MskIam> {
        let (region, region_source) = resolve_region(bootstrap_servers, &env)?;
        Ok(MskIam {
            region,
            region_source,
            credentials: CredentialCache::new(env),
        })
    }

    /// With the process environment.
    pub fn from_process_env(bootstrap_servers: &str) -> Result<MskIam> {
        Self::new(bootstrap_servers, aws_credentials::process_env())
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// A fresh token (librdkafka's refresh callback). The error is one line for the user.
    pub fn oauth_token(&self) -> Result<OAuthToken, String> {
        let credentials = self.credentials.get().map_err(|e| format!("{e:#}"))?;
        let now = SystemTime::now();
        let token = token(&credentials, &self.region, now, USER_AGENT);
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        if token.expires_at_ms <= now_ms + 1000 {
            return Err(format!(
                "the AWS credentials from {} have expired; renew them (or let the IAM role provide them)",
                credentials.source
            ));
        }
        info!(
            "MSK IAM: signed a token for region {} ({}) with credentials from {}, valid {} s",
            self.region,
            self.region_source.describe(),
            credentials.source,
            (token.expires_at_ms - now_ms) / 1000
        );
        Ok(OAuthToken {
            token: token.token,
            // The principal is the IAM identity the broker derives from the signature;
            // librdkafka only logs this name.
            principal_name: "msk-iam".into(),
            lifetime_ms: token.expires_at_ms,
        })
    }

    /// What to check when the broker refuses the token.
    pub fn refused_hint(&self) -> String {
        format!(
            "check that the IAM role allows kafka-cluster:Connect (and the topic actions) on this cluster, that the cluster has IAM access control enabled on this port (9098 with SASL_SSL), that {} ({}) is the cluster's region, and that the clock is right",
            self.region,
            self.region_source.describe()
        )
    }
}

/// The token maker of a client of `config`: `None` unless it uses AWS_MSK_IAM.
pub fn for_config(config: &Config) -> Result<Option<MskIam>> {
    if !config.msk_iam() {
        return Ok(None);
    }
    MskIam::from_process_env(config.kafka.bootstrap_servers.trim()).map(Some)
}

/// librdkafka's OAUTHBEARER refresh, for the clients' contexts: a token, or one line that
/// librdkafka reports as an authentication error (and retries in 10 s).
pub fn generate(msk_iam: Option<&MskIam>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
    let Some(msk_iam) = msk_iam else {
        return Err(format!("librdkafka asked for an OAUTHBEARER token, which the replicator makes only for KAFKA_SASL_MECHANISM={MECHANISM}").into());
    };
    msk_iam.oauth_token().map_err(|e| {
        warn!("MSK IAM: cannot sign a token: {e}");
        e.into()
    })
}

/// What librdkafka prefixes to a refresh callback's error.
const TOKEN_FAILURE: &str = "Failed to acquire SASL OAUTHBEARER token: ";

impl MskIam {
    /// The one line for an authentication error seen on a client: the token could not be
    /// made, or the broker refused it.
    pub fn authentication_failed(&self, servers: &str, reason: &str) -> String {
        match reason.split_once(TOKEN_FAILURE) {
            Some((_, cause)) => format!("cannot sign an MSK IAM token: {cause}"),
            None => format!(
                "Kafka at {servers} refused the MSK IAM token ({reason}); {}",
                self.refused_hint()
            ),
        }
    }
}

/// AWS Signature Version 4: the parts the MSK token needs (canonical request, string to
/// sign, signing key, presigned query), written after AWS's description
/// (docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html) and checked against
/// its published test vectors.
pub mod sigv4 {
    use std::fmt::Write as _;
    use std::time::{SystemTime, UNIX_EPOCH};

    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
    /// The SHA-256 of an empty payload: a GET's.
    pub const EMPTY_PAYLOAD_SHA256: &str =
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// The credential scope: `date/region/service/aws4_request`.
    pub struct Scope<'a> {
        /// `YYYYMMDD`
        pub date: &'a str,
        pub region: &'a str,
        pub service: &'a str,
    }

    impl Scope<'_> {
        pub fn path(&self) -> String {
            format!(
                "{}/{}/{}/aws4_request",
                self.date, self.region, self.service
            )
        }
    }

    pub fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }

    pub fn sha256_hex(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// `YYYYMMDDTHHMMSSZ` (UTC) of `time`.
    pub fn amz_date(time: SystemTime) -> String {
        let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = crate::aws_credentials::civil_from_days(days as i64);
        format!(
            "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    /// Percent-encodes all but the unreserved characters (A-Z a-z 0-9 - _ . ~), as SigV4
    /// wants for query names and values.
    pub fn uri_encode(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
        out
    }

    /// The canonical query string of raw (unencoded) pairs: encoded, sorted by name then
    /// value.
    pub fn canonical_query(params: &[(&str, &str)]) -> String {
        let mut encoded: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (uri_encode(k), uri_encode(v)))
            .collect();
        encoded.sort();
        encoded
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The canonical request. `headers` are the signed headers, names lowercase, sorted.
    pub fn canonical_request(
        method: &str,
        path: &str,
        canonical_query: &str,
        headers: &[(&str, &str)],
        payload_sha256: &str,
    ) -> String {
        let mut canonical_headers = String::new();
        for (name, value) in headers {
            let _ = writeln!(canonical_headers, "{name}:{}", value.trim());
        }
        let signed: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
        format!(
            "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{}\n{payload_sha256}",
            signed.join(";")
        )
    }

    pub fn string_to_sign(amz_date: &str, scope: &Scope<'_>, canonical_request: &str) -> String {
        format!(
            "{ALGORITHM}\n{amz_date}\n{}\n{}",
            scope.path(),
            sha256_hex(canonical_request.as_bytes())
        )
    }

    /// The hex signature of `canonical_request`.
    pub fn signature(
        secret_access_key: &str,
        amz_date: &str,
        scope: &Scope<'_>,
        canonical_request: &str,
    ) -> String {
        let key = [scope.date, scope.region, scope.service, "aws4_request"]
            .iter()
            .fold(
                format!("AWS4{secret_access_key}").into_bytes(),
                |key, part| hmac_sha256(&key, part.as_bytes()).to_vec(),
            );
        let to_sign = string_to_sign(amz_date, scope, canonical_request);
        hex(&hmac_sha256(&key, to_sign.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::sigv4::*;
    use super::*;

    /// The credentials of AWS's SigV4 test suite (aws-sig-v4-test-suite).
    const SUITE_KEY: &str = "AKIDEXAMPLE";
    const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SUITE_DATE: &str = "20150830T123600Z";

    fn suite_signature(query: &str) -> String {
        let scope = Scope {
            date: "20150830",
            region: "us-east-1",
            service: "service",
        };
        let request = canonical_request(
            "GET",
            "/",
            query,
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", SUITE_DATE),
            ],
            EMPTY_PAYLOAD_SHA256,
        );
        signature(SUITE_SECRET, SUITE_DATE, &scope, &request)
    }

    #[test]
    fn signer_core_matches_the_aws_sigv4_test_suite() {
        // get-vanilla: its canonical request, string to sign and signature as published.
        let request = canonical_request(
            "GET",
            "/",
            "",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", SUITE_DATE),
            ],
            EMPTY_PAYLOAD_SHA256,
        );
        assert_eq!(
            request,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let scope = Scope {
            date: "20150830",
            region: "us-east-1",
            service: "service",
        };
        assert_eq!(
            string_to_sign(SUITE_DATE, &scope, &request),
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        assert_eq!(
            suite_signature(""),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        // get-vanilla-query-order-key-case: ?Param2=value2&Param1=value1, sorted.
        assert_eq!(
            suite_signature(&canonical_query(&[
                ("Param2", "value2"),
                ("Param1", "value1")
            ])),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    #[test]
    fn presigning_matches_the_s3_query_string_example() {
        // AWS's example of a presigned URL ("Authenticating Requests: Using Query
        // Parameters", Amazon S3 API reference): GET /test.txt, 86400 s, unsigned payload.
        let amz_date = "20130524T000000Z";
        let scope = Scope {
            date: "20130524",
            region: "us-east-1",
            service: "s3",
        };
        let credential = format!("AKIAIOSFODNN7EXAMPLE/{}", scope.path());
        let query = canonical_query(&[
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", &credential),
            ("X-Amz-Date", amz_date),
            ("X-Amz-Expires", "86400"),
            ("X-Amz-SignedHeaders", "host"),
        ]);
        let request = canonical_request(
            "GET",
            "/test.txt",
            &query,
            &[("host", "examplebucket.s3.amazonaws.com")],
            "UNSIGNED-PAYLOAD",
        );
        assert_eq!(
            signature(
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                amz_date,
                &scope,
                &request
            ),
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    fn suite_credentials(session_token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: SUITE_KEY.into(),
            secret_access_key: SUITE_SECRET.into(),
            session_token: session_token.map(str::to_owned),
            expiration: None,
            source: "test".into(),
        }
    }

    /// 2015-08-30T12:36:00Z, the test suite's time.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    /// Tokens made by AWS's own Python signer, aws-msk-iam-sasl-signer-python 1.0.2 (on
    /// botocore 1.44), for the suite's credentials, us-east-1, at the suite's time
    /// (botocore's clock fixed there): its whole token must come out byte for byte.
    #[test]
    fn the_token_equals_aws_msk_iam_sasl_signer_python() {
        let ua = "aws-msk-iam-sasl-signer-python/1.0.2";
        let token = token(&suite_credentials(None), "us-east-1", suite_time(), ua);
        assert_eq!(token.token, "aHR0cHM6Ly9rYWZrYS51cy1lYXN0LTEuYW1hem9uYXdzLmNvbS8_QWN0aW9uPWthZmthLWNsdXN0ZXIlM0FDb25uZWN0JlgtQW16LUFsZ29yaXRobT1BV1M0LUhNQUMtU0hBMjU2JlgtQW16LUNyZWRlbnRpYWw9QUtJREVYQU1QTEUlMkYyMDE1MDgzMCUyRnVzLWVhc3QtMSUyRmthZmthLWNsdXN0ZXIlMkZhd3M0X3JlcXVlc3QmWC1BbXotRGF0ZT0yMDE1MDgzMFQxMjM2MDBaJlgtQW16LUV4cGlyZXM9OTAwJlgtQW16LVNpZ25lZEhlYWRlcnM9aG9zdCZYLUFtei1TaWduYXR1cmU9YzQxM2E4M2JjNjRhMzM5ZTMxYTVlNWU5ZWQ5OWQ3NzhmZjg0MzIwNmI0Mjc1NDBjYWZhNTEyMmMwMWUzZTk5MyZVc2VyLUFnZW50PWF3cy1tc2staWFtLXNhc2wtc2lnbmVyLXB5dGhvbiUyRjEuMC4y");
        // The signer's own expiry: signing time + 900 s.
        assert_eq!(token.expires_at_ms, 1_440_939_060_000);
        // With a session token (the STS example token of the AWS docs), signed too.
        let session = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
        let url = presigned_url(
            &suite_credentials(Some(session)),
            "us-east-1",
            suite_time(),
            ua,
        );
        assert_eq!(url, "https://kafka.us-east-1.amazonaws.com/?Action=kafka-cluster%3AConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fkafka-cluster%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=AQoDYXdzEPT%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI%2FqkPpKPi%2FkMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d%2Bxo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz%2BscqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR%2FoLxBA%3D%3D&X-Amz-Signature=7da19d2bd34a256a60afe69ad5a878c2b00d26df953c91dce2cec9a91b27808f&User-Agent=aws-msk-iam-sasl-signer-python%2F1.0.2");
    }

    #[test]
    fn the_token_expires_with_the_credentials_when_they_expire_first() {
        let mut credentials = suite_credentials(Some("t"));
        credentials.expiration = Some(suite_time() + Duration::from_secs(60));
        let token = token(&credentials, "us-east-1", suite_time(), USER_AGENT);
        assert_eq!(token.expires_at_ms, 1_440_938_220_000);
        assert!(!token.token.contains('='));
    }

    #[test]
    fn the_region_comes_from_the_broker_host_then_the_environment() {
        let none = |_: &str| None;
        for (servers, region) in [
            (
                "b-1.mycluster.ab12cd.c2.kafka.eu-west-1.amazonaws.com:9098,b-2.mycluster.ab12cd.c2.kafka.eu-west-1.amazonaws.com:9098",
                Some("eu-west-1"),
            ),
            (
                "boot-abcd1234.c1.kafka-serverless.us-east-2.amazonaws.com:9098",
                Some("us-east-2"),
            ),
            ("localhost:9092", None),
            ("kafka.example.com:9098", None),
        ] {
            assert_eq!(region_from_bootstrap(servers).as_deref(), region, "{servers}");
            assert_eq!(
                resolve_region(servers, &(Box::new(none) as Env)).ok().map(|r| r.0),
                region.map(str::to_owned)
            );
        }
        let env: Env =
            Box::new(|name: &str| (name == "KCL_REGION").then(|| "ap-south-1".to_owned()));
        assert_eq!(
            resolve_region("localhost:9092", &env).unwrap(),
            ("ap-south-1".to_owned(), RegionSource::KclRegion)
        );
        let err = resolve_region("localhost:9092", &(Box::new(none) as Env)).unwrap_err();
        assert!(err.to_string().contains("set AWS_REGION"), "{err}");
    }
}

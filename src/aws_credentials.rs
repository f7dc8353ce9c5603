//! AWS credentials for MSK IAM, found where the AWS SDKs' default chain looks, in its
//! order: the environment (`AWS_ACCESS_KEY_ID`, …), the shared profile files
//! (`~/.aws/credentials`, `~/.aws/config`, `AWS_PROFILE`), a web identity token file
//! (IRSA on EKS: `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, through STS
//! AssumeRoleWithWebIdentity), the container endpoint (ECS task role, EKS Pod Identity:
//! `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` / `_FULL_URI`), then the EC2 instance metadata
//! service (IMDSv2).
//!
//! Synchronous and small on purpose: tokens are signed on librdkafka's polling thread
//! every twelve minutes, with short timeouts. Secrets never reach a message: errors name
//! the source and what to change, never a key, a token or a response body.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use log::debug;
use serde::Deserialize;

/// Where settings are read from: the process environment, or a test's.
pub type Env = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment.
pub fn process_env() -> Env {
    Box::new(|name| std::env::var(name).ok())
}

/// Credentials are fetched again when they expire within this: a token signed with them
/// then lives its full 900 s.
const REFRESH_MARGIN: Duration = Duration::from_secs(16 * 60);
/// The container endpoint of ECS (with a relative URI).
const ECS_ENDPOINT: &str = "http://169.254.170.2";
const IMDS_ENDPOINT: &str = "http://169.254.169.254";
const STS_VERSION: &str = "2011-06-15";

/// What to do when no source has credentials.
pub const NO_CREDENTIALS: &str = "no AWS credentials found for AWS_MSK_IAM: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or AWS_PROFILE, or run with an IAM role (IRSA: AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE; EKS Pod Identity or the ECS task role; an EC2 instance profile)";

#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// When they stop working; `None` for long-term keys.
    pub expiration: Option<SystemTime>,
    /// Where they came from, for messages ("the environment", "profile default", …).
    pub source: String,
}

/// Never prints a secret (nor the key id).
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("source", &self.source)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// The credentials of one client, fetched again before they expire.
pub struct CredentialCache {
    env: Env,
    cached: Mutex<Option<Credentials>>,
}

impl CredentialCache {
    pub fn new(env: Env) -> CredentialCache {
        CredentialCache {
            env,
            cached: Mutex::new(None),
        }
    }

    /// Credentials valid for a whole token's life when the source allows it.
    pub fn get(&self) -> Result<Credentials> {
        let fresh_enough = |c: &Credentials| {
            c.expiration
                .is_none_or(|e| e > SystemTime::now() + REFRESH_MARGIN)
        };
        if let Ok(cached) = self.cached.lock() {
            if let Some(c) = cached.as_ref().filter(|c| fresh_enough(c)) {
                return Ok(c.clone());
            }
        }
        let credentials = load(&self.env)?;
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some(credentials.clone());
        }
        Ok(credentials)
    }
}

fn var(env: &Env, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The first credentials of the chain, or one line saying what to set.
pub fn load(env: &Env) -> Result<Credentials> {
    if let Some(c) = from_environment(env)? {
        return Ok(c);
    }
    if let Some(c) = from_profile(env)? {
        return Ok(c);
    }
    if let Some(c) = from_web_identity(env)? {
        return Ok(c);
    }
    if let Some(c) = from_container(env)? {
        return Ok(c);
    }
    if let Some(c) = from_instance_metadata(env)? {
        return Ok(c);
    }
    bail!(NO_CREDENTIALS)
}

fn from_environment(env: &Env) -> Result<Option<Credentials>> {
    match (
        var(env, "AWS_ACCESS_KEY_ID"),
        var(env, "AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(Credentials {
            access_key_id,
            secret_access_key,
            session_token: var(env, "AWS_SESSION_TOKEN").or_else(|| var(env, "AWS_SECURITY_TOKEN")),
            expiration: None,
            source: "the environment (AWS_ACCESS_KEY_ID)".into(),
        })),
        (Some(_), None) => bail!("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; set both, or neither to use the IAM role"),
        (None, Some(_)) => bail!("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not; set both, or neither to use the IAM role"),
        (None, None) => Ok(None),
    }
}

/// The sections of an INI file: name → key → value.
fn parse_ini(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.trim().to_owned(), Vec::new()));
        } else if let (Some((key, value)), Some(section)) =
            (line.split_once('='), sections.last_mut())
        {
            section
                .1
                .push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    sections
}

fn from_profile(env: &Env) -> Result<Option<Credentials>> {
    let explicit = var(env, "AWS_PROFILE");
    let profile = explicit.clone().unwrap_or_else(|| "default".into());
    let home = var(env, "HOME").map(PathBuf::from);
    let credentials_file = var(env, "AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
    let config_file = var(env, "AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
    // The credentials file names sections `name`, the config file `profile name`
    // (`default` stays `default`); the credentials file wins.
    let candidates = [
        (credentials_file, profile.clone()),
        (config_file, format!("profile {profile}")),
    ];
    let mut found = false;
    let mut keys: Vec<(String, String)> = Vec::new();
    for (path, section) in candidates {
        let Some(path) = path else { continue };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (name, entries) in parse_ini(&text) {
            if name == section || (profile == "default" && name == "default") {
                found = true;
                for entry in entries {
                    if !keys.iter().any(|(k, _)| *k == entry.0) {
                        keys.push(entry);
                    }
                }
            }
        }
    }
    let get = |key: &str| {
        keys.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    if !found {
        if let Some(name) = explicit {
            bail!("AWS_PROFILE={name} but no profile of that name is in the AWS credentials or config file; fix AWS_PROFILE or the files (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE)");
        }
        return Ok(None);
    }
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(Credentials {
            access_key_id,
            secret_access_key,
            session_token: get("aws_session_token"),
            expiration: None,
            source: format!("profile {profile}"),
        })),
        _ => {
            let other = [
                "role_arn",
                "credential_process",
                "sso_session",
                "sso_start_url",
                "web_identity_token_file",
            ]
            .into_iter()
            .find(|k| get(k).is_some());
            match other {
                Some(kind) => bail!("AWS profile {profile} gets its credentials with {kind}, which the replicator does not support; give the profile aws_access_key_id and aws_secret_access_key, or run with an IAM role (IRSA, ECS task role, instance profile) and no profile"),
                // A profile with only settings (region, say): look further.
                None => Ok(None),
            }
        }
    }
}

fn from_web_identity(env: &Env) -> Result<Option<Credentials>> {
    let Some(token_file) = var(env, "AWS_WEB_IDENTITY_TOKEN_FILE") else {
        return Ok(None);
    };
    let Some(role_arn) = var(env, "AWS_ROLE_ARN") else {
        bail!("AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not; set the role to assume (with IRSA, annotate the service account with eks.amazonaws.com/role-arn)");
    };
    let web_identity_token = std::fs::read_to_string(&token_file)
        .map_err(|e| anyhow!("cannot read the web identity token file {token_file} (AWS_WEB_IDENTITY_TOKEN_FILE): {e}; check the service account's token volume"))?;
    let session_name = var(env, "AWS_ROLE_SESSION_NAME").unwrap_or_else(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("kinesis-kafka-replicator-{ms}")
    });
    let endpoint = sts_endpoint(env);
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", STS_VERSION),
        ("RoleArn", role_arn.as_str()),
        ("RoleSessionName", session_name.as_str()),
        ("WebIdentityToken", web_identity_token.trim()),
    ];
    let (status, body) = http::post_form(&endpoint, &form, Duration::from_secs(10))
        .map_err(|e| anyhow!("cannot reach STS at {endpoint} to assume {role_arn} with the web identity token: {e}; check the network (and AWS_REGION, AWS_ENDPOINT_URL_STS)"))?;
    if !(200..300).contains(&status) {
        let code = xml_text(&body, "Code").unwrap_or_else(|| format!("HTTP {status}"));
        let message = xml_text(&body, "Message").unwrap_or_default();
        bail!("STS refused AssumeRoleWithWebIdentity for {role_arn}: {code}: {message}; check the role's trust policy for this service account (IRSA) and the token's audience (sts.amazonaws.com)");
    }
    let field = |name: &str| {
        xml_text(&body, name).ok_or_else(|| {
            anyhow!("STS at {endpoint} answered AssumeRoleWithWebIdentity without {name}; check AWS_ENDPOINT_URL_STS")
        })
    };
    let expiration = field("Expiration")?;
    Ok(Some(Credentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: Some(field("SessionToken")?),
        expiration: Some(
            parse_time(&expiration)
                .with_context(|| format!("STS at {endpoint} gave an unreadable Expiration"))?,
        ),
        source: format!("web identity (role {role_arn})"),
    }))
}

/// STS's endpoint: `AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`, else the regional one (the
/// SDKs' default), else the global one.
fn sts_endpoint(env: &Env) -> String {
    if let Some(url) = var(env, "AWS_ENDPOINT_URL_STS").or_else(|| var(env, "AWS_ENDPOINT_URL")) {
        return url;
    }
    match var(env, "AWS_REGION")
        .or_else(|| var(env, "AWS_DEFAULT_REGION"))
        .or_else(|| var(env, "KCL_REGION"))
    {
        Some(region) if region.starts_with("cn-") => {
            format!("https://sts.{region}.amazonaws.com.cn/")
        }
        Some(region) => format!("https://sts.{region}.amazonaws.com/"),
        None => "https://sts.amazonaws.com/".into(),
    }
}

/// The text of the first `<name>…</name>`, entities decoded.
fn xml_text(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&close)?;
    let text = body[start..end]
        .trim()
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    Some(text)
}

/// The JSON of the container endpoint and of IMDS.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonCredentials {
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    token: Option<String>,
    expiration: Option<String>,
    code: Option<String>,
    message: Option<String>,
}

impl JsonCredentials {
    fn into_credentials(self, source: String) -> Result<Credentials> {
        if let Some(code) = self.code.filter(|c| c != "Success") {
            bail!(
                "{source} answered {code}: {}",
                self.message.unwrap_or_default()
            );
        }
        let (Some(access_key_id), Some(secret_access_key)) =
            (self.access_key_id, self.secret_access_key)
        else {
            bail!("{source} answered without AccessKeyId and SecretAccessKey");
        };
        let expiration = match self.expiration {
            Some(e) => Some(
                parse_time(&e)
                    .with_context(|| format!("{source} gave an unreadable Expiration"))?,
            ),
            None => None,
        };
        Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: self.token,
            expiration,
            source,
        })
    }
}

fn from_container(env: &Env) -> Result<Option<Credentials>> {
    let url = match (
        var(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        var(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI"),
    ) {
        (Some(relative), _) => format!("{ECS_ENDPOINT}{relative}"),
        (None, Some(full)) => full,
        (None, None) => return Ok(None),
    };
    let authorization = match var(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| anyhow!("cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {path}: {e}; check the pod's EKS Pod Identity token volume"))?
                .trim()
                .to_owned(),
        ),
        None => var(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN"),
    };
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let source =
        "the container credentials endpoint (ECS task role or EKS Pod Identity)".to_owned();
    let (status, body) = http::get(&url, &headers, Duration::from_secs(5)).map_err(|e| {
        anyhow!(
            "cannot reach {source} at {url}: {e}; check the task role or pod identity association"
        )
    })?;
    if !(200..300).contains(&status) {
        bail!("{source} at {url} answered HTTP {status}; check the task role or the pod identity association");
    }
    let json: JsonCredentials = serde_json::from_str(&body)
        .map_err(|e| anyhow!("{source} at {url} answered something unreadable ({e})"))?;
    json.into_credentials(source).map(Some)
}

fn from_instance_metadata(env: &Env) -> Result<Option<Credentials>> {
    if var(env, "AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let endpoint =
        var(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| IMDS_ENDPOINT.into());
    let endpoint = endpoint.trim_end_matches('/');
    let timeout = Duration::from_secs(2);
    // Off EC2 nothing answers: that is "no credentials here", not an error.
    let Ok((status, token)) = http::put(
        &format!("{endpoint}/latest/api/token"),
        &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
        timeout,
    ) else {
        debug!("no EC2 instance metadata service at {endpoint}");
        return Ok(None);
    };
    if !(200..300).contains(&status) {
        debug!(
            "the EC2 instance metadata service at {endpoint} answered HTTP {status} for a token"
        );
        return Ok(None);
    }
    let auth = [("X-aws-ec2-metadata-token", token.trim())];
    let base = format!("{endpoint}/latest/meta-data/iam/security-credentials/");
    let (status, roles) = http::get(&base, &auth, timeout)
        .map_err(|e| anyhow!("the EC2 instance metadata service stopped answering: {e}"))?;
    let Some(role) = roles
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .filter(|_| status == 200)
    else {
        bail!("this EC2 instance has no IAM role (instance profile); attach one that allows kafka-cluster:Connect, or set AWS credentials");
    };
    let (status, body) = http::get(&format!("{base}{role}"), &auth, timeout)
        .map_err(|e| anyhow!("the EC2 instance metadata service stopped answering: {e}"))?;
    let source = format!("the EC2 instance profile (role {role})");
    if status != 200 {
        bail!("{source}: the instance metadata service answered HTTP {status}");
    }
    let json: JsonCredentials =
        serde_json::from_str(&body).map_err(|e| anyhow!("{source}: unreadable answer ({e})"))?;
    json.into_credentials(source).map(Some)
}

/// `2019-11-09T13:34:41Z` (fractions and a `+00:00` offset allowed) as a time.
pub fn parse_time(text: &str) -> Result<SystemTime> {
    let text = text.trim();
    let bad = || anyhow!("{text:?} is not a UTC date and time (YYYY-MM-DDTHH:MM:SSZ)");
    let b = text.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64> {
        text.get(range)
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        rest = fraction.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    if !matches!(rest, "Z" | "z" | "+00:00" | "")
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || s > 60
    {
        return Err(bad());
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s;
    u64::try_from(secs)
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
        .map_err(|_| bad())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The few HTTP calls of the chain, with bounded timeouts. Answers are (status, body); a
/// status is never an error here, so that callers can say what it means.
mod http {
    use std::time::Duration;

    use ureq::tls::{TlsConfig, TlsProvider};
    use ureq::Agent;

    fn agent(url: &str, timeout: Duration) -> Agent {
        let local = [
            "http://127.",
            "http://localhost",
            "http://[::1]",
            "http://169.254.",
        ]
        .iter()
        .any(|p| url.starts_with(p));
        let config = Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(2))))
            .http_status_as_error(false)
            .max_redirects(0)
            // HTTPS with the system's OpenSSL, which librdkafka links already.
            .tls_config(
                TlsConfig::builder()
                    .provider(TlsProvider::NativeTls)
                    .build(),
            )
            // A proxy from the environment for STS; never for link-local endpoints.
            .proxy(if local {
                None
            } else {
                ureq::Proxy::try_from_env()
            })
            .build();
        Agent::new_with_config(config)
    }

    fn finish(
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String), String> {
        let mut response = response.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    pub fn get(
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        let mut request = agent(url, timeout).get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        finish(request.call())
    }

    pub fn put(
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        let mut request = agent(url, timeout).put(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        finish(request.send_empty())
    }

    pub fn post_form(
        url: &str,
        form: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        finish(
            agent(url, timeout)
                .post(url)
                .send_form(form.iter().copied()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Box::new(move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn dates_round_trip() {
        let t = parse_time("2015-08-30T12:36:00Z").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_440_938_160));
        assert_eq!(parse_time("2015-08-30T12:36:00.123+00:00").unwrap(), t);
        assert_eq!(civil_from_days(16_677), (2015, 8, 30));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        for bad in [
            "",
            "yesterday",
            "2015-13-30T12:36:00Z",
            "2015-08-30T12:36:00+02:00",
            "2015-08-30T1é:36:00Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_credentials_come_first() {
        let c = load(&env(&[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "session"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent"),
        ]))
        .unwrap();
        assert_eq!(c.access_key_id, "AKIDEXAMPLE");
        assert_eq!(c.secret_access_key, "secret");
        assert_eq!(c.session_token.as_deref(), Some("session"));
        assert_eq!(c.expiration, None);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("AKID") && !shown.contains("session\""),
            "{shown}"
        );
        let err = load(&env(&[("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")])).unwrap_err();
        assert!(
            err.to_string().contains("AWS_SECRET_ACCESS_KEY is not"),
            "{err}"
        );
    }

    #[test]
    fn profiles_are_read_from_the_shared_files() {
        let dir = std::env::temp_dir().join(format!("kkr-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let credentials = dir.join("credentials");
        let config = dir.join("config");
        std::fs::write(&credentials, "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n\n[other]\naws_access_key_id=AKIDOTHER\naws_secret_access_key=s2\naws_session_token=t2\n").unwrap();
        std::fs::write(&config, "[profile assumed]\nrole_arn = arn:aws:iam::123456789012:role/r\nsource_profile = default\n").unwrap();
        let files = |profile: Option<&str>| {
            let mut pairs = vec![
                ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
                ("AWS_CONFIG_FILE", config.to_str().unwrap()),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ];
            if let Some(p) = profile {
                pairs.push(("AWS_PROFILE", p));
            }
            env(&pairs)
        };
        assert_eq!(load(&files(None)).unwrap().access_key_id, "AKIDDEFAULT");
        let other = load(&files(Some("other"))).unwrap();
        assert_eq!(other.session_token.as_deref(), Some("t2"));
        assert_eq!(other.source, "profile other");
        let err = load(&files(Some("assumed"))).unwrap_err().to_string();
        assert!(
            err.contains("role_arn") && err.contains("does not support"),
            "{err}"
        );
        let err = load(&files(Some("missing"))).unwrap_err().to_string();
        assert!(err.contains("AWS_PROFILE=missing"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn nothing_found_says_what_to_set() {
        // IMDS on a loopback port nobody listens on: refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let err = load(&env(&[
            ("HOME", "/nonexistent"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint),
        ]))
        .unwrap_err()
        .to_string();
        assert_eq!(err, NO_CREDENTIALS);
        let err = load(&env(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("AWS_ROLE_ARN is not"), "{err}");
    }

    #[test]
    fn sts_errors_and_fields_are_read_from_its_xml() {
        let body = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity &amp; more</Message></Error></ErrorResponse>";
        assert_eq!(xml_text(body, "Code").as_deref(), Some("AccessDenied"));
        assert_eq!(
            xml_text(body, "Message").as_deref(),
            Some("Not authorized to perform sts:AssumeRoleWithWebIdentity & more")
        );
        assert_eq!(xml_text(body, "Missing"), None);
    }
}

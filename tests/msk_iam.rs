//! MSK IAM end to end on loopback: an STS stand-in that answers AssumeRoleWithWebIdentity,
//! and a Kafka front that speaks enough of the protocol (ApiVersions, SaslHandshake,
//! SaslAuthenticate, Metadata) to check each OAUTHBEARER token as MSK would: its signature
//! with the secret STS issued, its action, its region, its expiry, and the credentials'.
//! The front tells librdkafka to authenticate again before the credentials expire
//! (KIP-368 session lifetime, as a broker does), so an idle producer that never refreshed
//! its token would be refused.
//!
//! librdkafka reads its credentials and region from the process environment, so everything
//! that sets it runs in one test, in order.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use kinesis_kafka_replicator::aws_credentials::{self, Env};
use kinesis_kafka_replicator::checkpoint::Frontier;
use kinesis_kafka_replicator::config::Config;
use kinesis_kafka_replicator::kafka::{check_topic, KafkaSink};
use kinesis_kafka_replicator::msk_iam::sigv4;

const ROLE: &str = "arn:aws:iam::123456789012:role/replicator";
const WEB_IDENTITY_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.web-identity.signature";

/// Credentials the STS stand-in issued: access key id → (secret, session token, expiry).
type Issued = Arc<Mutex<HashMap<String, (String, String, SystemTime)>>>;

/// An STS stand-in on loopback: each AssumeRoleWithWebIdentity with the right role and
/// token gets new credentials valid `lifetime`; anything else AccessDenied.
struct Sts {
    url: String,
    issued: Issued,
    calls: Arc<AtomicU64>,
}

fn iso8601(t: SystemTime) -> String {
    let d = sigv4::amz_date(t);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &d[0..4],
        &d[4..6],
        &d[6..8],
        &d[9..11],
        &d[11..13],
        &d[13..15]
    )
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

impl Sts {
    fn start(lifetime: Duration) -> Sts {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let issued: Issued = Arc::default();
        let calls = Arc::new(AtomicU64::new(0));
        let (issued2, calls2) = (issued.clone(), calls.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let n = calls2.fetch_add(1, Ordering::SeqCst) + 1;
                Self::answer(stream, n, lifetime, &issued2);
            }
        });
        Sts { url, issued, calls }
    }

    fn answer(stream: TcpStream, n: u64, lifetime: Duration, issued: &Issued) {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let form = parse_query(std::str::from_utf8(&body).unwrap());
        let get = |k: &str| {
            form.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.as_str())
        };
        let (status, xml) = if get("Action") == Some("AssumeRoleWithWebIdentity")
            && get("Version") == Some("2011-06-15")
            && get("RoleArn") == Some(ROLE)
            && get("WebIdentityToken") == Some(WEB_IDENTITY_TOKEN)
            && get("RoleSessionName").is_some_and(|s| !s.is_empty())
        {
            // Whole seconds, as STS writes them: the credentials may expire up to 1 s
            // before `lifetime`.
            let expiry = UNIX_EPOCH
                + Duration::from_secs(
                    (SystemTime::now() + lifetime)
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_secs(),
                );
            let key = format!("ASIASTANDIN{n:05}");
            let (secret, session) = (format!("secret/{n}+x"), format!("session&token/{n}="));
            issued
                .lock()
                .unwrap()
                .insert(key.clone(), (secret.clone(), session.clone(), expiry));
            (
                "200 OK",
                format!(
                    "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{}</SessionToken><Expiration>{}</Expiration></Credentials><AssumedRoleUser><Arn>{ROLE}/s</Arn></AssumedRoleUser></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
                    session.replace('&', "&amp;"),
                    iso8601(expiry)
                ),
            )
        } else {
            (
                "403 Forbidden",
                "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error></ErrorResponse>".to_owned(),
            )
        };
        let mut stream = reader.into_inner();
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        );
    }
}

fn env(pairs: Vec<(&'static str, String)>) -> Env {
    Box::new(move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
}

/// A web identity token file of its own (`name`: the tests run side by side).
fn token_file(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("kkr-web-identity-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn web_identity_credentials_come_from_sts() {
    let sts = Sts::start(Duration::from_secs(3600));
    let file = token_file("sts", WEB_IDENTITY_TOKEN);
    let chain = |token_path: &std::path::Path| {
        env(vec![
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                token_path.display().to_string(),
            ),
            ("AWS_ROLE_ARN", ROLE.into()),
            ("AWS_ENDPOINT_URL_STS", sts.url.clone()),
            ("HOME", "/nonexistent".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ])
    };
    let credentials = aws_credentials::load(&chain(&file)).unwrap();
    assert_eq!(credentials.access_key_id, "ASIASTANDIN00001");
    assert_eq!(credentials.secret_access_key, "secret/1+x");
    assert_eq!(
        credentials.session_token.as_deref(),
        Some("session&token/1=")
    );
    let expiry = credentials.expiration.expect("STS credentials expire");
    let left = expiry.duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
    assert!(credentials.source.contains(ROLE), "{}", credentials.source);

    // A token STS does not accept: its answer, in one line, without the token.
    let wrong = token_file("wrong", "not-the-token");
    let err = aws_credentials::load(&chain(&wrong))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("AccessDenied") && err.contains("trust policy") && !err.contains('\n'),
        "{err}"
    );
    assert!(!err.contains("not-the-token"), "{err}");
    assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
    std::fs::remove_file(file).ok();
    std::fs::remove_file(wrong).ok();
}

#[test]
fn environment_credentials_win_over_the_role() {
    let credentials = aws_credentials::load(&env(vec![
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".into()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        ),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent".into()),
        ("AWS_ROLE_ARN", ROLE.into()),
    ]))
    .unwrap();
    assert_eq!(credentials.access_key_id, "AKIDEXAMPLE");
    assert_eq!(credentials.session_token, None);
    assert_eq!(credentials.expiration, None);
}

/// A loopback HTTP server: each request, as (method, path, headers), gets `answer`'s
/// (status, body). Its base URL.
fn http_stand_in(
    answer: impl Fn(&str, &str, &[(String, String)]) -> (u16, String) + Send + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                continue;
            }
            let mut parts = request_line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_owned(),
                parts.next().unwrap_or("").to_owned(),
            );
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.trim_end().split_once(':') {
                    headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
                }
            }
            let (status, body) = answer(&method, &path, &headers);
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

const JSON_CREDENTIALS: &str = r#"{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"ASIAROLE","SecretAccessKey":"role/secret","Token":"role-session","Expiration":"2030-01-01T00:00:00Z"}"#;

#[test]
fn container_credentials_use_the_pod_identity_token() {
    let base = http_stand_in(|method, path, headers| {
        match (method, path, header(headers, "authorization")) {
            ("GET", "/v1/credentials", Some("pod-identity-token")) => {
                (200, JSON_CREDENTIALS.to_owned())
            }
            _ => (401, "{}".to_owned()),
        }
    });
    let good = token_file("container", "pod-identity-token\n");
    let bad = token_file("container-bad", "another-token");
    let chain = |token: &std::path::Path| {
        env(vec![
            ("HOME", "/nonexistent".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("{base}/v1/credentials"),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token.display().to_string(),
            ),
        ])
    };
    let credentials = aws_credentials::load(&chain(&good)).unwrap();
    assert_eq!(credentials.access_key_id, "ASIAROLE");
    assert_eq!(credentials.secret_access_key, "role/secret");
    assert_eq!(credentials.session_token.as_deref(), Some("role-session"));
    assert_eq!(
        credentials.expiration,
        Some(UNIX_EPOCH + Duration::from_secs(1_893_456_000))
    );
    let err = aws_credentials::load(&chain(&bad)).unwrap_err().to_string();
    assert!(
        err.contains("HTTP 401") && err.contains("pod identity"),
        "{err}"
    );
    assert!(!err.contains("another-token"), "{err}");
    std::fs::remove_file(good).ok();
    std::fs::remove_file(bad).ok();
}

#[test]
fn instance_metadata_credentials_use_an_imdsv2_session() {
    let imds = |role: Option<&'static str>| {
        http_stand_in(move |method, path, headers| {
            let token = header(headers, "x-aws-ec2-metadata-token");
            match (method, path) {
                ("PUT", "/latest/api/token")
                    if header(headers, "x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
                {
                    (200, "imds-session".to_owned())
                }
                (_, _) if token != Some("imds-session") => (401, String::new()),
                ("GET", "/latest/meta-data/iam/security-credentials/") => match role {
                    Some(role) => (200, format!("{role}\n")),
                    None => (404, String::new()),
                },
                ("GET", "/latest/meta-data/iam/security-credentials/replicator-role") => {
                    (200, JSON_CREDENTIALS.to_owned())
                }
                _ => (404, String::new()),
            }
        })
    };
    let chain = |endpoint: String| {
        env(vec![
            ("HOME", "/nonexistent".into()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint),
        ])
    };
    let credentials = aws_credentials::load(&chain(imds(Some("replicator-role")))).unwrap();
    assert_eq!(credentials.access_key_id, "ASIAROLE");
    assert!(
        credentials.source.contains("replicator-role"),
        "{}",
        credentials.source
    );
    let err = aws_credentials::load(&chain(imds(None)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no IAM role (instance profile)"), "{err}");
}

// ------------------------------------------------------------------------------------------
// The Kafka front.
// ------------------------------------------------------------------------------------------

/// What the front saw of each SaslAuthenticate.
#[derive(Debug, Clone)]
enum Auth {
    Accepted { access_key: String },
    Refused(String),
}

struct Front {
    bootstrap: String,
    auths: Arc<Mutex<Vec<Auth>>>,
}

impl Front {
    /// Checks tokens against the credentials `issued` by the STS stand-in (or `static_keys`)
    /// for `region`.
    fn start(region: &'static str, issued: Issued) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let auths: Arc<Mutex<Vec<Auth>>> = Arc::default();
        let auths2 = auths.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (issued, auths) = (issued.clone(), auths2.clone());
                thread::spawn(move || {
                    let _ = serve(stream, port, region, &issued, &auths);
                });
            }
        });
        Front {
            bootstrap: format!("127.0.0.1:{port}"),
            auths,
        }
    }

    fn auths(&self) -> Vec<Auth> {
        self.auths.lock().unwrap().clone()
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> std::io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(std::io::Error::other("short request"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn i16(&mut self) -> std::io::Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> std::io::Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn string(&mut self) -> std::io::Result<String> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(String::new());
        }
        Ok(String::from_utf8_lossy(self.take(n as usize)?).into_owned())
    }
    fn bytes(&mut self) -> std::io::Result<Vec<u8>> {
        let n = self.i32()?;
        Ok(self.take(n.max(0) as usize)?.to_vec())
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The API versions the front offers: ApiVersions, SaslHandshake, SaslAuthenticate, Metadata.
const APIS: [(i16, i16, i16); 4] = [(18, 0, 3), (17, 0, 1), (36, 0, 1), (3, 0, 1)];

fn serve(
    mut stream: TcpStream,
    port: u16,
    region: &str,
    issued: &Issued,
    auths: &Mutex<Vec<Auth>>,
) -> std::io::Result<()> {
    loop {
        let mut size = [0u8; 4];
        stream.read_exact(&mut size)?;
        let mut request = vec![0u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut request)?;
        let mut r = Reader(&request);
        let (api_key, version, correlation_id) = (r.i16()?, r.i16()?, r.i32()?);
        let _client_id = r.string()?;
        let mut body = Vec::new();
        match api_key {
            18 if version >= 3 => {
                // Flexible: compact array, tagged fields.
                body.extend_from_slice(&0i16.to_be_bytes());
                body.push(APIS.len() as u8 + 1);
                for (key, min, max) in APIS {
                    for v in [key, min, max] {
                        body.extend_from_slice(&v.to_be_bytes());
                    }
                    body.push(0);
                }
                body.extend_from_slice(&0i32.to_be_bytes());
                body.push(0);
            }
            18 => {
                body.extend_from_slice(&0i16.to_be_bytes());
                body.extend_from_slice(&(APIS.len() as i32).to_be_bytes());
                for (key, min, max) in APIS {
                    for v in [key, min, max] {
                        body.extend_from_slice(&v.to_be_bytes());
                    }
                }
                if version >= 1 {
                    body.extend_from_slice(&0i32.to_be_bytes());
                }
            }
            17 => {
                let mechanism = r.string()?;
                let error: i16 = if mechanism == "OAUTHBEARER" { 0 } else { 33 };
                body.extend_from_slice(&error.to_be_bytes());
                body.extend_from_slice(&1i32.to_be_bytes());
                put_str(&mut body, "OAUTHBEARER");
            }
            36 => {
                let auth_bytes = r.bytes()?;
                let verdict = check_client_first_message(&auth_bytes, region, issued);
                let (error, message, lifetime) = match &verdict {
                    Ok((key, expiry)) => {
                        auths.lock().unwrap().push(Auth::Accepted {
                            access_key: key.clone(),
                        });
                        // As a broker does: the session ends when the credentials do.
                        let left = expiry
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                            .as_millis() as i64;
                        (0i16, None, left.max(1))
                    }
                    Err(reason) => {
                        auths.lock().unwrap().push(Auth::Refused(reason.clone()));
                        (58i16, Some(reason.clone()), 0)
                    }
                };
                body.extend_from_slice(&error.to_be_bytes());
                match &message {
                    Some(m) => put_str(&mut body, m),
                    None => body.extend_from_slice(&(-1i16).to_be_bytes()),
                }
                body.extend_from_slice(&0i32.to_be_bytes());
                if version >= 1 {
                    body.extend_from_slice(&lifetime.to_be_bytes());
                }
                let refused = message.is_some();
                respond(&mut stream, correlation_id, &body)?;
                if refused {
                    return Ok(());
                }
                continue;
            }
            3 => {
                // One broker (this one, id 1), one topic "t" with one partition.
                body.extend_from_slice(&1i32.to_be_bytes());
                body.extend_from_slice(&1i32.to_be_bytes());
                put_str(&mut body, "127.0.0.1");
                body.extend_from_slice(&(port as i32).to_be_bytes());
                if version >= 1 {
                    body.extend_from_slice(&(-1i16).to_be_bytes()); // rack
                    body.extend_from_slice(&1i32.to_be_bytes()); // controller
                }
                body.extend_from_slice(&1i32.to_be_bytes());
                body.extend_from_slice(&0i16.to_be_bytes());
                put_str(&mut body, "t");
                if version >= 1 {
                    body.push(0); // is_internal
                }
                body.extend_from_slice(&1i32.to_be_bytes());
                body.extend_from_slice(&0i16.to_be_bytes());
                body.extend_from_slice(&0i32.to_be_bytes()); // partition 0
                body.extend_from_slice(&1i32.to_be_bytes()); // leader
                for _ in 0..2 {
                    // replicas, isr: [1]
                    body.extend_from_slice(&1i32.to_be_bytes());
                    body.extend_from_slice(&1i32.to_be_bytes());
                }
            }
            // Nothing else is offered: not answered.
            _ => continue,
        }
        respond(&mut stream, correlation_id, &body)?;
    }
}

fn respond(stream: &mut TcpStream, correlation_id: i32, body: &[u8]) -> std::io::Result<()> {
    let mut frame = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&correlation_id.to_be_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame)
}

/// Checks an OAUTHBEARER client first message (RFC 7628) carrying an MSK IAM token, as
/// MSK does; Ok: the access key and when its credentials expire.
fn check_client_first_message(
    message: &[u8],
    region: &str,
    issued: &Issued,
) -> Result<(String, SystemTime), String> {
    let message = std::str::from_utf8(message).map_err(|_| "not UTF-8".to_owned())?;
    let token = message
        .split('\x01')
        .find_map(|kv| kv.strip_prefix("auth=Bearer "))
        .ok_or_else(|| format!("no bearer token in {message:?}"))?;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| format!("token is not base64url without padding: {e}"))?;
    let url = String::from_utf8(url).map_err(|_| "token is not a URL".to_owned())?;
    let (base, query) = url.split_once('?').ok_or("no query in the URL")?;
    let host = format!("kafka.{region}.amazonaws.com");
    if base != format!("https://{host}/") {
        return Err(format!("signed for {base}, this cluster is {host}"));
    }
    let params = parse_query(query);
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("{k} missing"))
    };
    if get("Action")? != "kafka-cluster:Connect" {
        return Err("the action is not kafka-cluster:Connect".into());
    }
    if !get("User-Agent")?.starts_with("kinesis-kafka-replicator/") {
        return Err("unexpected User-Agent".into());
    }
    let credential = get("X-Amz-Credential")?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [key, date, cred_region, "kafka-cluster", "aws4_request"] = parts[..] else {
        return Err(format!("bad credential scope {credential}"));
    };
    if cred_region != region {
        return Err(format!("signed for region {cred_region}"));
    }
    let (secret, session, expiry) = issued
        .lock()
        .unwrap()
        .get(key)
        .cloned()
        .ok_or_else(|| format!("unknown access key {key}"))?;
    let now = SystemTime::now();
    if expiry <= now {
        return Err(format!("the credentials {key} have expired"));
    }
    if get("X-Amz-Security-Token")? != session {
        return Err("wrong session token".into());
    }
    let amz_date = get("X-Amz-Date")?;
    let signed_at = aws_credentials::parse_time(&format!(
        "{}-{}-{}T{}:{}:{}Z",
        &amz_date[0..4],
        &amz_date[4..6],
        &amz_date[6..8],
        &amz_date[9..11],
        &amz_date[11..13],
        &amz_date[13..15]
    ))
    .map_err(|e| e.to_string())?;
    let expires: u64 = get("X-Amz-Expires")?.parse().map_err(|_| "bad expiry")?;
    if signed_at + Duration::from_secs(expires) <= now || signed_at > now + Duration::from_secs(60)
    {
        return Err("the token has expired".into());
    }
    // The signature over every parameter but itself and the User-Agent.
    let signed: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| k != "X-Amz-Signature" && k != "User-Agent")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let request = sigv4::canonical_request(
        "GET",
        "/",
        &sigv4::canonical_query(&signed),
        &[("host", &host)],
        sigv4::EMPTY_PAYLOAD_SHA256,
    );
    let scope = sigv4::Scope {
        date,
        region,
        service: "kafka-cluster",
    };
    if sigv4::signature(&secret, &amz_date, &scope, &request) != get("X-Amz-Signature")? {
        return Err("the signature does not match".into());
    }
    Ok((key.to_owned(), expiry))
}

fn msk_config(bootstrap: &str) -> Config {
    Config::from_template(
        &format!(
            r#"{{"kafka":{{"bootstrap_servers":"{bootstrap}","topic":"t","security_protocol":"SASL_PLAINTEXT","sasl_mechanism":"AWS_MSK_IAM","properties":{{"enable.idempotence":"false","reconnect.backoff.ms":"100","reconnect.backoff.max.ms":"500"}}}}}}"#
        ),
        |_| None,
    )
    .unwrap()
}

/// The process environment of the MSK IAM client: credentials through the web identity
/// token file and the STS stand-in, region from AWS_REGION, no IMDS.
fn set_process_env(sts: &Sts, token_path: &std::path::Path) {
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "KCL_REGION",
    ] {
        std::env::remove_var(name);
    }
    std::env::set_var("HOME", "/nonexistent");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_REGION", "eu-west-1");
    std::env::set_var("AWS_ROLE_ARN", ROLE);
    std::env::set_var("AWS_WEB_IDENTITY_TOKEN_FILE", token_path);
    std::env::set_var("AWS_ENDPOINT_URL_STS", &sts.url);
}

/// The one line `--check-config` prints when the check fails.
fn check_fails(bootstrap: &str) -> String {
    match check_topic(&msk_config(bootstrap), "t", Duration::from_secs(10)) {
        Ok(_) => panic!("the check passed"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn an_idle_producer_keeps_authenticating_with_fresh_tokens_and_refusals_say_why() {
    // Credentials that live 10 s: the token lives as long, librdkafka asks for a new one at
    // 80% of that, and the front makes the producer authenticate again before each expiry.
    let _ = env_logger::builder().is_test(true).try_init();
    let sts = Sts::start(Duration::from_secs(10));
    let token_path = token_file("producer", WEB_IDENTITY_TOKEN);
    set_process_env(&sts, &token_path);
    let front = Front::start("eu-west-1", sts.issued.clone());

    // --check-config's client: signs, is accepted, finds the topic.
    let check = check_topic(&msk_config(&front.bootstrap), "t", Duration::from_secs(10))
        .expect("the check passes with a good token");
    assert_eq!((check.brokers, check.partitions), (1, 1));
    assert!(matches!(front.auths().first(), Some(Auth::Accepted { .. })));

    // A producer that sends nothing for 25 s.
    let before = front.auths().len();
    let frontier = Arc::new(Frontier::new());
    let sink = KafkaSink::new(&msk_config(&front.bootstrap), frontier).unwrap();
    let started = Instant::now();
    let keys = |front: &Front| {
        let mut keys: Vec<String> = front.auths()[before..]
            .iter()
            .filter_map(|a| match a {
                Auth::Accepted { access_key } => Some(access_key.clone()),
                Auth::Refused(_) => None,
            })
            .collect();
        keys.dedup();
        keys
    };
    while keys(&front).len() < 3 && started.elapsed() < Duration::from_secs(40) {
        thread::sleep(Duration::from_millis(200));
    }
    let auths = front.auths()[before..].to_vec();
    let refused: Vec<&str> = auths
        .iter()
        .filter_map(|a| match a {
            Auth::Refused(reason) => Some(reason.as_str()),
            Auth::Accepted { .. } => None,
        })
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert!(
        keys(&front).len() >= 3,
        "three sets of credentials (two refreshes) within {:?}: {auths:?}",
        started.elapsed()
    );
    assert_eq!(sink.last_client_error(), None);
    drop(sink);

    // A cluster in another region refuses the token: the check says so, and what to check.
    let elsewhere = Front::start("us-west-2", sts.issued.clone());
    let err = check_fails(&elsewhere.bootstrap);
    eprintln!("--check-config against a cluster in another region: {err}");
    assert!(
        err.contains("refused the MSK IAM token")
            && err.contains("eu-west-1 (AWS_REGION)")
            && !err.contains('\n'),
        "{err}"
    );

    // No credentials anywhere: the check says what to set, at once.
    std::env::remove_var("AWS_WEB_IDENTITY_TOKEN_FILE");
    let started = Instant::now();
    let err = check_fails(&front.bootstrap);
    eprintln!("--check-config without credentials: {err}");
    assert!(
        err.starts_with("cannot sign an MSK IAM token: no AWS credentials found")
            && err.contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // No secret in any message.
    for (_, (secret, session, _)) in sts.issued.lock().unwrap().iter() {
        assert!(!err.contains(secret.as_str()) && !err.contains(session.as_str()));
    }
    std::fs::remove_file(token_path).ok();
}

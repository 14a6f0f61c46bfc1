//! A protocol stand-in for Azure Key Vault: an HTTPS server (rustls, self-signed certificate from
//! rcgen) implementing the REST calls the official SDK makes for Kluis: the 401 bearer
//! challenge, get key, list key versions, wrapKey and unwrapKey with real RSA-OAEP-256 (`rsa`) or
//! AES key wrap (`aes-kw`), sign with real PS256 (`rsa`), disabled versions, revoked credentials (401/403) and throttling (429
//! with Retry-After). It checks what the SDK sends and records every violation.
//!
//! It is not Key Vault: no access policies or RBAC, no soft delete, no HSM attestation, no
//! rotation policies, no paging beyond one page, no regional failover.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};
use serde_json::json;

use super::http::{Handler, Request, Response, serve};

pub const API_VERSION: &str = "2025-07-01";
pub const TOKEN: &str = "kluis-test-token";
pub const HOST: &str = "kv.localhost";

pub enum Material {
    Rsa(Box<RsaPrivateKey>),
    Aes([u8; 32]),
}

pub struct Version {
    pub id: String,
    pub created: i64,
    pub enabled: bool,
    /// Key operations allowed on the version (Key Vault's `key_ops`).
    pub unwrap_allowed: bool,
    /// Whether `sign` is among the version's `key_ops`.
    pub sign_allowed: bool,
    pub material: Material,
}

#[derive(Debug, Clone)]
pub struct LogEntry {
    pub method: String,
    pub path: String,
    pub authorized: bool,
    pub at: Instant,
    pub status: u16,
}

#[derive(Default)]
pub struct State {
    pub keys: HashMap<String, Vec<Version>>,
    /// Answer every authorized request with this status (401 or 403): credentials revoked.
    pub revoked: Option<u16>,
    /// Answer this many requests with 429 first.
    pub throttle: u32,
    /// The Retry-After value sent with 429.
    pub retry_after: String,
    /// The status of the `throttle` answers: 429 (default) or a 5xx.
    pub throttle_status: u16,
    pub log: Vec<LogEntry>,
    /// What the SDK sent that Key Vault would not accept (must stay empty).
    pub violations: Vec<String>,
    /// Plaintext values seen in request bodies that must never be there (canary check).
    pub bodies: Vec<Vec<u8>>,
    /// Digests signed (PS256), in order.
    pub signed: Vec<Vec<u8>>,
    next_id: u64,
}

pub struct StandIn {
    pub state: Arc<Mutex<State>>,
    pub port: u16,
    pub cert_pem: String,
}

fn rsa_key(i: usize) -> RsaPrivateKey {
    let pem = match i % 2 {
        0 => include_str!("../data/test-rsa-1.pem"),
        _ => include_str!("../data/test-rsa-2.pem"),
    };
    RsaPrivateKey::from_pkcs8_pem(pem).unwrap()
}

impl State {
    /// Adds a version to `name` (creating the key): RSA (`hsm = false`) or AES (`hsm = true`).
    pub fn add_version(&mut self, name: &str, hsm: bool) -> String {
        self.next_id += 1;
        let id = format!("{:032x}", 0xabc0_0000_u64 + self.next_id);
        let n = self.keys.get(name).map_or(0, Vec::len);
        let material = if hsm {
            let mut k = [0u8; 32];
            getrandom_fill(&mut k);
            Material::Aes(k)
        } else {
            Material::Rsa(Box::new(rsa_key(n)))
        };
        self.keys.entry(name.to_owned()).or_default().push(Version {
            id: id.clone(),
            created: 1_700_000_000 + i64::try_from(self.next_id).unwrap(),
            enabled: true,
            unwrap_allowed: true,
            sign_allowed: true,
            material,
        });
        id
    }

    pub fn version_mut(&mut self, name: &str, id: &str) -> &mut Version {
        self.keys.get_mut(name).unwrap().iter_mut().find(|v| v.id == id).unwrap()
    }

    pub fn latest_id(&self, name: &str) -> String {
        self.keys[name].last().unwrap().id.clone()
    }

    pub fn count(&self, method: &str, suffix: &str) -> usize {
        self.log.iter().filter(|e| e.method == method && e.path.ends_with(suffix) && e.status == 200).count()
    }
}

fn getrandom_fill(b: &mut [u8]) {
    use rsa::rand_core::RngCore;
    rsa::rand_core::OsRng.fill_bytes(b);
}

fn b64d(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok().or_else(|| URL_SAFE.decode(s).ok())
}

fn b64e(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn error(status: u16, code: &str, message: &str, inner: Option<&str>) -> Response {
    let mut e = json!({"error": {"code": code, "message": message}});
    if let Some(i) = inner {
        e["error"]["innererror"] = json!({"code": i});
    }
    Response::json(status, e)
}

fn challenge() -> Response {
    error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", None).header(
        "www-authenticate",
        "Bearer authorization=\"https://login.microsoftonline.com/72f988bf-0000-0000-0000-000000000000\", resource=\"https://localhost\"",
    )
}

impl StandIn {
    pub async fn start() -> Self {
        let state =
            Arc::new(Mutex::new(State { retry_after: "1".into(), throttle_status: 429, ..State::default() }));
        let ck = rcgen::generate_simple_self_signed(vec![HOST.to_owned()]).unwrap();
        let cert_pem = ck.cert.pem();
        let cert_der = ck.cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key_der)
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        // The port is needed in key ids: the handler reads it from the state after binding.
        let port_cell = Arc::new(Mutex::new(0u16));
        let handler: Handler = {
            let state = state.clone();
            let port_cell = port_cell.clone();
            Arc::new(move |req| {
                let port = *port_cell.lock().unwrap();
                handle(&state, port, req)
            })
        };
        let addr = serve(handler, Some(acceptor)).await;
        *port_cell.lock().unwrap() = addr.port();
        Self { state, port: addr.port(), cert_pem }
    }

    pub fn endpoint(&self) -> String {
        format!("https://{HOST}:{}", self.port)
    }

    /// A reqwest client that trusts only the stand-in's certificate and resolves its host name.
    pub fn http_client(&self) -> reqwest::Client {
        let cert = reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([cert])
            .resolve(HOST, std::net::SocketAddr::from(([127, 0, 0, 1], self.port)))
            .build()
            .unwrap()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}

fn handle(state: &Mutex<State>, port: u16, req: Request) -> Response {
    let mut st = state.lock().unwrap();
    let authorized = req.headers.get("authorization").is_some_and(|a| a == &format!("Bearer {TOKEN}"));
    let resp = route(&mut st, port, &req, authorized);
    st.log.push(LogEntry {
        method: req.method.clone(),
        path: req.path.clone(),
        authorized,
        at: Instant::now(),
        status: resp.status,
    });
    resp
}

fn route(st: &mut State, port: u16, req: &Request, authorized: bool) -> Response {
    if req.query.get("api-version").map(String::as_str) != Some(API_VERSION) {
        st.violations.push(format!(
            "{} {}: api-version {:?}",
            req.method,
            req.path,
            req.query.get("api-version")
        ));
        return error(400, "BadParameter", "missing api-version", None);
    }
    if !authorized {
        if !req.body.is_empty() {
            // The SDK must not send a body before it has authenticated (Key Vault may require
            // a protected body; the SDK strips it from the challenge request).
            st.violations.push(format!("{} {}: body sent without a token", req.method, req.path));
        }
        if req.headers.contains_key("authorization") {
            return error(401, "Unauthorized", "AKV10032: Invalid issuer.", None).header(
                "www-authenticate",
                "Bearer authorization=\"https://login.microsoftonline.com/72f988bf-0000-0000-0000-000000000000\", resource=\"https://localhost\"",
            );
        }
        return challenge();
    }
    match st.revoked {
        Some(401) => {
            return error(401, "Unauthorized", "AKV10032: Token is expired or revoked.", None).header(
                "www-authenticate",
                "Bearer authorization=\"https://login.microsoftonline.com/72f988bf-0000-0000-0000-000000000000\", resource=\"https://localhost\"",
            );
        }
        Some(s) => {
            return error(
                s,
                "Forbidden",
                "The user, group or application does not have keys permission.",
                Some("ForbiddenByRbac"),
            );
        }
        None => {}
    }
    if st.throttle > 0 {
        st.throttle -= 1;
        let ra = st.retry_after.clone();
        if st.throttle_status >= 500 {
            return error(st.throttle_status, "InternalServerError", "The service is unavailable.", None);
        }
        return error(
            429,
            "Throttled",
            "Request was not processed because too many requests were received.",
            None,
        )
        .header("retry-after", &ra);
    }
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let kid = |name: &str, id: &str| format!("https://{HOST}:{port}/keys/{name}/{id}");
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["keys", name, "versions"]) => {
            let Some(vs) = st.keys.get(*name) else { return error(404, "KeyNotFound", "no such key", None) };
            let value: Vec<_> = vs
                .iter()
                .map(|v| json!({"kid": kid(name, &v.id), "attributes": {"enabled": v.enabled, "created": v.created, "updated": v.created, "recoveryLevel": "Recoverable+Purgeable"}}))
                .collect();
            Response::json(200, json!({"value": value, "nextLink": null}))
        }
        ("GET", ["keys", name]) | ("GET", ["keys", name, _]) => {
            let Some(vs) = st.keys.get(*name) else { return error(404, "KeyNotFound", "no such key", None) };
            let v = match segs.get(2) {
                Some(id) => vs.iter().find(|v| v.id == *id),
                None => vs.last(),
            };
            let Some(v) = v else { return error(404, "KeyNotFound", "no such key version", None) };
            let mut ops = vec!["wrapKey"];
            if v.unwrap_allowed {
                ops.push("unwrapKey");
            }
            if v.sign_allowed {
                ops.extend(["sign", "verify"]);
            }
            let ops = json!(ops);
            let key = match &v.material {
                Material::Rsa(k) => json!({"kid": kid(name, &v.id), "kty": "RSA", "key_ops": ops,
                    "n": b64e(&k.n().to_bytes_be()), "e": b64e(&k.e().to_bytes_be())}),
                Material::Aes(_) => json!({"kid": kid(name, &v.id), "kty": "oct-HSM", "key_ops": ops}),
            };
            Response::json(
                200,
                json!({"key": key, "attributes": {"enabled": v.enabled, "created": v.created, "updated": v.created, "recoveryLevel": "Recoverable+Purgeable"}}),
            )
        }
        ("POST", ["keys", name, id, "sign"]) => {
            let Ok(body) = serde_json::from_slice::<serde_json::Value>(&req.body) else {
                st.violations.push(format!("{}: body is not json", req.path));
                return error(400, "BadParameter", "body is not json", None);
            };
            st.bodies.push(req.body.clone());
            let Some(digest) = body["value"].as_str().and_then(b64d) else {
                st.violations.push(format!("{}: value missing or not base64url", req.path));
                return error(400, "BadParameter", "value", None);
            };
            if body["alg"].as_str() != Some("PS256") || digest.len() != 32 {
                st.violations.push(format!(
                    "{}: alg {:?}, digest of {} bytes",
                    req.path,
                    body["alg"],
                    digest.len()
                ));
                return error(400, "BadParameter", "algorithm or digest length", None);
            }
            let Some(v) = st.keys.get(*name).and_then(|vs| vs.iter().find(|v| v.id == *id)) else {
                return error(404, "KeyNotFound", "no such key version", None);
            };
            if !v.enabled {
                return error(
                    403,
                    "Forbidden",
                    "Operation is not allowed on a disabled key.",
                    Some("KeyDisabled"),
                );
            }
            if !v.sign_allowed {
                return error(
                    403,
                    "Forbidden",
                    "Operation sign is not permitted on this key.",
                    Some("KeyOperationForbidden"),
                );
            }
            let Material::Rsa(k) = &v.material else {
                st.violations.push(format!("{}: PS256 on an aes key", req.path));
                return error(400, "BadParameter", "algorithm not supported by the key", None);
            };
            let mut rng = rsa::rand_core::OsRng;
            match k.sign_with_rng(&mut rng, rsa::Pss::new::<sha2_10::Sha256>(), &digest) {
                Ok(sig) => {
                    st.signed.push(digest);
                    Response::json(200, json!({"kid": kid(name, id), "value": b64e(&sig)}))
                }
                Err(_) => error(400, "BadParameter", "sign failed", None),
            }
        }
        ("POST", ["keys", name, id, op @ ("wrapkey" | "unwrapkey")]) => {
            if req.headers.get("content-type").map(|c| c.starts_with("application/json")) != Some(true) {
                st.violations.push(format!(
                    "{}: content-type {:?}",
                    req.path,
                    req.headers.get("content-type")
                ));
            }
            let Ok(body) = serde_json::from_slice::<serde_json::Value>(&req.body) else {
                st.violations.push(format!("{}: body is not json", req.path));
                return error(400, "BadParameter", "body is not json", None);
            };
            st.bodies.push(req.body.clone());
            let alg = body["alg"].as_str().unwrap_or("").to_owned();
            let Some(value) = body["value"].as_str().and_then(b64d) else {
                st.violations.push(format!("{}: value missing or not base64url", req.path));
                return error(400, "BadParameter", "value", None);
            };
            let Some(v) = st.keys.get(*name).and_then(|vs| vs.iter().find(|v| v.id == *id)) else {
                return error(404, "KeyNotFound", "no such key version", None);
            };
            if !v.enabled {
                return error(
                    403,
                    "Forbidden",
                    "Operation is not allowed on a disabled key.",
                    Some("KeyDisabled"),
                );
            }
            if *op == "unwrapkey" && !v.unwrap_allowed {
                return error(
                    403,
                    "Forbidden",
                    "Operation unwrapKey is not permitted on this key.",
                    Some("KeyOperationForbidden"),
                );
            }
            let expected = match v.material {
                Material::Rsa(_) => "RSA-OAEP-256",
                Material::Aes(_) => "A256KW",
            };
            if alg != expected {
                st.violations.push(format!("{}: alg {alg:?}, key wants {expected}", req.path));
                return error(400, "BadParameter", "algorithm not supported by the key", None);
            }
            let out = match (&v.material, *op) {
                (Material::Rsa(k), "wrapkey") => {
                    let mut rng = rsa::rand_core::OsRng;
                    k.to_public_key().encrypt(&mut rng, Oaep::new::<sha2_10::Sha256>(), &value).ok()
                }
                (Material::Rsa(k), _) => k.decrypt(Oaep::new::<sha2_10::Sha256>(), &value).ok(),
                (Material::Aes(k), "wrapkey") => aes_kw::KekAes256::from(*k).wrap_vec(&value).ok(),
                (Material::Aes(k), _) => aes_kw::KekAes256::from(*k).unwrap_vec(&value).ok(),
            };
            match out {
                Some(o) => Response::json(200, json!({"kid": kid(name, id), "value": b64e(&o)})),
                None => error(400, "BadParameter", "Unable to decrypt the specified ciphertext.", None),
            }
        }
        _ => {
            st.violations.push(format!("unexpected call {} {}", req.method, req.path));
            error(404, "NotFound", "no such route", None)
        }
    }
}

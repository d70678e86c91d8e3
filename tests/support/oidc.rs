//! A fake OIDC provider for the identity tests: an axum server on 127.0.0.1:0 serving a
//! discovery document and a JWKS, minting REAL signed JWTs (ES256 with a P-256 key generated
//! here, or RS256 with an RSA key `openssl` generates).
//! Its key can be rotated (the JWKS then serves only the new key) and it counts JWKS fetches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use axum::Json;
use axum::extract::State;
use axum::routing::get;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::azure::Background;

/// A signing key and the JWK that publishes it.
pub struct SigningKey {
    pub kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    pub fn generate(kid: &str) -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate a P-256 key");
        let pkcs8 = pair.to_pkcs8v1().expect("PKCS#8 of the key");
        // The public key is the uncompressed point: 0x04, x (32 bytes), y (32 bytes).
        let point = pair.public_key().as_ref().to_vec();
        assert_eq!((point.len(), point[0]), (65, 4), "uncompressed P-256 point");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        SigningKey { kid: kid.into(), alg: Algorithm::ES256, encoding: EncodingKey::from_ec_der(pkcs8.as_ref()), jwk }
    }

    /// An RS256 key: a 2048-bit RSA key from `openssl genpkey`, as PKCS#1 DER, and its modulus.
    pub fn generate_rsa(kid: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the RSA key");
        let pem = dir.path().join("key.pem");
        let der = dir.path().join("key.der");
        let openssl = |args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new("openssl").args(args).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let os = |s: &'static str| std::ffi::OsStr::new(s);
        openssl(&[
            os("genpkey"),
            os("-algorithm"),
            os("RSA"),
            os("-pkeyopt"),
            os("rsa_keygen_bits:2048"),
            os("-out"),
            pem.as_os_str(),
        ]);
        openssl(&[
            os("rsa"),
            os("-in"),
            pem.as_os_str(),
            os("-traditional"),
            os("-outform"),
            os("DER"),
            os("-out"),
            der.as_os_str(),
        ]);
        let modulus = openssl(&[os("rsa"), os("-in"), pem.as_os_str(), os("-noout"), os("-modulus")]);
        let modulus = hex::decode(modulus.trim().trim_start_matches("Modulus=")).expect("hex modulus");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        // openssl genpkey's public exponent is 65537.
        let jwk = json!({ "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": b64(&modulus), "e": "AQAB" });
        let encoding = EncodingKey::from_rsa_der(&std::fs::read(&der).expect("read the DER key"));
        SigningKey { kid: kid.into(), alg: Algorithm::RS256, encoding, jwk }
    }

    /// A JWT over `claims`, signed with this key, naming `kid` in its header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign a JWT")
    }
}

struct Published {
    issuer: String,
    keys: Mutex<Vec<Value>>,
    jwks_fetches: AtomicUsize,
}

pub struct FakeOidcProvider {
    server: Background,
    published: Arc<Published>,
    key: Mutex<Arc<SigningKey>>,
}

pub const AUDIENCE: &str = "ferry-api";

impl FakeOidcProvider {
    pub fn start() -> Self {
        // The issuer URL must be known before the router serves it: bind first, then build.
        let published = Arc::new(Published {
            issuer: String::new(),
            keys: Mutex::new(Vec::new()),
            jwks_fetches: AtomicUsize::new(0),
        });
        let slot = Arc::new(Mutex::new(published));
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(slot.clone());
        let server = Background::serve(app);
        let key = Arc::new(SigningKey::generate("key-1"));
        let published = Arc::new(Published {
            issuer: server.url(),
            keys: Mutex::new(vec![key.jwk.clone()]),
            jwks_fetches: AtomicUsize::new(0),
        });
        *slot.lock().unwrap() = published.clone();
        FakeOidcProvider { server, published, key: Mutex::new(key) }
    }

    pub fn issuer(&self) -> String {
        self.server.url()
    }

    /// A new key replaces the old one in the JWKS; tokens are signed with it from now on.
    pub fn rotate(&self, kid: &str) -> Arc<SigningKey> {
        self.rotate_to(SigningKey::generate(kid))
    }

    /// Like [`FakeOidcProvider::rotate`], to `key`.
    pub fn rotate_to(&self, key: SigningKey) -> Arc<SigningKey> {
        let key = Arc::new(key);
        *self.published.keys.lock().unwrap() = vec![key.jwk.clone()];
        *self.key.lock().unwrap() = key.clone();
        key
    }

    pub fn jwks_fetches(&self) -> usize {
        self.published.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Valid claims for `sub` (issuer, audience, an hour of validity); tests change them.
    pub fn claims(&self, sub: &str, name: &str, groups: &[&str]) -> Value {
        let now = now_s();
        json!({
            "iss": self.issuer(), "aud": AUDIENCE, "sub": sub, "name": name, "groups": groups,
            "iat": now, "nbf": now - 5, "exp": now + 3600,
        })
    }

    /// `claims` signed with the current key.
    pub fn sign(&self, claims: &Value) -> String {
        self.key.lock().unwrap().sign(claims)
    }

    /// A valid token for `sub`.
    pub fn token(&self, sub: &str, name: &str, groups: &[&str]) -> String {
        self.sign(&self.claims(sub, name, groups))
    }
}

pub fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

type Slot = Arc<Mutex<Arc<Published>>>;

async fn discovery(State(slot): State<Slot>) -> Json<Value> {
    let published = slot.lock().unwrap().clone();
    Json(json!({
        "issuer": published.issuer,
        "jwks_uri": format!("{}/jwks", published.issuer),
        "id_token_signing_alg_values_supported": ["ES256"],
    }))
}

async fn jwks(State(slot): State<Slot>) -> Json<Value> {
    let published = slot.lock().unwrap().clone();
    published.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys = published.keys.lock().unwrap().clone();
    Json(json!({ "keys": keys }))
}

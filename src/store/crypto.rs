//! Secrets at rest: the store encrypts provider credentials and the run-token secret with a key
//! kept outside it (a 0600 file or an environment variable), so a copy of the database (a
//! backup, a leaked dump, another local user reading the file) holds no usable secret.
//!
//! What is sealed: every value of the `settings` table (today only the run-token secret); in the
//! JSON columns `work_pools.base_job_template`, `deployments.job_variables|parameters` and
//! `flow_runs.job_variables|parameters`, each value the API masks ([`crate::redact`]): values
//! under a secret key at any depth, the variables a pool's schema marks secret (`writeOnly`,
//! `format: password`) and their template defaults. A sealed value becomes one string, the
//! envelope `ppenc:v1:<key id>:<base64 of nonce ‖ ciphertext ‖ tag>` (AES-256-GCM, random 96-bit
//! nonce) over the value's JSON text; the associated data is the row and the JSON pointer of the
//! value (`deployments/<id>/job_variables#/env/API_TOKEN`), so a ciphertext copied to another
//! row or field does not decrypt. Reading opens every envelope wherever it is, so a value sealed
//! under an older rule still reads back; a stored string that merely starts with `ppenc:` is
//! sealed too, so every `ppenc:` string in the store is an envelope. Values written before
//! encryption existed (no envelope) read as they are and are sealed on their next write or by
//! `pushpool secrets rotate-key`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom as _, SystemRandom};
use serde_json::{Map, Value};
use sha2::Digest as _;

use sqlx::Row as _;

use super::{Store, StoreError};
use crate::redact::{is_secret_key, schema_secret_variables};

/// The environment variable that may hold the key (base64 of 32 bytes).
pub const SECRET_KEY_ENV: &str = "PUSHPOOL_SECRET_KEY";
/// The key file's name in the data directory (`$PUSHPOOL_HOME/secret.key`).
pub const SECRET_KEY_FILE: &str = "secret.key";
/// What every sealed value starts with.
pub const ENVELOPE_PREFIX: &str = "ppenc:";
const V1: &str = "ppenc:v1:";
const KEY_LEN: usize = 32;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a key could not be loaded or a value not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key's text is not base64 of 32 bytes.
    #[error("the secret key from {source_name} is invalid: {rule}")]
    InvalidKey {
        /// Where the key came from.
        source_name: String,
        /// What is wrong with it.
        rule: String,
    },
    /// The key file could not be read or written.
    #[error("{context}: {error}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The error.
        #[source]
        error: std::io::Error,
    },
    /// No key was configured where one is needed.
    #[error("{0}")]
    Missing(String),
    /// A value was sealed with another key.
    #[error(
        "cannot decrypt {aad}: it was encrypted with secret key {stored}, but the key from \
         {source_name} is {configured}; start with the key the store was written with \
         (see `pushpool secrets rotate-key` in docs/security.md)"
    )]
    WrongKey {
        /// Which value.
        aad: String,
        /// The id in the envelope.
        stored: String,
        /// The configured key's id.
        configured: String,
        /// Where the configured key came from.
        source_name: String,
    },
    /// A value is sealed but the store was opened without a key.
    #[error(
        "cannot decrypt {aad}: it is encrypted (secret key {stored}) and no secret key is \
         configured (set {SECRET_KEY_ENV}, use --secret-key-file, or point --home at the data \
         directory holding secret.key)"
    )]
    NoKey {
        /// Which value.
        aad: String,
        /// The id in the envelope.
        stored: String,
    },
    /// The envelope is damaged, altered, or was moved from another row or field.
    #[error("cannot decrypt {aad}: {why}")]
    Damaged {
        /// Which value.
        aad: String,
        /// What is wrong.
        why: String,
    },
}

struct KeyInner {
    aead: LessSafeKey,
    bytes: [u8; KEY_LEN],
    id: String,
    source: String,
}

/// A data-encryption key and where it came from (named in errors). Cheap to clone; its `Debug`
/// shows the id and source, never the key.
#[derive(Clone)]
pub struct SecretKey(Arc<KeyInner>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.0.id)
            .field("source", &self.0.source)
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    fn from_bytes(bytes: [u8; KEY_LEN], source: String) -> SecretKey {
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte key fits AES-256-GCM"),
        );
        // The id names the key in envelopes and errors without revealing it.
        let digest =
            sha2::Sha256::digest([b"pushpool secret key id\0".as_slice(), &bytes].concat());
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        SecretKey(Arc::new(KeyInner {
            aead,
            bytes,
            id,
            source,
        }))
    }

    /// A fresh random key; `source` says where it will be kept.
    pub fn generate(source: impl Into<String>) -> SecretKey {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system random source works");
        SecretKey::from_bytes(bytes, source.into())
    }

    /// A key from its base64 text (surrounding whitespace ignored).
    pub fn from_base64(text: &str, source: impl Into<String>) -> Result<SecretKey, SecretError> {
        let source = source.into();
        let invalid = |rule: String| SecretError::InvalidKey {
            source_name: source.clone(),
            rule,
        };
        let bytes = B64
            .decode(text.trim())
            .map_err(|e| invalid(format!("not base64 ({e})")))?;
        let bytes: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "must be {KEY_LEN} bytes (base64 of `head -c 32 /dev/urandom`), not {}",
                bytes.len()
            ))
        })?;
        Ok(SecretKey::from_bytes(bytes, source))
    }

    /// The key as base64 (what a key file or [`SECRET_KEY_ENV`] holds).
    pub fn to_base64(&self) -> String {
        B64.encode(self.0.bytes)
    }

    /// The key's public id (8 hex digits), written in every envelope it seals.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// Where the key came from, e.g. `the file /srv/pushpool/secret.key`.
    pub fn source(&self) -> &str {
        &self.0.source
    }

    /// Reads a key file. A file that group or others can read is used, with a warning.
    pub fn read_file(path: &Path) -> Result<SecretKey, SecretError> {
        use std::os::unix::fs::PermissionsExt as _;
        let text = std::fs::read_to_string(path).map_err(|error| SecretError::Io {
            context: format!("reading the secret key file {}", path.display()),
            error,
        })?;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "the secret key file {} can be read by other users (mode {:o}); make it 0600",
                    path.display(),
                    meta.permissions().mode() & 0o777
                );
            }
        }
        SecretKey::from_base64(&text, format!("the file {}", path.display()))
    }

    /// Creates a key file holding a fresh key, mode 0600. Never overwrites: when something is
    /// already at `path` (another process won the race, an old key, a symlink) it fails with
    /// `AlreadyExists`. The key is written to a private temporary file first and linked into
    /// place, so a concurrent reader never sees a half-written key.
    pub fn create_file(path: &Path) -> Result<SecretKey, SecretError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let key = SecretKey::generate(format!("the file {}", path.display()));
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
            uuid::Uuid::new_v4().simple()
        ));
        let io = |context: String| move |error| SecretError::Io { context, error };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(format!("creating {}", tmp.display())))?;
        let written = file
            .write_all(format!("{}\n", key.to_base64()).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(format!("writing {}", tmp.display())))
            .and_then(|()| {
                std::fs::hard_link(&tmp, path).map_err(io(format!(
                    "creating the secret key file {}",
                    path.display()
                )))
            });
        let _ = std::fs::remove_file(&tmp);
        written.map(|()| key)
    }
}

/// How a server command finds its key; see [`resolve_key`].
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    /// `--secret-key-file` (or `PUSHPOOL_SECRET_KEY_FILE`): must exist.
    pub file: Option<PathBuf>,
    /// The value of [`SECRET_KEY_ENV`], when set.
    pub env: Option<String>,
    /// The data directory: its [`SECRET_KEY_FILE`] is the default key.
    pub home: PathBuf,
    /// Create `home/secret.key` when no key is configured and the file is missing.
    pub create: bool,
}

/// The key a server command uses: `--secret-key-file`, else [`SECRET_KEY_ENV`], else
/// `home/secret.key` (created with a fresh key, mode 0600, when `create` and missing). Setting
/// both the file and the variable is refused as ambiguous.
pub fn resolve_key(options: &KeyOptions) -> Result<SecretKey, SecretError> {
    let env = options.env.as_deref().filter(|v| !v.trim().is_empty());
    match (&options.file, env) {
        (Some(file), Some(_)) => Err(SecretError::Missing(format!(
            "both --secret-key-file ({}) and {SECRET_KEY_ENV} are set; set only one",
            file.display()
        ))),
        (Some(file), None) => SecretKey::read_file(file),
        (None, Some(text)) => SecretKey::from_base64(text, format!("${SECRET_KEY_ENV}")),
        (None, None) => {
            let path = options.home.join(SECRET_KEY_FILE);
            if path.exists() || !options.create {
                return SecretKey::read_file(&path).map_err(|e| match e {
                    SecretError::Io { error, .. }
                        if error.kind() == std::io::ErrorKind::NotFound =>
                    {
                        SecretError::Missing(format!(
                            "no secret key: {} does not exist; pass --secret-key-file, set \
                             {SECRET_KEY_ENV}, or point --home at the data directory that holds it",
                            path.display()
                        ))
                    }
                    other => other,
                });
            }
            match SecretKey::create_file(&path) {
                Ok(key) => {
                    tracing::info!("created the secret key file {}", path.display());
                    Ok(key)
                }
                // Another process created it meanwhile: use theirs.
                Err(SecretError::Io { error, .. })
                    if error.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    SecretKey::read_file(&path)
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Seals `value` (its JSON text) for the place `aad`; `None` leaves it as it is.
pub(crate) fn seal(key: Option<&SecretKey>, aad: &str, value: &Value) -> Value {
    let Some(key) = key else {
        return value.clone();
    };
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .expect("the system random source works");
    let mut data = value.to_string().into_bytes();
    key.0
        .aead
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut data,
        )
        .expect("sealing fits in memory");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&data);
    Value::String(format!("{V1}{}:{}", key.id(), B64.encode(out)))
}

/// Opens the envelope `text` sealed for `aad`.
pub(crate) fn open(key: Option<&SecretKey>, aad: &str, text: &str) -> Result<Value, SecretError> {
    let damaged = |why: &str| SecretError::Damaged {
        aad: aad.to_string(),
        why: why.to_string(),
    };
    let rest = text
        .strip_prefix(V1)
        .ok_or_else(|| damaged("unknown envelope version (written by a newer pushpool?)"))?;
    let (stored, body) = rest
        .split_once(':')
        .ok_or_else(|| damaged("the envelope has no key id"))?;
    let Some(key) = key else {
        return Err(SecretError::NoKey {
            aad: aad.to_string(),
            stored: stored.to_string(),
        });
    };
    if stored != key.id() {
        return Err(SecretError::WrongKey {
            aad: aad.to_string(),
            stored: stored.to_string(),
            configured: key.id().to_string(),
            source_name: key.source().to_string(),
        });
    }
    let raw = B64
        .decode(body)
        .map_err(|_| damaged("the envelope is not base64"))?;
    if raw.len() < NONCE_LEN {
        return Err(damaged("the envelope is too short"));
    }
    let (nonce, sealed) = raw.split_at(NONCE_LEN);
    let mut sealed = sealed.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged("bad nonce"))?;
    let plain = key
        .0
        .aead
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut sealed)
        .map_err(|_| {
            damaged(
                "authentication failed: the value was altered or moved from another row or field",
            )
        })?;
    serde_json::from_slice(plain).map_err(|_| damaged("the decrypted value is not JSON"))
}

/// Which values of a JSON document are secret, by where they are.
#[derive(Clone, Copy)]
enum Rule<'a> {
    /// Values under a secret key at any depth, and the top-level keys in the list.
    Keys(&'a [String]),
    /// Nothing (only `ppenc:` look-alikes are sealed).
    Plain,
    /// A base job template's root.
    Template(&'a [String]),
    /// Its `variables`.
    Variables(&'a [String]),
    /// Its `variables.properties`.
    Properties(&'a [String]),
    /// One property of it; true when the variable is secret.
    Property(bool),
}

impl<'a> Rule<'a> {
    /// Whether the value under `key` is secret, and the rule below it.
    fn child(self, key: &str) -> (bool, Rule<'a>) {
        match self {
            Rule::Keys(extra) => (
                is_secret_key(key) || extra.iter().any(|e| e == key),
                Rule::Keys(&[]),
            ),
            Rule::Plain => (false, Rule::Plain),
            Rule::Template(extra) => match key {
                "job_configuration" => (false, Rule::Keys(&[])),
                "variables" => (false, Rule::Variables(extra)),
                _ => (false, Rule::Plain),
            },
            Rule::Variables(extra) => match key {
                "properties" => (false, Rule::Properties(extra)),
                _ => (false, Rule::Plain),
            },
            Rule::Properties(extra) => (
                false,
                Rule::Property(is_secret_key(key) || extra.iter().any(|e| e == key)),
            ),
            Rule::Property(secret) => match key {
                "default" if secret => (true, Rule::Plain),
                "default" => (false, Rule::Keys(&[])),
                _ => (false, Rule::Plain),
            },
        }
    }

    fn item(self) -> Rule<'a> {
        match self {
            Rule::Keys(_) => Rule::Keys(&[]),
            _ => Rule::Plain,
        }
    }
}

/// `path` + `/key` as a JSON pointer (RFC 6901 escapes), so no two places share associated data.
fn pointer(path: &str, key: &str) -> String {
    format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"))
}

fn seal_walk(key: Option<&SecretKey>, base: &str, path: &str, v: &mut Value, rule: Rule<'_>) {
    match v {
        // A plain string that looks like an envelope is sealed so that reads stay unambiguous.
        Value::String(s) if s.starts_with(ENVELOPE_PREFIX) && key.is_some() => {
            *v = seal(key, &format!("{base}#{path}"), v);
        }
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                let p = pointer(path, k);
                let (secret, next) = rule.child(k);
                if secret {
                    if !x.is_null() {
                        *x = seal(key, &format!("{base}#{p}"), x);
                    }
                } else {
                    seal_walk(key, base, &p, x, next);
                }
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter_mut().enumerate() {
                seal_walk(key, base, &format!("{path}/{i}"), x, rule.item());
            }
        }
        _ => {}
    }
}

/// The JSON text of job variables or parameters with their secret values sealed for the row
/// `base` (`table/id/column`); `extra` are the variables the pool's schema marks secret.
pub(crate) fn seal_map(
    key: Option<&SecretKey>,
    base: &str,
    map: &Map<String, Value>,
    extra: &[String],
) -> String {
    let mut v = Value::Object(map.clone());
    seal_walk(key, base, "", &mut v, Rule::Keys(extra));
    v.to_string()
}

/// The JSON text of a base job template with its secret defaults and literals sealed.
pub(crate) fn seal_template(key: Option<&SecretKey>, base: &str, template: &Value) -> String {
    let extra = schema_secret_variables(&template["variables"]);
    let mut v = template.clone();
    seal_walk(key, base, "", &mut v, Rule::Template(&extra));
    v.to_string()
}

/// Opens, in place, every envelope in `v` (stored for the row `base`).
pub(crate) fn open_walk(
    key: Option<&SecretKey>,
    base: &str,
    path: &str,
    v: &mut Value,
) -> Result<(), SecretError> {
    match v {
        Value::String(s) if s.starts_with(ENVELOPE_PREFIX) => {
            *v = open(key, &format!("{base}#{path}"), s)?;
        }
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                open_walk(key, base, &pointer(path, k), x)?;
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter_mut().enumerate() {
                open_walk(key, base, &format!("{path}/{i}"), x)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The row a JSON column's values are sealed for: `table/id/column`.
pub(crate) fn row_aad(table: &str, id: &impl std::fmt::Display, column: &str) -> String {
    format!("{table}/{id}/{column}")
}

/// The place a setting's value is sealed for.
pub(crate) fn setting_aad(name: &str) -> String {
    format!("settings/{name}/value")
}

/// What [`Store::reseal_all`] re-encrypted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResealReport {
    /// Settings rewritten.
    pub settings: u64,
    /// Work pools rewritten.
    pub work_pools: u64,
    /// Deployments rewritten.
    pub deployments: u64,
    /// Flow runs rewritten.
    pub flow_runs: u64,
    /// Notification channels, deliveries and inbound hooks rewritten.
    pub notifications: u64,
}

impl Store {
    /// Re-encrypts every secret of the store with `new` in one transaction: each value is
    /// opened with this store's key (plain values written before encryption are taken as they
    /// are) and sealed with `new`. Nothing changes when any value cannot be opened. Meant for
    /// a stopped service (`pushpool secrets rotate-key`): a server still running with the old
    /// key would write values the new key cannot open.
    pub async fn reseal_all(&self, new: &SecretKey) -> Result<ResealReport, StoreError> {
        let old = self.secret_key();
        let new = Some(new);
        let mut report = ResealReport::default();
        let mut tx = self.begin().await?;

        let rows = sqlx::query("SELECT key, value FROM settings")
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let (name, stored): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            let aad = setting_aad(&name);
            let value = if stored.starts_with(ENVELOPE_PREFIX) {
                open(old, &aad, &stored)?
            } else {
                Value::String(stored)
            };
            let sealed = match seal(new, &aad, &value) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            sqlx::query("UPDATE settings SET value = $1 WHERE key = $2")
                .bind(sealed)
                .bind(&name)
                .execute(&mut *tx)
                .await?;
            report.settings += 1;
        }

        // Pools first: their schemas say which job variables are secret.
        let mut templates = std::collections::HashMap::new();
        let rows = sqlx::query("SELECT id, base_job_template FROM work_pools")
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let id: String = row.try_get(0)?;
            let base = row_aad("work_pools", &id, "base_job_template");
            let template = open_text(old, &base, &row.try_get::<String, _>(1)?)?;
            sqlx::query("UPDATE work_pools SET base_job_template = $1 WHERE id = $2")
                .bind(seal_template(new, &base, &template))
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            templates.insert(id, schema_secret_variables(&template["variables"]));
            report.work_pools += 1;
        }

        for (table, counter) in [
            ("deployments", &mut report.deployments),
            ("flow_runs", &mut report.flow_runs),
        ] {
            let rows = sqlx::query(&format!(
                "SELECT id, pool_id, job_variables, parameters FROM {table}"
            ))
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let id: String = row.try_get(0)?;
                let pool_id: String = row.try_get(1)?;
                let extra = templates.get(&pool_id).cloned().unwrap_or_default();
                let mut texts = vec![];
                for (column, extra) in [("job_variables", &extra[..]), ("parameters", &[][..])] {
                    let base = row_aad(table, &id, column);
                    let value = open_text(old, &base, &row.try_get::<String, _>(column)?)?;
                    let Value::Object(map) = value else {
                        return Err(StoreError::Corrupt(format!(
                            "{table} {id} {column}: not an object"
                        )));
                    };
                    texts.push(seal_map(new, &base, &map, extra));
                }
                sqlx::query(&format!(
                    "UPDATE {table} SET job_variables = $1, parameters = $2 WHERE id = $3"
                ))
                .bind(&texts[0])
                .bind(&texts[1])
                .bind(&id)
                .execute(&mut *tx)
                .await?;
                *counter += 1;
            }
        }
        report.notifications = super::notify::reseal(&mut tx, old, new).await?;
        tx.commit().await?;
        Ok(report)
    }
}

/// A stored JSON text with its envelopes opened.
fn open_text(key: Option<&SecretKey>, base: &str, text: &str) -> Result<Value, StoreError> {
    let mut value: Value =
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{base}: {e}")))?;
    open_walk(key, base, "", &mut value)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> SecretKey {
        SecretKey::generate("a test")
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_place() {
        let k = key();
        let v = json!({"private_key": "-----BEGIN", "n": 1});
        let sealed = seal(Some(&k), "t/1/c#/a", &v);
        let text = sealed.as_str().unwrap();
        assert!(text.starts_with(&format!("ppenc:v1:{}:", k.id())), "{text}");
        assert!(!text.contains("BEGIN"));
        assert_eq!(open(Some(&k), "t/1/c#/a", text).unwrap(), v);
        // Moved to another row or field: refused.
        let moved = open(Some(&k), "t/2/c#/a", text).unwrap_err().to_string();
        assert!(moved.contains("moved"), "{moved}");
        // Another key: refused, naming both ids and the key's source.
        let other = SecretKey::generate("$PUSHPOOL_SECRET_KEY");
        let wrong = open(Some(&other), "t/1/c#/a", text)
            .unwrap_err()
            .to_string();
        assert!(
            wrong.contains(k.id())
                && wrong.contains(other.id())
                && wrong.contains("$PUSHPOOL_SECRET_KEY"),
            "{wrong}"
        );
        let none = open(None, "t/1/c#/a", text).unwrap_err().to_string();
        assert!(none.contains("no secret key is configured"), "{none}");
    }

    #[test]
    fn variables_and_templates_seal_what_the_api_masks() {
        let k = key();
        let vars = json!({
            "image": "img",
            "credentials": {"project": "p", "service_account_info": {"private_key": "PK-123"}},
            "env": {"DB_PASSWORD": "hunter2", "PLAIN": "x"},
            "vault": "v-secret-value",
            "look_alike": "ppenc:v1:not-really",
            "none_token": null
        });
        let text = seal_map(
            Some(&k),
            "deployments/1/job_variables",
            vars.as_object().unwrap(),
            &["vault".to_string()],
        );
        for secret in ["PK-123", "hunter2", "v-secret-value", "not-really"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("\"image\":\"img\"") && text.contains("\"PLAIN\":\"x\""));
        let mut back: Value = serde_json::from_str(&text).unwrap();
        open_walk(Some(&k), "deployments/1/job_variables", "", &mut back).unwrap();
        assert_eq!(back, vars);

        let template = json!({
            "job_configuration": {"token": "{{ token }}", "password": "literal-pw", "image": "{{ image }}"},
            "variables": {"properties": {
                "token": {"type": "string", "default": "tok-123"},
                "hidden": {"type": "string", "writeOnly": true, "default": "h-456"},
                "image": {"type": "string", "default": "img"}
            }}
        });
        let text = seal_template(Some(&k), "work_pools/1/base_job_template", &template);
        for secret in ["literal-pw", "tok-123", "h-456"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("\"writeOnly\":true") && text.contains("\"default\":\"img\""));
        let mut back: Value = serde_json::from_str(&text).unwrap();
        open_walk(Some(&k), "work_pools/1/base_job_template", "", &mut back).unwrap();
        assert_eq!(back, template);
        // Without a key nothing changes.
        assert_eq!(
            seal_map(None, "x", vars.as_object().unwrap(), &[]),
            vars.to_string()
        );
    }

    #[test]
    fn keys_load_from_base64_and_files_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let made = SecretKey::create_file(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(SecretKey::read_file(&path).unwrap().id(), made.id());
        let again = SecretKey::create_file(&path).unwrap_err();
        assert!(
            matches!(&again, SecretError::Io { error, .. } if error.kind() == std::io::ErrorKind::AlreadyExists),
            "{again}"
        );
        let from_env = SecretKey::from_base64(&made.to_base64(), "$PUSHPOOL_SECRET_KEY").unwrap();
        assert_eq!(from_env.id(), made.id());
        let short = SecretKey::from_base64("c2hvcnQ=", "$PUSHPOOL_SECRET_KEY")
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("$PUSHPOOL_SECRET_KEY") && short.contains("32 bytes"),
            "{short}"
        );
        let options = KeyOptions {
            home: dir.path().join("elsewhere"),
            ..KeyOptions::default()
        };
        let missing = resolve_key(&options).unwrap_err().to_string();
        assert!(missing.contains("secret.key"), "{missing}");
        let both = KeyOptions {
            file: Some(path.clone()),
            env: Some(made.to_base64()),
            ..KeyOptions::default()
        };
        assert!(resolve_key(&both)
            .unwrap_err()
            .to_string()
            .contains("only one"));
        let home = KeyOptions {
            home: dir.path().to_path_buf(),
            create: true,
            ..KeyOptions::default()
        };
        assert_eq!(resolve_key(&home).unwrap().id(), made.id());
    }
}

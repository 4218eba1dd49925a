//! Passwords: the policy a new password must meet, and hashing on a bounded pool.
//!
//! New hashes are argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane). Imported
//! bcrypt (`$2b$…`) and werkzeug (`pbkdf2:sha256:N$salt$hex`) hashes verify and are
//! replaced at the next successful login. Hashing is CPU- and memory-heavy, so it runs on
//! the blocking pool behind a semaphore: a login flood queues there and never starves
//! the async workers that serve everything else.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::settings::Problems;

/// `[password]` as written: a preset, then any rule overridden.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPasswordPolicy {
    /// `default` or `nist`; the fields below override it.
    pub preset: Option<String>,
    /// Fewest characters.
    pub min_length: Option<usize>,
    /// Most characters.
    pub max_length: Option<usize>,
    /// At least one upper-case letter.
    pub require_upper: Option<bool>,
    /// At least one lower-case letter.
    pub require_lower: Option<bool>,
    /// At least one digit.
    pub require_digit: Option<bool>,
    /// At least one character that is neither letter nor digit.
    pub require_special: Option<bool>,
    /// Refuse passwords on the common-password list.
    pub reject_common: Option<bool>,
}

/// Password rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Fewest characters.
    pub min_length: usize,
    /// Most characters.
    pub max_length: usize,
    /// At least one upper-case letter.
    pub require_upper: bool,
    /// At least one lower-case letter.
    pub require_lower: bool,
    /// At least one digit.
    pub require_digit: bool,
    /// At least one character that is neither a letter nor a digit.
    pub require_special: bool,
    /// Refuse passwords from the common/breached list.
    pub reject_common: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 8,
            max_length: 128,
            require_upper: true,
            require_lower: true,
            require_digit: true,
            require_special: true,
            reject_common: true,
        }
    }
}

impl PasswordPolicy {
    /// NIST SP 800-63B-4 style: long passphrases, no composition rules.
    pub fn nist() -> Self {
        Self {
            min_length: 15,
            max_length: 128,
            require_upper: false,
            require_lower: false,
            require_digit: false,
            require_special: false,
            reject_common: true,
        }
    }

    /// Checks `[password]`, adding every problem to `problems`.
    pub fn from_raw(raw: RawPasswordPolicy, problems: &mut Problems) -> Self {
        let mut policy = match raw.preset.as_deref() {
            None | Some("default") => Self::default(),
            Some("nist") => Self::nist(),
            Some(other) => {
                problems.add(
                    "password.preset",
                    format!("`{other}` is not one of default, nist"),
                );
                Self::default()
            }
        };
        macro_rules! override_field {
            ($($field:ident),*) => {
                $(if let Some(value) = raw.$field {
                    policy.$field = value;
                })*
            };
        }
        override_field!(
            min_length,
            max_length,
            require_upper,
            require_lower,
            require_digit,
            require_special,
            reject_common
        );
        if policy.min_length < 8 {
            problems.add("password.min_length", "must be at least 8");
        }
        if policy.max_length < policy.min_length || policy.max_length > 1024 {
            problems.add("password.max_length", "must be between min_length and 1024");
        }
        policy
    }
}

/// The PHC prefix of a hash made with the current parameters.
const CURRENT_PREFIX: &str = "$argon2id$v=19$m=19456,t=2,p=1$";

/// Highest PBKDF2 iteration count accepted from an imported hash.
const MAX_PBKDF2_ITERATIONS: u32 = 5_000_000;

/// Every rule `password` breaks, as messages for `fields.password`; empty when it passes.
pub fn check_policy(policy: &PasswordPolicy, password: &str, username: &str) -> Vec<String> {
    let mut broken = Vec::new();
    let length = password.chars().count();
    if length < policy.min_length {
        broken.push(format!("must be at least {} characters", policy.min_length));
    }
    if length > policy.max_length {
        broken.push(format!("must be at most {} characters", policy.max_length));
    }
    if policy.require_upper && !password.chars().any(char::is_uppercase) {
        broken.push("must contain an upper-case letter".to_owned());
    }
    if policy.require_lower && !password.chars().any(char::is_lowercase) {
        broken.push("must contain a lower-case letter".to_owned());
    }
    if policy.require_digit && !password.chars().any(|c| c.is_ascii_digit()) {
        broken.push("must contain a digit".to_owned());
    }
    if policy.require_special && !password.chars().any(|c| !c.is_alphanumeric()) {
        broken.push("must contain a special character".to_owned());
    }
    if policy.reject_common && is_common(password) {
        broken.push("is too common".to_owned());
    }
    if !username.is_empty() && password.to_lowercase().contains(&username.to_lowercase()) {
        broken.push("must not contain the username".to_owned());
    }
    broken
}

/// Whether the password, or its lower-case form, is on the common/breached list
/// (about 100 000 entries, shipped in the binary).
pub fn is_common(password: &str) -> bool {
    passwords::analyzer::is_common_password(password)
        || passwords::analyzer::is_common_password(password.to_lowercase())
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Wrong password, or a hash this build cannot read.
    No,
    /// Right password, and the hash is current.
    Yes,
    /// Right password; store this fresh argon2id hash instead.
    YesRehashed(String),
}

/// Hashes and verifies passwords on the blocking pool, a bounded number at a time.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl Hasher {
    /// A hasher running at most `concurrency` hashes at once (at least one).
    pub fn new(concurrency: usize) -> Self {
        let dummy = hash_now("rampart timing equaliser").unwrap_or_else(|_| {
            // A well-formed hash of a random password; only its cost matters.
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
             p9Hn5tLWt3w6Aq0mHgG3xKqzGhqf9LEzB4yQq3HBiHo"
                .to_owned()
        });
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash: Arc::from(dummy),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self.permits.acquire().await?;
        Ok(tokio::task::spawn_blocking(job).await?)
    }

    /// A fresh argon2id hash of `password`.
    ///
    /// # Errors
    /// The hashing task failed.
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        self.run(move || hash_now(&password)).await?
    }

    /// Checks `password` against `stored`, upgrading legacy or outdated hashes.
    ///
    /// # Errors
    /// The hashing task failed.
    pub async fn verify(&self, password: String, stored: String) -> anyhow::Result<Verified> {
        self.run(move || {
            if !verify_now(&password, &stored) {
                return Ok(Verified::No);
            }
            if stored.starts_with(CURRENT_PREFIX) {
                Ok(Verified::Yes)
            } else {
                Ok(Verified::YesRehashed(hash_now(&password)?))
            }
        })
        .await?
    }

    /// Spends the time a real verification takes, for unknown users.
    ///
    /// # Errors
    /// The hashing task failed.
    pub async fn verify_dummy(&self, password: String) -> anyhow::Result<()> {
        let dummy = Arc::clone(&self.dummy_hash);
        self.run(move || {
            let _ = verify_now(&password, &dummy);
        })
        .await
    }
}

fn hash_now(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|error| anyhow::anyhow!("argon2: {error}"))
}

/// Checks a password against any supported hash format, in constant time where it compares.
pub fn verify_now(password: &str, stored: &str) -> bool {
    if stored.starts_with("$argon2") {
        return PasswordHash::new(stored).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        });
    }
    if stored.starts_with("$2a$") || stored.starts_with("$2b$") || stored.starts_with("$2y$") {
        // bcrypt reads only the first 72 bytes; a longer password would match any other
        // with the same start, so it never verifies against bcrypt.
        return password.len() <= 72 && bcrypt::verify(password, stored).unwrap_or(false);
    }
    if let Some(rest) = stored.strip_prefix("pbkdf2:sha256:") {
        return verify_werkzeug(password, rest);
    }
    false
}

/// werkzeug's `pbkdf2:sha256:ITERATIONS$SALT$HEX`; the salt is used as its literal text.
fn verify_werkzeug(password: &str, rest: &str) -> bool {
    let mut parts = rest.splitn(3, '$');
    let (Some(iterations), Some(salt), Some(expected)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(iterations) = iterations.parse::<u32>() else {
        return false;
    };
    if iterations == 0 || iterations > MAX_PBKDF2_ITERATIONS {
        return false;
    }
    let Ok(expected) = hex::decode(expected) else {
        return false;
    };
    if expected.is_empty() || expected.len() > 64 {
        return false;
    }
    let mut derived = vec![0u8; expected.len()];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
        password.as_bytes(),
        salt.as_bytes(),
        iterations,
        &mut derived,
    );
    derived.ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_broken_rule_is_listed() {
        let broken = check_policy(&PasswordPolicy::default(), "alice", "alice");
        for rule in [
            "must be at least 8 characters",
            "must contain an upper-case letter",
            "must contain a digit",
            "must contain a special character",
            "must not contain the username",
        ] {
            assert!(
                broken.iter().any(|b| b == rule),
                "{rule} missing: {broken:?}"
            );
        }
    }

    #[test]
    fn a_strong_password_passes() {
        assert!(check_policy(&PasswordPolicy::default(), "Tr4ding!Desk#42", "alice").is_empty());
    }

    #[test]
    fn common_passwords_are_refused_even_when_they_meet_the_classes() {
        // "Password1!" meets every character class but is on every breach list.
        let broken = check_policy(&PasswordPolicy::default(), "Password1!", "bob");
        assert_eq!(broken, vec!["is too common".to_owned()]);
        assert!(is_common("qwerty123"));
        assert!(is_common("iloveyou"));
        assert!(!is_common("Tr4ding!Desk#42"));
    }

    #[test]
    fn the_nist_preset_accepts_a_long_passphrase_without_classes() {
        let policy = PasswordPolicy::nist();
        assert!(check_policy(&policy, "correct horse battery staple", "alice").is_empty());
        assert!(!check_policy(&policy, "Sh0rt!pass", "alice").is_empty());
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        let policy = PasswordPolicy {
            max_length: 10,
            ..PasswordPolicy::default()
        };
        // Ten characters, thirty bytes.
        assert!(check_policy(&policy, "Ää1!ÄäÄäÄä", "x").is_empty());
    }

    #[test]
    fn argon2_hashes_verify_whole_passwords() {
        let hash = hash_now("Tr4ding!Desk#42").unwrap();
        assert!(hash.starts_with(CURRENT_PREFIX), "{hash}");
        assert!(verify_now("Tr4ding!Desk#42", &hash));
        assert!(!verify_now("Tr4ding!Desk#43", &hash));
        let long = "A1!".repeat(40);
        let long_hash = hash_now(&long).unwrap();
        assert!(!verify_now(&format!("{long}x"), &long_hash));
    }

    #[test]
    fn werkzeug_pbkdf2_hashes_verify() {
        // Made with werkzeug.security.generate_password_hash("S3cret!pass",
        // method="pbkdf2:sha256:1000", salt_length=8) semantics: the salt text is the salt.
        let salt = "NaClNaCl";
        let mut derived = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(b"S3cret!pass", salt.as_bytes(), 1000, &mut derived);
        let stored = format!("pbkdf2:sha256:1000${salt}${}", hex::encode(derived));
        assert!(verify_now("S3cret!pass", &stored));
        assert!(!verify_now("S3cret!pasS", &stored));
        for broken in [
            "pbkdf2:sha256:0$a$00",
            "pbkdf2:sha256:x$a$00",
            "pbkdf2:sha256:1000$a",
            "pbkdf2:sha256:1000$a$zz",
            "pbkdf2:sha256:99999999$a$00",
        ] {
            assert!(!verify_now("S3cret!pass", broken), "{broken}");
        }
    }

    #[test]
    fn werkzeug_reference_vector_verifies() {
        // pbkdf2_hmac('sha256', b'password', b'salt', 1) from RFC 7914's PBKDF2 test.
        let stored = "pbkdf2:sha256:1$salt$\
                      120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b";
        assert!(verify_now("password", stored));
    }

    #[test]
    fn bcrypt_hashes_verify_but_never_past_72_bytes() {
        let hash = bcrypt::hash("S3cret!pass", 4).unwrap();
        assert!(verify_now("S3cret!pass", &hash));
        assert!(!verify_now("S3cret!pasx", &hash));
        let long = "a".repeat(72);
        let long_hash = bcrypt::hash(&long, 4).unwrap();
        assert!(!verify_now(&format!("{long}anything"), &long_hash));
    }

    #[tokio::test]
    async fn legacy_hashes_are_upgraded_on_verification() {
        let hasher = Hasher::new(2);
        let legacy = bcrypt::hash("S3cret!pass", 4).unwrap();
        match hasher.verify("S3cret!pass".into(), legacy).await.unwrap() {
            Verified::YesRehashed(new) => assert!(new.starts_with(CURRENT_PREFIX)),
            other => panic!("expected a rehash, got {other:?}"),
        }
        let current = hasher.hash("S3cret!pass".into()).await.unwrap();
        assert_eq!(
            hasher.verify("S3cret!pass".into(), current).await.unwrap(),
            Verified::Yes
        );
    }

    #[test]
    fn unknown_hash_formats_never_verify() {
        for stored in [
            "",
            "plaintext",
            "$1$md5$hash",
            "sha1$abc$def",
            "scrypt:1:2:3$a$b",
        ] {
            assert!(!verify_now("plaintext", stored), "{stored}");
        }
    }
}

//! One issuance with instant-acme: the account (created once, then restored from its stored
//! credentials), an order for a lineage's names, the challenge answers published while the CA
//! validates and withdrawn whatever happens, a fresh key and CSR, and the chain downloaded.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use tracing::{debug, info};

use super::challenges::{tls_alpn01_cert, Challenges};
use super::storage;
use crate::config::acme::{KeyType, Settings};

/// Why an issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CA refused a request; its problem document, as it sent it.
    #[error("the CA refused: {0}")]
    Refused(String),
    /// The CA refused for one of its rate limits (`urn:ietf:params:acme:error:rateLimited`).
    #[error("the CA's rate limit: {0}")]
    RateLimited(String),
    /// A challenge did not validate; the CA's error for that name.
    #[error("challenge for {name} failed: {detail}")]
    Challenge { name: String, detail: String },
    /// The CA offered no challenge type that is turned on.
    #[error("no usable challenge for {0} (http_01 and tls_alpn_01 as configured)")]
    NoChallenge(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Network or protocol failure talking to the CA.
    #[error("talking to the CA: {0}")]
    Transport(String),
    #[error("{0}")]
    Local(String),
    /// The CA's certificate is not one for the order: it does not parse, or lacks names.
    #[error("the CA's certificate cannot be used: {0}")]
    BadCertificate(String),
}

impl IssueError {
    /// The metrics `result` label.
    pub fn result(&self) -> &'static str {
        match self {
            IssueError::Refused(_) => "refused",
            IssueError::RateLimited(_) => "rate_limited",
            IssueError::Challenge { .. } | IssueError::NoChallenge(_) => "challenge_failed",
            IssueError::Timeout(_) => "timeout",
            IssueError::Transport(_) => "transport",
            IssueError::Local(_) => "local",
            IssueError::BadCertificate(_) => "bad_certificate",
        }
    }
}

impl From<instant_acme::Error> for IssueError {
    fn from(e: instant_acme::Error) -> Self {
        match e {
            instant_acme::Error::Api(problem) => refused(&problem),
            instant_acme::Error::Timeout(_) => IssueError::Transport("the CA kept the order pending".into()),
            other => IssueError::Transport(other.to_string()),
        }
    }
}

fn refused(problem: &instant_acme::Problem) -> IssueError {
    match problem.r#type.as_deref() {
        Some("urn:ietf:params:acme:error:rateLimited") => IssueError::RateLimited(problem.to_string()),
        _ => IssueError::Refused(problem.to_string()),
    }
}

fn builder(settings: &Settings) -> Result<AccountBuilder, IssueError> {
    match &settings.directory_ca_file {
        Some(path) => Account::builder_with_root(path)
            .map_err(|e| IssueError::Local(format!("acme.directory_ca_file {}: {e}", path.display()))),
        None => Account::builder().map_err(|e| IssueError::Local(format!("HTTPS client: {e}"))),
    }
}

/// The account for `settings.directory`: restored from `accounts/…/account.json`, or created
/// (with the contacts and external account binding) and stored there for next time.
pub async fn account(settings: &Settings) -> Result<Account, IssueError> {
    let path = storage::account_path(&settings.storage, &settings.directory);
    let stored = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || storage::read_account(&path))
            .await
            .map_err(|e| IssueError::Local(e.to_string()))?
            .map_err(|e| IssueError::Local(e.to_string()))?
    };
    if let Some(json) = stored {
        let creds: AccountCredentials = serde_json::from_str(&json)
            .map_err(|e| IssueError::Local(format!("{}: not account credentials: {e}", path.display())))?;
        let account = builder(settings)?.from_credentials(creds).await?;
        debug!(account = account.id(), "ACME account restored");
        return Ok(account);
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let eab = settings.external_account.as_ref().map(|x| ExternalAccountKey::new(x.kid.clone(), &x.hmac_key.0));
    let (account, creds) = builder(settings)?
        .create(
            &NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false },
            settings.directory.clone(),
            eab.as_ref(),
        )
        .await?;
    let json = serde_json::to_string(&creds).map_err(|e| IssueError::Local(e.to_string()))?;
    tokio::task::spawn_blocking(move || storage::write_account(&path, &json))
        .await
        .map_err(|e| IssueError::Local(e.to_string()))?
        .map_err(|e| IssueError::Local(e.to_string()))?;
    info!(account = account.id(), directory = %settings.directory, "ACME account created");
    Ok(account)
}

/// Withdraws the challenge answers of one order when dropped (success, failure or cancel).
struct Offered<'a> {
    challenges: &'a Challenges,
    http: Vec<String>,
    tls: Vec<String>,
}

impl Drop for Offered<'_> {
    fn drop(&mut self) {
        for t in &self.http {
            self.challenges.remove_http01(t);
        }
        for n in &self.tls {
            self.challenges.remove_tls_alpn01(n);
        }
    }
}

/// A certificate just issued: PEM chain (leaf first) and PEM key.
pub struct Issued {
    pub fullchain: String,
    pub key: String,
    /// The challenge type answered for each name validated afresh (`http-01`, `tls-alpn-01`).
    pub challenges: Vec<&'static str>,
}

/// Order a certificate for `names` (replacing `replaces` when the CA speaks ARI), answering
/// challenges through `challenges`, within `settings.order_timeout`. `tls_first`: answer
/// TLS-ALPN-01 where both types are on and offered (after HTTP-01 failed).
pub async fn issue(
    account: &Account,
    settings: &Settings,
    challenges: &Challenges,
    names: &[String],
    replaces: Option<CertificateIdentifier<'static>>,
    tls_first: bool,
) -> Result<Issued, IssueError> {
    let timeout = settings.order_timeout;
    tokio::time::timeout(timeout, issue_inner(account, settings, challenges, names, replaces, tls_first))
        .await
        .map_err(|_| IssueError::Timeout(timeout))?
}

async fn issue_inner(
    account: &Account,
    settings: &Settings,
    challenges: &Challenges,
    names: &[String],
    replaces: Option<CertificateIdentifier<'static>>,
    tls_first: bool,
) -> Result<Issued, IssueError> {
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(r) = replaces {
        new_order = new_order.replaces(r);
    }
    let mut order = account.new_order(&new_order).await?;
    let mut offered = Offered { challenges, http: Vec::new(), tls: Vec::new() };
    let mut answered = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                let name = authz.identifier().to_string();
                return Err(IssueError::Challenge { name, detail: format!("authorization is {other:?}") });
            }
        }
        let name = authz.identifier().to_string();
        // HTTP-01 first: it passes any ingress that forwards plain HTTP; TLS-ALPN-01 needs SNI
        // passthrough all the way. After a failed validation the other goes first (`tls_first`),
        // as Caddy does: an ingress that forwards only 443 fails every HTTP-01.
        let mut kinds = [(settings.http_01, ChallengeType::Http01), (settings.tls_alpn_01, ChallengeType::TlsAlpn01)];
        if tls_first {
            kinds.reverse();
        }
        let kind = kinds
            .into_iter()
            .find(|(on, kind)| *on && authz.challenges.iter().any(|c| c.r#type == *kind))
            .map(|(_, kind)| kind)
            .ok_or_else(|| IssueError::NoChallenge(name.clone()))?;
        let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| IssueError::NoChallenge(name.clone()))?;
        let key_auth = challenge.key_authorization();
        match kind {
            ChallengeType::Http01 => {
                challenges.add_http01(&challenge.token, key_auth.as_str());
                offered.http.push(challenge.token.clone());
                answered.push("http-01");
            }
            _ => {
                let cert =
                    tls_alpn01_cert(&name, key_auth.digest().as_ref()).map_err(|e| IssueError::Local(e.to_string()))?;
                challenges.add_tls_alpn01(&name, Arc::new(cert));
                offered.tls.push(name.clone());
                answered.push("tls-alpn-01");
            }
        }
        debug!(%name, challenge = ?kind, "challenge answer published");
        challenge.set_ready().await?;
    }

    // Poll until the CA has validated everything (or given up), within the order's budget.
    let polling =
        RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(settings.order_timeout);
    let status = match order.poll_ready(&polling).await {
        Ok(status) => status,
        // A CA may put the failed challenge's problem on the order itself (pebble does): the
        // poll then ends with that error, and the authorizations say which name failed.
        Err(instant_acme::Error::Api(problem)) => {
            return Err(match challenge_error(&mut order).await {
                e @ IssueError::Challenge { .. } => e,
                _ => refused(&problem),
            })
        }
        Err(e) => return Err(e.into()),
    };
    if status != OrderStatus::Ready {
        return Err(challenge_error(&mut order).await);
    }
    drop(offered);

    let key = new_key(settings.key_type)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(|e| IssueError::Local(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| IssueError::Local(format!("CSR: {e}")))?;
    order.finalize_csr(csr.der()).await?;
    let fullchain = order.poll_certificate(&polling).await?;
    // Installed, a certificate without the names would read back as due at once: a new order
    // every few seconds, with no wait between them, against a CA that answers them all alike.
    match missing_names(&fullchain, names) {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => {
            let e = format!("its subjectAltName lacks {}", missing.join(", "));
            return Err(IssueError::BadCertificate(e));
        }
        Err(e) => return Err(IssueError::BadCertificate(e)),
    }
    Ok(Issued { fullchain, key: key.serialize_pem(), challenges: answered })
}

/// The names of `names` that the leaf of `fullchain` (PEM, leaf first) does not carry as DNS
/// names in its subjectAltName (a name only in the subject's CN is not one: browsers ignore it).
fn missing_names(fullchain: &str, names: &[String]) -> Result<Vec<String>, String> {
    use rustls_pki_types::pem::PemObject;
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(fullchain.as_bytes())
        .next()
        .ok_or("no certificate in the chain")?
        .map_err(|e| format!("the chain does not parse: {e}"))?;
    let on = storage::parse_leaf(leaf.as_ref()).map_err(|e| format!("the leaf does not parse: {e}"))?;
    Ok(names.iter().filter(|n| !on.names.contains(&n.to_ascii_lowercase())).cloned().collect())
}

/// The CA's reason for an invalid order: the first failed challenge's error.
async fn challenge_error(order: &mut instant_acme::Order) -> IssueError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        if let Ok(state) = authz.refresh().await {
            if state.status == AuthorizationStatus::Invalid {
                let detail = state
                    .challenges
                    .iter()
                    .find_map(|c| c.error.as_ref().map(|p| p.to_string()))
                    .unwrap_or_else(|| "authorization invalid".into());
                return IssueError::Challenge { name, detail };
            }
        }
    }
    IssueError::Refused(match &order.state().error {
        Some(p) => p.to_string(),
        None => format!("order is {:?}", order.state().status),
    })
}

/// A fresh certificate key: ECDSA P-256, or RSA-2048 (generated with the `rsa` crate, as ring
/// signs with RSA keys but does not make them).
fn new_key(kind: KeyType) -> Result<KeyPair, IssueError> {
    match kind {
        KeyType::EcdsaP256 => {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| IssueError::Local(e.to_string()))
        }
        KeyType::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| IssueError::Local(format!("RSA key: {e}")))?;
            let der = key.to_pkcs8_der().map_err(|e| IssueError::Local(format!("RSA key: {e}")))?;
            let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
            KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
                .map_err(|e| IssueError::Local(format!("RSA key: {e}")))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A chain whose leaf lacks an ordered name, or names it only in its CN, is refused (the
    /// job then waits as after any failed order); case does not matter.
    #[test]
    fn an_issued_chain_must_name_every_ordered_name_in_its_san() {
        let key = new_key(KeyType::EcdsaP256).unwrap();
        let chain = |san: &[&str], cn: &str| {
            let mut p = CertificateParams::new(san.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.self_signed(&key).unwrap().pem()
        };
        let names = ["a.test".to_string(), "b.test".to_string()];
        assert_eq!(missing_names(&chain(&["a.test", "B.test"], "x"), &names).unwrap(), Vec::<String>::new());
        assert_eq!(missing_names(&chain(&["a.test"], "b.test"), &names).unwrap(), ["b.test"]);
        assert_eq!(missing_names(&chain(&[], "a.test"), &names).unwrap(), names);
        assert!(missing_names("not pem", &names).is_err());
        let e = IssueError::BadCertificate("its subjectAltName lacks b.test".into());
        assert_eq!(e.result(), "bad_certificate");
    }

    #[test]
    fn both_key_types_make_a_csr_and_a_key_the_loader_accepts() {
        for kind in [KeyType::EcdsaP256, KeyType::Rsa2048] {
            let key = new_key(kind).unwrap();
            let params = CertificateParams::new(vec!["a.test".to_string()]).unwrap();
            assert!(params.serialize_request(&key).is_ok());
            let cert = CertificateParams::new(vec!["a.test".to_string()]).unwrap().self_signed(&key).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            crate::tls::load_pair(&c, &k).unwrap();
        }
    }
}

//! Self-managed TLS: the webhook makes its own CA and serving certificate, keeps them in a
//! Secret (so every replica serves the same pair, from its Secret volume), and keeps the CA in
//! the `caBundle` of its MutatingWebhookConfiguration. One replica does this at a time, the
//! holder of a Lease. vault-k8s and Azure's cert rotator work the same way; Helm's `genCA` is
//! what this replaces (a new CA at every render churns the caBundle and every GitOps diff).
//!
//! Renewal comes when a third of a certificate's lifetime is left: a week-long serving
//! certificate is renewed with more than two days to spare. A renewed CA is published next to
//! the old one (the caBundle holds both until the old one expires) before anything it signed
//! is served.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::webhook::certificate::{ServingCertificate, ServingPair};

/// Secret keys: cert-manager's and `kubernetes.io/tls`'s names, plus the CA's key.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
const FIELD_MANAGER: &str = "token-agent-webhook";
const CA_NAME: &str = "token-agent webhook CA";

/// What to keep current, and where.
#[derive(Debug, Clone)]
pub struct SelfManagedTls {
    pub namespace: String,
    pub secret: String,
    pub webhook_config: String,
    pub service: String,
    pub lease: String,
    pub cert_validity: Duration,
    pub ca_validity: Duration,
    /// How often the leader looks (the caBundle may have been reset by hand).
    pub check_every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("MutatingWebhookConfiguration `{0}` not found (is the chart's webhook installed?)")]
    NoWebhookConfig(String),
}

/// The Secret's contents, as PEM text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// The current CA first, then a previous one still valid.
    pub ca_bundle: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

/// The names the API server may call the webhook by.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Certificates start this much before they are made, for clocks behind ours.
const BACKDATE: Duration = Duration::from_secs(60);

fn validity(params: &mut CertificateParams, now: SystemTime, lifetime: Duration) {
    let start = now - BACKDATE;
    params.not_before = start.into();
    params.not_after = (now + lifetime).into();
}

fn new_ca(now: SystemTime, lifetime: Duration) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, now, lifetime);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_leaf(
    ca_cert: &str,
    ca_key: &str,
    names: &[String],
    now: SystemTime,
    lifetime: Duration,
) -> Result<(String, String), rcgen::Error> {
    let issuer = Issuer::from_ca_cert_pem(ca_cert, KeyPair::from_pem(ca_key)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        names.get(2).cloned().unwrap_or_default(),
    );
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, now, lifetime);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A parsed certificate's lifetime, subject and issuer, and whether it is due for renewal.
struct Lifetime {
    not_before: i64,
    not_after: i64,
}

impl Lifetime {
    fn of(der: &CertificateDer<'_>) -> Option<Lifetime> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(Lifetime {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Less than a third of its lifetime left (or already expired). The lifetime counts from
    /// when it was made, not from its backdated start.
    fn due(&self, now: i64) -> bool {
        let made = self
            .not_before
            .saturating_add(BACKDATE.as_secs().cast_signed());
        let span = self.not_after.saturating_sub(made);
        now >= self.not_after.saturating_sub(span / 3)
    }

    fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// Whether `leaf` was signed by `ca` and names exactly `names`.
fn leaf_fits(leaf: &CertificateDer<'_>, ca: &CertificateDer<'_>, names: &[String]) -> bool {
    let (Ok((_, leaf)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(leaf),
        x509_parser::parse_x509_certificate(ca),
    ) else {
        return false;
    };
    let signed = leaf.verify_signature(Some(ca.public_key())).is_ok();
    let dns: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    signed && dns == names
}

/// What the Secret should hold after this round, or `None` when `current` is still good.
/// Anything unreadable in `current` is replaced, never half-used.
pub fn plan(
    current: Option<&Material>,
    names: &[String],
    now: SystemTime,
    tls: &SelfManagedTls,
) -> Result<Option<Material>, rcgen::Error> {
    let t = unix(now);
    let usable = current.filter(|m| {
        ServingPair::from_pem(m.cert.as_bytes(), m.key.as_bytes()).is_ok()
            && certs(&m.ca_bundle)
                .first()
                .is_some_and(|ca| ca_key_matches(ca, &m.ca_key))
    });
    let Some(current) = usable else {
        let (ca_cert, ca_key) = new_ca(now, tls.ca_validity)?;
        let (cert, key) = new_leaf(&ca_cert, &ca_key, names, now, tls.cert_validity)?;
        return Ok(Some(Material {
            ca_bundle: ca_cert,
            ca_key,
            cert,
            key,
        }));
    };
    let bundle = certs(&current.ca_bundle);
    let ca = &bundle[0];
    let ca_due = Lifetime::of(ca).is_none_or(|l| l.due(t));
    let (ca_bundle, ca_key, ca_cert) = if ca_due {
        let (ca_cert, ca_key) = new_ca(now, tls.ca_validity)?;
        let old = Lifetime::of(ca).is_some_and(|l| !l.expired(t));
        let bundle = if old {
            format!("{ca_cert}{}", pem_of(ca))
        } else {
            ca_cert.clone()
        };
        (bundle, ca_key, ca_cert)
    } else {
        // Drop a previous CA once it expired.
        let live: String = bundle
            .iter()
            .enumerate()
            .filter(|(i, c)| *i == 0 || Lifetime::of(c).is_some_and(|l| !l.expired(t)))
            .map(|(_, c)| pem_of(c))
            .collect();
        (live, current.ca_key.clone(), pem_of(ca))
    };
    let ca_der = certs(&ca_cert);
    let leaf = certs(&current.cert);
    let leaf_good = !ca_due
        && leaf.first().is_some_and(|l| {
            Lifetime::of(l).is_some_and(|life| !life.due(t)) && leaf_fits(l, &ca_der[0], names)
        });
    let (cert, key) = if leaf_good {
        (current.cert.clone(), current.key.clone())
    } else {
        new_leaf(&ca_cert, &ca_key, names, now, tls.cert_validity)?
    };
    let next = Material {
        ca_bundle,
        ca_key,
        cert,
        key,
    };
    Ok((next != *current).then_some(next))
}

fn ca_key_matches(ca: &CertificateDer<'_>, key_pem: &str) -> bool {
    let (Ok((_, ca)), Ok(key)) = (
        x509_parser::parse_x509_certificate(ca),
        KeyPair::from_pem(key_pem),
    ) else {
        return false;
    };
    ca.public_key().raw == key.subject_public_key_info()
}

/// `der` as PEM, with the `pem` crate rcgen already uses (LF line endings, as rcgen writes).
fn pem_of(der: &CertificateDer<'_>) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

impl Material {
    fn from_secret(secret: &Secret) -> Option<Material> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| {
            data.get(key)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        Some(Material {
            ca_bundle: text(CA_CERT)?,
            ca_key: text(CA_KEY)?,
            cert: text(TLS_CERT)?,
            key: text(TLS_KEY)?,
        })
    }

    fn data(&self) -> BTreeMap<String, ByteString> {
        [
            (CA_CERT, &self.ca_bundle),
            (CA_KEY, &self.ca_key),
            (TLS_CERT, &self.cert),
            (TLS_KEY, &self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.clone().into_bytes())))
        .collect()
    }
}

impl SelfManagedTls {
    /// While this replica leads (per `leader`), keeps the Secret and caBundle current and
    /// serves the pair at once (other replicas read it from their Secret volume).
    pub async fn run(
        self,
        client: kube::Client,
        serving: std::sync::Arc<ServingCertificate>,
        mut leader: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut retry = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = leader.wait_for(|leading| *leading) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let wait = match self.round(&client, &serving).await {
                Ok(()) => {
                    retry = Duration::from_secs(1);
                    self.check_every
                }
                Err(e) => {
                    warn!(error = %e, retry = ?retry, "self-managed TLS round failed");
                    let wait = retry;
                    retry = (retry * 2).min(self.check_every);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = leader.wait_for(|leading| !*leading) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One look: renew what is due, publish the CA, then store and serve the pair.
    pub async fn round(
        &self,
        client: &kube::Client,
        serving: &ServingCertificate,
    ) -> Result<(), TlsError> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let stored = secrets
            .get_opt(&self.secret)
            .await?
            .as_ref()
            .and_then(Material::from_secret);
        let names = dns_names(&self.service, &self.namespace);
        let next = plan(stored.as_ref(), &names, SystemTime::now(), self)?;
        let material = next.as_ref().or(stored.as_ref()).cloned();
        let Some(material) = material else {
            return Ok(());
        };
        // The CA first: nothing it signed may be served before the API server trusts it.
        self.publish_ca(client, &material.ca_bundle).await?;
        if next.is_some() {
            let secret = json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": self.secret,
                    "labels": { "app.kubernetes.io/managed-by": FIELD_MANAGER },
                },
                "type": "kubernetes.io/tls",
                "data": material.data(),
            });
            secrets
                .patch(
                    &self.secret,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await?;
            info!(secret = %self.secret, "serving certificate renewed and stored");
        }
        if let Ok(pair) = ServingPair::from_pem(material.cert.as_bytes(), material.key.as_bytes()) {
            serving.install(pair);
        }
        Ok(())
    }

    /// Sets `caBundle` on every webhook of the configuration that lacks it, with a JSON patch
    /// guarded by the resourceVersion read (the configuration is never rewritten whole, so
    /// fields this build does not know are kept).
    async fn publish_ca(&self, client: &kube::Client, bundle: &str) -> Result<(), TlsError> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let Some(config) = api.get_opt(&self.webhook_config).await? else {
            return Err(TlsError::NoWebhookConfig(self.webhook_config.clone()));
        };
        let wanted = ByteString(bundle.as_bytes().to_vec());
        let mut ops = vec![json!({
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": config.metadata.resource_version,
        })];
        for (i, hook) in config.webhooks.iter().flatten().enumerate() {
            if hook.client_config.ca_bundle.as_ref() != Some(&wanted) {
                ops.push(json!({ "op": "test", "path": format!("/webhooks/{i}/name"), "value": hook.name }));
                ops.push(json!({
                    "op": "add",
                    "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                    "value": base64::engine::general_purpose::STANDARD.encode(bundle),
                }));
            }
        }
        if ops.len() == 1 {
            return Ok(());
        }
        let patch: json_patch::Patch = serde_json::from_value(json!(ops))
            .map_err(|e| TlsError::Api(kube::Error::SerdeError(e)))?;
        api.patch(
            &self.webhook_config,
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await?;
        info!(webhook_config = %self.webhook_config, "caBundle published");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> SelfManagedTls {
        SelfManagedTls {
            namespace: "token-agent".into(),
            secret: "injector-tls".into(),
            webhook_config: "injector".into(),
            service: "injector".into(),
            lease: "injector".into(),
            cert_validity: Duration::from_secs(3 * 3600),
            ca_validity: Duration::from_secs(30 * 3600),
            check_every: Duration::from_secs(60),
        }
    }

    fn names() -> Vec<String> {
        dns_names("injector", "token-agent")
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn nothing_stored_makes_a_ca_and_a_leaf_it_signed_for_the_service_names() {
        let now = SystemTime::now();
        let m = plan(None, &names(), now, &tls()).unwrap().unwrap();
        let bundle = certs(&m.ca_bundle);
        assert_eq!(bundle.len(), 1);
        assert!(ca_key_matches(&bundle[0], &m.ca_key));
        assert!(leaf_fits(&certs(&m.cert)[0], &bundle[0], &names()));
        assert!(ServingPair::from_pem(m.cert.as_bytes(), m.key.as_bytes()).is_ok());
        // Good material is kept as it is, for as long as two thirds of the leaf's life.
        assert_eq!(plan(Some(&m), &names(), now, &tls()).unwrap(), None);
        assert_eq!(
            plan(Some(&m), &names(), now + HOUR + HOUR / 2, &tls()).unwrap(),
            None
        );
    }

    #[test]
    fn a_leaf_with_a_third_left_is_renewed_by_the_same_ca() {
        let now = SystemTime::now();
        let m = plan(None, &names(), now, &tls()).unwrap().unwrap();
        let later = now + 2 * HOUR + Duration::from_secs(60);
        let next = plan(Some(&m), &names(), later, &tls()).unwrap().unwrap();
        assert_eq!(next.ca_bundle, m.ca_bundle, "the caBundle must not churn");
        assert_eq!(next.ca_key, m.ca_key);
        assert_ne!(next.cert, m.cert);
        assert!(leaf_fits(
            &certs(&next.cert)[0],
            &certs(&m.ca_bundle)[0],
            &names()
        ));
    }

    #[test]
    fn a_ca_with_a_third_left_is_replaced_and_trusted_beside_the_old_one_until_it_expires() {
        let now = SystemTime::now();
        let m = plan(None, &names(), now, &tls()).unwrap().unwrap();
        let later = now + 21 * HOUR;
        let next = plan(Some(&m), &names(), later, &tls()).unwrap().unwrap();
        let bundle = certs(&next.ca_bundle);
        assert_eq!(bundle.len(), 2);
        assert_eq!(pem_of(&bundle[1]), m.ca_bundle, "the old CA stays trusted");
        assert!(leaf_fits(&certs(&next.cert)[0], &bundle[0], &names()));
        // Once the old CA expired it leaves the bundle.
        let much_later = now + 31 * HOUR;
        let after = plan(Some(&next), &names(), much_later, &tls())
            .unwrap()
            .unwrap();
        assert_eq!(certs(&after.ca_bundle).len(), 1);
        assert_eq!(pem_of(&certs(&after.ca_bundle)[0]), pem_of(&bundle[0]));
    }

    #[test]
    fn unusable_material_is_replaced_whole() {
        let now = SystemTime::now();
        let m = plan(None, &names(), now, &tls()).unwrap().unwrap();
        let other = plan(None, &names(), now, &tls()).unwrap().unwrap();
        let broken = [
            Material {
                key: other.key.clone(),
                ..m.clone()
            },
            Material {
                ca_key: other.ca_key.clone(),
                ..m.clone()
            },
            Material {
                cert: "garbage".into(),
                ..m.clone()
            },
            Material {
                ca_bundle: String::new(),
                ..m.clone()
            },
        ];
        for (i, b) in broken.iter().enumerate() {
            let next = plan(Some(b), &names(), now, &tls()).unwrap().unwrap();
            assert_ne!(next.ca_bundle, m.ca_bundle, "case {i}: a new CA");
            assert!(ServingPair::from_pem(next.cert.as_bytes(), next.key.as_bytes()).is_ok());
        }
        // A leaf for other names (the Service was renamed) is reissued by the same CA.
        let renamed = dns_names("renamed", "token-agent");
        let next = plan(Some(&m), &renamed, now, &tls()).unwrap().unwrap();
        assert_eq!(next.ca_bundle, m.ca_bundle);
        assert!(leaf_fits(
            &certs(&next.cert)[0],
            &certs(&m.ca_bundle)[0],
            &renamed
        ));
        // A leaf another CA signed is reissued.
        let foreign = Material {
            cert: other.cert.clone(),
            key: other.key.clone(),
            ..m.clone()
        };
        let next = plan(Some(&foreign), &names(), now, &tls())
            .unwrap()
            .unwrap();
        assert_eq!(next.ca_bundle, m.ca_bundle);
        assert!(leaf_fits(
            &certs(&next.cert)[0],
            &certs(&m.ca_bundle)[0],
            &names()
        ));
    }
}

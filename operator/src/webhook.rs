//! The mutating admission webhook of sidecar mode: HTTPS on its own port, `/mutate-pods`, served by every replica
//! (not only the leader: the API server calls whichever the Service picks).
//!
//! It keeps its own CA and serving certificate in a Secret in the operator's namespace: the first replica makes
//! them, every replica loads them, and whoever finds the serving certificate within [`RENEW_BEFORE`] of its expiry
//! issues a new one from the same CA. The CA bundle goes into the chart's MutatingWebhookConfiguration (found by
//! name). A replaced CA stays in the bundle beside the new one until the next check, so replicas still serving a
//! certificate of the old CA keep being trusted while they reload.

use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::crd::VideoDelivery;
use crate::inject::{self, Refusal};

/// The serving certificate lives a year and is renewed when a month is left; the CA lives ten years and is
/// replaced when one is left.
const CERT_LIFETIME: time::Duration = time::Duration::days(365);
pub const RENEW_BEFORE: time::Duration = time::Duration::days(30);
const CA_LIFETIME: time::Duration = time::Duration::days(3650);
const CA_RENEW_BEFORE: time::Duration = time::Duration::days(365);
/// How often each replica re-reads the Secret (to load a certificate another replica renewed) and checks expiry.
const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// The API server gives up after the configuration's timeoutSeconds; a lookup that takes longer is useless.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(4);
/// An AdmissionReview carries one pod; the API server limits objects to 3 MiB.
const MAX_BODY: usize = 4 << 20;
const MAX_CONNECTIONS: usize = 256;
const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const PREVIOUS_CA_CRT: &str = "previous-ca.crt";
const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the API server refused {what}: {source}")]
    Api { what: String, source: kube::Error },
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("Secret {0} holds no usable certificate and key")]
    BadSecret(String),
    #[error("MutatingWebhookConfiguration {0} not found (the chart installs it)")]
    NoConfiguration(String),
    #[error("someone else kept changing {0}; will retry")]
    Conflict(String),
}

/// Where the webhook keeps its certificate and which configuration trusts it.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub namespace: String,
    pub secret_name: String,
    pub configuration: String,
    /// Names the serving certificate covers: the Service's DNS names (and an IP address where a test calls it).
    pub hosts: Vec<String>,
    /// The agent image when a VideoDelivery names none.
    pub default_image: String,
}

/// The PEM texts of the Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Certs {
    pub ca: String,
    pub ca_key: String,
    pub previous_ca: Option<String>,
    pub cert: String,
    pub key: String,
}

impl Certs {
    /// What the configuration's caBundle holds: the CA, and the one it replaced while replicas may still serve it.
    pub fn bundle(&self) -> String {
        match &self.previous_ca {
            Some(p) => format!("{}{p}", self.ca),
            None => self.ca.clone(),
        }
    }

    fn from_secret(s: &Secret) -> Option<Certs> {
        let data = s.data.as_ref()?;
        let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
        Some(Certs {
            ca: text(CA_CRT)?,
            ca_key: text(CA_KEY)?,
            previous_ca: text(PREVIOUS_CA_CRT),
            cert: text(TLS_CRT)?,
            key: text(TLS_KEY)?,
        })
    }

    fn into_data(self) -> std::collections::BTreeMap<String, ByteString> {
        let mut d = std::collections::BTreeMap::from([
            (CA_CRT.to_string(), ByteString(self.ca.into_bytes())),
            (CA_KEY.to_string(), ByteString(self.ca_key.into_bytes())),
            (TLS_CRT.to_string(), ByteString(self.cert.into_bytes())),
            (TLS_KEY.to_string(), ByteString(self.key.into_bytes())),
        ]);
        if let Some(p) = self.previous_ca {
            d.insert(PREVIOUS_CA_CRT.into(), ByteString(p.into_bytes()));
        }
        d
    }
}

/// Expiry and names of a PEM certificate; None when it does not parse.
fn inspect(pem: &str) -> Option<(OffsetDateTime, Vec<String>)> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let not_after = cert.validity().not_after.to_datetime();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(|b| std::net::IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(|b| std::net::IpAddr::from(b).to_string()),
                        _ => None,
                    };
                    names.extend(ip);
                }
                _ => {}
            }
        }
    }
    Some((not_after, names))
}

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "videodelivery admission webhook CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + CA_LIFETIME;
    p
}

fn new_ca(now: OffsetDateTime) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let cert = ca_params(now).self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_leaf(ca_key_pem: &str, hosts: &[String], now: OffsetDateTime) -> Result<(String, String), rcgen::Error> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    // The issuer is the CA's name and key; rebuilt from the same parameters, so its name matches the stored CA.
    let issuer = Issuer::new(ca_params(now), ca_key);
    let mut p = CertificateParams::new(hosts.to_vec())?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, hosts.first().map(String::as_str).unwrap_or("videodelivery-webhook"));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + CERT_LIFETIME;
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The certificates to keep: `current` when still good for `hosts` past the renewal margin, else renewed (a new
/// serving certificate, and a new CA when the CA is near its end or unreadable). Pure but for key generation.
pub fn renew(current: Option<&Certs>, hosts: &[String], now: OffsetDateTime) -> Result<Option<Certs>, rcgen::Error> {
    let ca_ok = current.and_then(|c| inspect(&c.ca)).is_some_and(|(end, _)| end - now > CA_RENEW_BEFORE)
        && current.is_some_and(|c| KeyPair::from_pem(&c.ca_key).is_ok());
    let leaf_ok = current
        .and_then(|c| inspect(&c.cert))
        .is_some_and(|(end, names)| end - now > RENEW_BEFORE && hosts.iter().all(|h| names.contains(h)))
        && current.is_some_and(|c| KeyPair::from_pem(&c.key).is_ok());
    match (current, ca_ok, leaf_ok) {
        (Some(_), true, true) => Ok(None),
        (Some(c), true, false) => {
            let (cert, key) = new_leaf(&c.ca_key, hosts, now)?;
            Ok(Some(Certs { cert, key, previous_ca: None, ..c.clone() }))
        }
        (current, _, _) => {
            let (ca, ca_key) = new_ca(now)?;
            let (cert, key) = new_leaf(&ca_key, hosts, now)?;
            let previous_ca =
                current.filter(|c| inspect(&c.ca).is_some_and(|(end, _)| end > now)).map(|c| c.ca.clone());
            Ok(Some(Certs { ca, ca_key, previous_ca, cert, key }))
        }
    }
}

/// The configuration as the owner of the Secret the operator creates, so that uninstalling the chart (which deletes
/// the configuration) lets the garbage collector delete the CA key too, rather than leaving it behind. None when the
/// configuration cannot be read: the Secret is then made without an owner (and outlives the release).
async fn configuration_owner(client: &kube::Client, name: &str) -> Option<OwnerReference> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match api.get_opt(name).await {
        Ok(Some(config)) => config.controller_owner_ref(&()).map(|mut o| {
            // Not the controller of the Secret, and no finalizer rights needed on the configuration.
            o.controller = None;
            o.block_owner_deletion = None;
            o
        }),
        Ok(None) => None,
        Err(e) => {
            warn!(configuration = name, error = %e, "cannot read the webhook configuration to own its Secret");
            None
        }
    }
}

/// Reads the Secret, renews what needs it, and writes it back (create, or replace at the version read, so two
/// replicas renewing at once cannot both win: the loser re-reads and takes the winner's).
pub async fn ensure_certs(client: &kube::Client, s: &WebhookSettings) -> Result<Certs, WebhookError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &s.namespace);
    let what = || format!("Secret {}/{}", s.namespace, s.secret_name);
    let mut owner = None;
    for _ in 0..5 {
        let existing =
            api.get_opt(&s.secret_name).await.map_err(|source| WebhookError::Api { what: what(), source })?;
        let current = existing.as_ref().and_then(Certs::from_secret);
        let Some(renewed) = renew(current.as_ref(), &s.hosts, OffsetDateTime::now_utc())? else {
            return current.ok_or_else(|| WebhookError::BadSecret(what()));
        };
        let result = match existing {
            Some(mut secret) => {
                secret.data = Some(renewed.clone().into_data());
                secret.string_data = None;
                api.replace(&s.secret_name, &PostParams::default(), &secret).await
            }
            None => {
                if owner.is_none() {
                    owner = configuration_owner(client, &s.configuration).await;
                }
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(s.secret_name.clone()),
                        labels: Some([crate::resources::MANAGED_BY].map(|(k, v)| (k.into(), v.into())).into()),
                        owner_references: owner.clone().map(|o| vec![o]),
                        ..Default::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(renewed.clone().into_data()),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &secret).await
            }
        };
        match result {
            Ok(_) => {
                info!(secret = %what(), "webhook certificate issued");
                return Ok(renewed);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(source) => return Err(WebhookError::Api { what: what(), source }),
        }
    }
    Err(WebhookError::Conflict(what()))
}

/// Writes `bundle` into every webhook of the configuration, unless it is there already.
pub async fn write_ca_bundle(client: &kube::Client, name: &str, bundle: &str) -> Result<(), WebhookError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let what = || format!("MutatingWebhookConfiguration {name}");
    for _ in 0..5 {
        let Some(mut config) = api.get_opt(name).await.map_err(|source| WebhookError::Api { what: what(), source })?
        else {
            return Err(WebhookError::NoConfiguration(name.into()));
        };
        let want = ByteString(bundle.as_bytes().to_vec());
        let webhooks = config.webhooks.get_or_insert_with(Vec::new);
        if webhooks.iter().all(|w| w.client_config.ca_bundle.as_ref() == Some(&want)) {
            return Ok(());
        }
        for w in webhooks.iter_mut() {
            w.client_config.ca_bundle = Some(want.clone());
        }
        match api.replace(name, &PostParams::default(), &config).await {
            Ok(_) => {
                info!(configuration = name, "CA bundle written");
                return Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(source) => return Err(WebhookError::Api { what: what(), source }),
        }
    }
    Err(WebhookError::Conflict(what()))
}

/// The serving certificate, swapped in place when renewed; connections in progress keep theirs.
#[derive(Debug)]
struct Reloadable(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok()?.clone()
    }
}

fn certified_key(c: &Certs) -> Option<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(c.cert.as_bytes()).collect::<Result<_, _>>().ok()?;
    let key = PrivateKeyDer::from_pem_slice(c.key.as_bytes()).ok()?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).ok()?;
    Some(Arc::new(CertifiedKey::new(chain, signer)))
}

/// Serves the webhook until `stop`: makes or loads the certificate (retrying while the API server or RBAC refuses,
/// with no listener answering until then, so the API server fails closed rather than trusting nothing), writes the
/// CA bundle, then serves and re-checks every hour.
pub async fn run(
    client: kube::Client,
    settings: WebhookSettings,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let resolver = Arc::new(Reloadable(RwLock::new(None)));
    let mut pause = Duration::from_secs(1);
    let mut listener = Some(listener);
    loop {
        let next = match refresh(&client, &settings, &resolver).await {
            Ok(()) => {
                pause = Duration::from_secs(1);
                CHECK_EVERY
            }
            Err(e) => {
                warn!(error = %e, "webhook certificate not in place; retrying");
                pause = (pause * 2).min(Duration::from_secs(30));
                pause
            }
        };
        if resolver.0.read().is_ok_and(|k| k.is_some())
            && let Some(listener) = listener.take()
        {
            let config = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(resolver.clone());
            tokio::spawn(serve(listener, Arc::new(config), client.clone(), settings.clone()));
        }
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            () = tokio::time::sleep(next) => {}
        }
    }
}

async fn refresh(client: &kube::Client, s: &WebhookSettings, resolver: &Reloadable) -> Result<(), WebhookError> {
    let certs = ensure_certs(client, s).await?;
    let key = certified_key(&certs).ok_or_else(|| WebhookError::BadSecret(s.secret_name.clone()))?;
    if let Ok(mut slot) = resolver.0.write() {
        *slot = Some(key);
    }
    write_ca_bundle(client, &s.configuration, &certs.bundle()).await
}

async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    client: kube::Client,
    settings: WebhookSettings,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let settings = Arc::new(settings);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (acceptor, client, settings) = (acceptor.clone(), client.clone(), settings.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await else {
                return;
            };
            let service = service_fn(move |req| {
                let (client, settings) = (client.clone(), settings.clone());
                async move { Ok::<_, Infallible>(handle(req, &client, &settings).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(tls), service);
            let _ = tokio::time::timeout(Duration::from_secs(300), conn).await;
        });
    }
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    client: &kube::Client,
    settings: &WebhookSettings,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/mutate-pods" {
        return reply(StatusCode::NOT_FOUND, b"{}".to_vec());
    }
    if req.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, b"{}".to_vec());
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, b"{}".to_vec()),
    };
    let response = match serde_json::from_slice::<AdmissionReview<Pod>>(&body)
        .ok()
        .and_then(|r| TryInto::<AdmissionRequest<Pod>>::try_into(r).ok())
    {
        Some(request) => admit(&request, client, settings).await,
        None => AdmissionResponse::invalid("not an AdmissionReview v1 of a Pod"),
    };
    match serde_json::to_vec(&response.into_review()) {
        Ok(body) => reply(StatusCode::OK, body),
        Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, b"{}".to_vec()),
    }
}

/// Admits one pod: unchanged when it needs no sidecar, refused with the reason, or patched with the sidecar.
/// Nothing is written anywhere, so a dry-run request is answered the same way (`sideEffects: None`).
async fn admit(req: &AdmissionRequest<Pod>, client: &kube::Client, s: &WebhookSettings) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(req);
    let Some(pod) = req.object.as_ref() else { return allowed };
    let name = match inject::requested(pod) {
        Ok(None) => return allowed,
        Ok(Some(name)) => name.to_string(),
        Err(refusal) => return deny(allowed, &refusal),
    };
    let namespace = req.namespace.clone().or_else(|| pod.metadata.namespace.clone()).unwrap_or_default();
    let api: Api<VideoDelivery> = Api::namespaced(client.clone(), &namespace);
    let vd = match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(&name)).await {
        Ok(Ok(Some(vd))) => vd,
        Ok(Ok(None)) => return deny(allowed, &Refusal::NoSuchDelivery { name, namespace }),
        Ok(Err(e)) => {
            warn!(error = %e, delivery = %name, %namespace, "cannot read the VideoDelivery for injection");
            return allowed
                .deny(format!("the videodelivery operator cannot read VideoDelivery {namespace}/{name}: {e}"));
        }
        Err(_) => {
            return allowed
                .deny(format!("the videodelivery operator got no answer reading VideoDelivery {namespace}/{name}"));
        }
    };
    let injected = match inject::inject(pod, &vd, &s.default_image) {
        Ok(Some(p)) => p,
        Ok(None) => return allowed,
        Err(refusal) => return deny(allowed, &refusal),
    };
    let (Ok(before), Ok(after)) = (serde_json::to_value(pod), serde_json::to_value(&injected)) else {
        return allowed.deny("the videodelivery operator could not encode the pod");
    };
    let patch = json_patch::diff(&before, &after);
    match allowed.clone().with_patch(patch) {
        Ok(r) => {
            info!(pod = pod.metadata.name.as_deref().or(pod.metadata.generate_name.as_deref()).unwrap_or(""), %namespace, delivery = %name, dry_run = req.dry_run, "sidecar injected");
            r
        }
        Err(_) => allowed.deny("the videodelivery operator could not encode the patch"),
    }
}

fn deny(resp: AdmissionResponse, refusal: &Refusal) -> AdmissionResponse {
    let mut r = resp.deny(refusal);
    // 400 and Invalid: the pod as written cannot be admitted; retrying it unchanged will not help.
    r.result.code = 400;
    r.result.reason = "Invalid".into();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    fn hosts() -> Vec<String> {
        vec!["vd-webhook.vd-system.svc".into(), "127.0.0.1".into()]
    }

    #[test]
    fn certificates_are_made_kept_and_renewed_before_expiry() {
        let now = OffsetDateTime::now_utc();
        let first = renew(None, &hosts(), now).unwrap().unwrap();
        let (end, names) = inspect(&first.cert).unwrap();
        assert!(end - now > time::Duration::days(300));
        assert_eq!(names, hosts());
        assert!(first.previous_ca.is_none());
        assert_eq!(renew(Some(&first), &hosts(), now).unwrap(), None, "a good certificate is kept");
        // A month before expiry: a new serving certificate from the same CA (the bundle does not change).
        let later = now + CERT_LIFETIME - RENEW_BEFORE + time::Duration::days(1);
        let renewed = renew(Some(&first), &hosts(), later).unwrap().unwrap();
        assert_eq!((renewed.ca.as_str(), renewed.bundle()), (first.ca.as_str(), first.bundle()));
        assert_ne!(renewed.cert, first.cert);
        assert!(certified_key(&renewed).is_some());
        // A new Service name needs a new certificate.
        let more = [hosts(), vec!["other.vd-system.svc".into()]].concat();
        assert_ne!(renew(Some(&first), &more, now).unwrap().unwrap().cert, first.cert);
        // Near the CA's end: a new CA, the old one kept in the bundle meanwhile.
        let late = now + CA_LIFETIME - CA_RENEW_BEFORE + time::Duration::days(1);
        let new_ca = renew(Some(&first), &hosts(), late).unwrap().unwrap();
        assert_ne!(new_ca.ca, first.ca);
        assert_eq!(new_ca.bundle(), format!("{}{}", new_ca.ca, first.ca));
    }

    #[test]
    fn the_serving_certificate_verifies_against_the_ca() {
        let now = OffsetDateTime::now_utc();
        let c = renew(None, &hosts(), now).unwrap().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(c.ca.as_bytes()).unwrap()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(c.cert.as_bytes()).unwrap();
        let name = rustls_pki_types::ServerName::try_from("vd-webhook.vd-system.svc").unwrap();
        let now = rustls_pki_types::UnixTime::now();
        verifier.verify_server_cert(&leaf, &[], &name, &[], now).unwrap();
        // Renewed from the same CA, it still verifies.
        let later = OffsetDateTime::now_utc() + CERT_LIFETIME - time::Duration::days(10);
        let renewed = renew(Some(&c), &hosts(), later).unwrap().unwrap();
        let leaf = CertificateDer::from_pem_slice(renewed.cert.as_bytes()).unwrap();
        let then = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(later.unix_timestamp() as u64));
        verifier.verify_server_cert(&leaf, &[], &name, &[], then).unwrap();
    }
}

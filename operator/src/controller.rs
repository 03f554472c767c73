//! The reconcile loop: one VideoDelivery in, its keyring Secret, agents and status out, in small named steps.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};
use vd_token::rotation::{Event as KeyEvent, next_rotation};
use vd_token::{KeyState, Keyring};

use crate::crd::{KeyStatus, ROTATE_ANNOTATION, SigningFloors, VideoDelivery};
use crate::expose::{self, Verdict};
use crate::keyring::{self, KeyringSecretError, ROTATION_HANDLED_ANNOTATION};
use crate::metrics::Metrics;
use crate::resources::{self, MANAGED_BY};
use crate::status::{self, AgentsObserved, Blocked, Exposure, KeysObserved, KeysView, Observed, reasons, types};

/// The one field manager for everything this operator applies.
pub const MANAGER: &str = "videodelivery-operator";
/// The field manager that holds `replicas` while it passes from this operator to an autoscaler.
const HANDOFF_MANAGER: &str = "videodelivery-operator-handoff";
/// Even with nothing due, look again this often.
const RESYNC: Duration = Duration::from_secs(300);
/// While the API server refuses an owned object, look again at least this often.
const REFUSED_RETRY: Duration = Duration::from_secs(20);
/// How soon a route or Ingress that its controller has not (yet) accepted is looked at again.
const EXPOSURE_RETRY: Duration = Duration::from_secs(5);
/// While storage credentials or the TLS Secret are missing, look again this often.
const CREDENTIALS_RETRY: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Keyring(#[from] KeyringSecretError),
    #[error("VideoDelivery has no namespace")]
    NoNamespace,
    /// Another writer created the keyring Secret between our read and our create; the next reconcile reads it.
    #[error("the keyring Secret was created by someone else meanwhile; reading it again")]
    KeyringRaced,
    /// The API server refused an owned object; the condition and a Warning event carry its message.
    #[error("the API server refused an object this VideoDelivery owns (see its Ready condition)")]
    Refused,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The agent image when a VideoDelivery names none.
    pub agent_image: String,
    /// Sidecar mode is on: status counts the injected pods (and the operator may list pods).
    pub sidecar_mode: bool,
    /// The shortest signing timings accepted (the CRD has the same rules unless it is older than the operator).
    pub floors: SigningFloors,
    failures: Mutex<HashMap<ObjectRef<VideoDelivery>, u32>>,
    /// The controller's cache of VideoDeliveries, to forget the failures of deleted ones.
    store: OnceLock<Store<VideoDelivery>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        agent_image: String,
        floors: SigningFloors,
        identity: &str,
    ) -> Context {
        let reporter = Reporter { controller: MANAGER.into(), instance: Some(identity.into()) };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            agent_image,
            sidecar_mode: false,
            floors,
            failures: Mutex::default(),
            store: OnceLock::new(),
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let api = |c: Client| -> Api<VideoDelivery> {
        match namespace {
            Some(ns) => Api::namespaced(c, ns),
            None => Api::all(c),
        }
    };
    fn owned<K>(c: Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match ns {
            Some(ns) => Api::namespaced(c, ns),
            None => Api::all(c),
        }
    }
    // Deployments and NetworkPolicies: only what this operator made. Secrets: all of them in scope, because a storage-credentials
    // Secret is the user's (it carries no label of ours) and a keyring Secret whose label was removed must still
    // be seen. Services and ServiceAccounts are not watched: every reconcile re-applies them.
    let mine = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let controller = Controller::new(api(client.clone()), watcher::Config::default());
    let store = controller.store();
    let _ = ctx.store.set(store.clone());
    controller
        .owns(owned::<Deployment>(client.clone(), namespace), mine.clone())
        .owns(owned::<NetworkPolicy>(client.clone(), namespace), mine)
        .watches(owned::<Secret>(client.clone(), namespace), watcher::Config::default(), move |secret: Secret| {
            secret_owners(&store, &secret)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                // Reconcile errors are already counted and logged by error_policy; this is the queue's own.
                tracing::debug!(error = %e, "controller queue");
            }
        })
        .await;
}

/// The VideoDeliveries a Secret matters to: its owner (a keyring) and those whose storage credentials or agent
/// certificate (`tls.secretName`) it holds.
fn secret_owners(store: &Store<VideoDelivery>, secret: &Secret) -> Vec<ObjectRef<VideoDelivery>> {
    let ns = secret.namespace();
    let name = secret.name_any();
    let mut refs: Vec<ObjectRef<VideoDelivery>> = secret
        .owner_references()
        .iter()
        .filter(|o| o.kind == "VideoDelivery" && o.api_version.starts_with("videodelivery.dev/"))
        .map(|o| ObjectRef::new(&o.name).within(ns.as_deref().unwrap_or_default()))
        .collect();
    refs.extend(
        store
            .state()
            .iter()
            .filter(|vd| vd.namespace() == ns)
            .filter(|vd| {
                vd.spec.storage.credentials_secret_ref.as_ref().is_some_and(|r| r.name == name)
                    || vd.spec.tls.as_ref().is_some_and(|t| t.secret_name == name)
            })
            .map(|vd| ObjectRef::from(vd.as_ref())),
    );
    refs
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    Timestamp::from_second(secs as i64).map(|t| t.to_string()).unwrap_or_default()
}

/// Entry point for one object; times and counts the outcome.
pub async fn reconcile(vd: Arc<VideoDelivery>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    tracing::debug!("reconcile");
    let result = Reconciler::new(&vd, &ctx)?.run().await;
    ctx.metrics.observe_reconcile(started.elapsed(), result.is_ok());
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    if result.is_ok() {
        failures.remove(&ObjectRef::from(vd.as_ref()));
    }
    // Forget the backoff and the rotation series of VideoDeliveries that no longer exist.
    if let Some(store) = ctx.store.get() {
        failures.retain(|r, _| store.get(r).is_some());
        ctx.metrics.retain_deliveries(|ns, name| store.get(&ObjectRef::new(name).within(ns)).is_some());
    }
    result
}

/// Failures retry with exponential backoff per object (1 s doubling to 5 min); a lost race for the first keyring
/// retries at once.
pub fn error_policy(vd: Arc<VideoDelivery>, error: &Error, ctx: Arc<Context>) -> Action {
    if matches!(error, Error::KeyringRaced) {
        return Action::requeue(Duration::from_millis(100));
    }
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = failures.entry(ObjectRef::from(vd.as_ref())).or_insert(0);
    *n = n.saturating_add(1);
    // A refusal ends when the spec or a cluster policy changes; the spec is watched, a policy is not, so look
    // again at least every REFUSED_RETRY.
    let cap = if matches!(error, Error::Refused) { REFUSED_RETRY } else { RESYNC };
    let wait = Duration::from_secs(1u64 << (*n - 1).min(8)).min(cap);
    warn!(name = %vd.name_any(), namespace = ?vd.namespace(), error = %error, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// A Secret the agents read (storage credentials, TLS certificate) as they will see it.
enum Credentials {
    NotReferenced,
    /// The Secret's resourceVersion, which rolls the agents when it changes.
    Present(String),
    /// Why the agents could not start with it; they are not changed meanwhile.
    Missing(Blocked),
}

impl Credentials {
    fn version(&self) -> Option<&str> {
        match self {
            Credentials::Present(v) => Some(v),
            _ => None,
        }
    }
}

/// The keyring after this reconcile's step, with what status shows of it.
struct Keys {
    observed: KeysObserved,
    /// When rotation next needs a look (Unix seconds); None when the keyring could not be used.
    next_deadline: Option<u64>,
}

struct Reconciler<'a> {
    vd: &'a VideoDelivery,
    ctx: &'a Context,
    ns: String,
    name: String,
    apply: PatchParams,
}

/// Errors the API server returns for an object it will not take as written: the spec (or a policy in the
/// cluster) must change, so they are a condition, not a transient retry.
fn refused(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) if matches!(s.code, 400 | 403 | 404 | 422) => Some(s.message.clone()),
        _ => None,
    }
}

impl<'a> Reconciler<'a> {
    fn new(vd: &'a VideoDelivery, ctx: &'a Context) -> Result<Self, Error> {
        Ok(Reconciler {
            vd,
            ctx,
            ns: vd.namespace().ok_or(Error::NoNamespace)?,
            name: vd.name_any(),
            apply: PatchParams::apply(MANAGER).force(),
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    /// Every path ends by writing status; a transient failure is returned afterwards so that it backs off.
    async fn run(&self) -> Result<Action, Error> {
        let now = now_millis();
        let mut blocked = None;
        let mut failure = None;
        let mut keys = Keys { observed: KeysObserved::Unknown, next_deadline: None };
        let mut applied = None;
        match self.vd.validate(&self.ctx.floors) {
            Err(e) => {
                let msg = e.to_string();
                self.event(EventType::Warning, reasons::INVALID_SPEC, "Validate", &msg, None).await;
                blocked = Some(Blocked::InvalidSpec(msg));
            }
            Ok(policy) => {
                match self.keys(&policy, now / 1000).await {
                    Ok(k) => keys = k,
                    Err(e) => {
                        keys.observed = KeysObserved::Unavailable(e.to_string());
                        failure = Some(e);
                    }
                }
                let usable = matches!(keys.observed, KeysObserved::Ready(_) | KeysObserved::Recreated { .. });
                let inputs = match self.credentials().await {
                    Ok(Credentials::Missing(b)) => Ok((Credentials::Missing(b), Credentials::NotReferenced)),
                    Ok(c) => self.tls().await.map(|t| (c, t)),
                    Err(e) => Err(e),
                };
                match inputs {
                    Ok((Credentials::Missing(b), _) | (_, Credentials::Missing(b))) => {
                        self.event(EventType::Warning, b.reason(), "Deploy", b.message(), None).await;
                        blocked = Some(b);
                    }
                    Ok((credentials, _tls)) if usable => {
                        let versions = resources::SecretVersions { credentials: credentials.version() };
                        match self.agents(versions).await {
                            Ok(d) => applied = Some(d),
                            Err(AgentsError::Refused(msg)) => {
                                self.event(EventType::Warning, reasons::APPLY_FAILED, "Deploy", &msg, None).await;
                                blocked = Some(Blocked::ApplyFailed(msg));
                                failure = failure.or(Some(Error::Refused));
                            }
                            Err(AgentsError::Kube(e)) => {
                                blocked = Some(Blocked::ApiUnavailable(e.to_string()));
                                failure = failure.or(Some(e.into()));
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        blocked = Some(Blocked::ApiUnavailable(e.to_string()));
                        failure = failure.or(Some(e));
                    }
                }
            }
        }
        let exposure = match &blocked {
            // Nothing is exposed or removed on a spec that cannot be trusted.
            Some(Blocked::InvalidSpec(_)) => self.vd.spec.expose.as_ref().map(|_| Exposure::NotExposed {
                reason: reasons::INVALID_SPEC,
                message: "the spec is invalid (see the Ready condition)".into(),
            }),
            _ => match self.expose().await {
                Ok(e) => e,
                Err(ExposeError::Refused(message)) => {
                    self.event(EventType::Warning, reasons::APPLY_FAILED, "Expose", &message, None).await;
                    failure = failure.or(Some(Error::Refused));
                    Some(Exposure::NotExposed { reason: reasons::APPLY_FAILED, message })
                }
                Err(ExposeError::Kube(e)) => {
                    let message = e.to_string();
                    failure = failure.or(Some(e.into()));
                    Some(Exposure::NotExposed { reason: reasons::API_UNAVAILABLE, message })
                }
            },
        };
        let deployment = match applied {
            Some(d) => Some(d),
            None => self.api::<Deployment>().get_opt(&resources::agent_name(self.vd)).await.unwrap_or_default(),
        };
        let url = match &exposure {
            Some(Exposure::Exposed { url, .. }) => url.clone(),
            _ => resources::url(self.vd),
        };
        let observed = Observed {
            generation: self.vd.metadata.generation,
            url,
            keys: keys.observed,
            blocked,
            agents: deployment.map(agents_observed),
            exposure,
        };
        let credentials_missing = matches!(
            observed.blocked,
            Some(Blocked::StorageCredentialsMissing(_) | Blocked::TlsSecretMissing(_) | Blocked::TlsSecretInvalid(_))
        );
        // Nothing watches for the Gateway API's CRDs to be installed: look again soon.
        let gateway_api_missing = matches!(
            &observed.exposure,
            Some(Exposure::NotExposed { reason, .. }) if *reason == reasons::GATEWAY_API_UNAVAILABLE
        );
        // Nothing watches the gateway's or ingress controller's answer either: look again soon while it is missing.
        let exposure_pending = matches!(
            &observed.exposure,
            Some(Exposure::NotExposed { reason, .. })
                if [reasons::HTTPROUTE_PENDING, reasons::ROUTE_NOT_ACCEPTED, reasons::INGRESS_PENDING].contains(reason)
        );
        self.write_status(&observed).await?;
        if let Some(e) = failure {
            return Err(e);
        }
        let mut wait = RESYNC;
        if let Some(deadline) = keys.next_deadline {
            let due = deadline.saturating_mul(1000).saturating_sub(now);
            wait = wait.min(Duration::from_millis(due.max(100)));
        }
        if credentials_missing {
            wait = wait.min(CREDENTIALS_RETRY);
        }
        if gateway_api_missing {
            wait = wait.min(REFUSED_RETRY);
        }
        if exposure_pending {
            wait = wait.min(EXPOSURE_RETRY);
        }
        if matches!(observed.blocked, Some(Blocked::InvalidSpec(_))) {
            return Ok(Action::await_change());
        }
        Ok(Action::requeue(wait))
    }

    /// Step 1: the keyring Secret, rotated. Keys are only ever made here, from the OS random generator.
    async fn keys(&self, policy: &vd_token::rotation::RotationPolicy, now: u64) -> Result<Keys, Error> {
        let secrets: Api<Secret> = self.api();
        let name = resources::keyring_secret_name(self.vd);
        let existing = secrets.get_opt(&name).await?;
        let current = match keyring::read(existing.as_ref()) {
            Ok(k) => k,
            Err(e @ KeyringSecretError::Corrupt { .. }) => {
                let msg = e.to_string();
                self.event(EventType::Warning, reasons::KEYRING_INVALID, "Rotate", &msg, None).await;
                return Ok(Keys { observed: KeysObserved::Invalid(msg), next_deadline: None });
            }
            Err(e) => return Err(e.into()),
        };
        let requested = self.vd.annotations().get(ROTATE_ANNOTATION).map(String::as_str);
        let handled_owned = existing.as_ref().and_then(|s| s.annotations().get(ROTATION_HANDLED_ANNOTATION)).cloned();
        let handled = handled_owned.as_deref();
        let Some(existing) = existing else {
            return self.first_keyring(&secrets, policy, now, requested).await;
        };
        let was_pending =
            current.as_ref().and_then(|k| k.keys().iter().find(|k| k.state() == KeyState::Pending).cloned());
        let rotation = keyring::step(current.as_ref(), now, policy, requested, handled)?;
        let now_handled = requested.or(handled);
        let data = keyring::data(&rotation.keyring);
        let labelled = resources::keyring_secret(self.vd, BTreeMap::new(), None)
            .labels()
            .iter()
            .all(|(k, v)| existing.labels().get(k) == Some(v));
        let stale = existing.data.as_ref() != Some(&data)
            || now_handled != handled
            || !labelled
            || existing.owner_references().iter().all(|o| o.uid != self.vd.uid().unwrap_or_default());
        if stale {
            let mut secret = resources::keyring_secret(self.vd, data, now_handled);
            // Optimistic concurrency: if the Secret changed since it was read, the write fails and the
            // reconcile runs again on fresh data instead of overwriting keys.
            secret.metadata.resource_version = existing.resource_version();
            secrets.patch(&name, &self.apply, &Patch::Apply(&secret)).await?;
        }
        for event in &rotation.events {
            self.key_event(event).await;
        }
        if requested.is_some() && requested != handled && rotation.events.is_empty() {
            // A request while a key is already pending is served by that key: requests are idempotent.
            if let Some(p) = was_pending {
                let note = format!(
                    "rotation request {:?} is served by the pending key {}, active from {}",
                    requested.unwrap_or_default(),
                    p.kid(),
                    p.activate_after().map(rfc3339).unwrap_or_default()
                );
                self.event(EventType::Normal, "RotationRequested", "Rotate", &note, Some(p.kid())).await;
            }
        }
        Ok(self.keys_observed(&rotation.keyring, policy, rotation.next_deadline))
    }

    /// The first write of a keyring is create-only: two operators racing (or a stale cache) can never make two
    /// different first keys, one silently replacing the other. A conflict means someone else made it: read again.
    async fn first_keyring(
        &self,
        secrets: &Api<Secret>,
        policy: &vd_token::rotation::RotationPolicy,
        now: u64,
        requested: Option<&str>,
    ) -> Result<Keys, Error> {
        // A keyring existed if status showed keys, or if agents were deployed (they never are before the first
        // keyring). The Deployment is read from the API server: the cached object may predate the status write.
        let old = self.vd.status.as_ref();
        let had_keys = old.is_some_and(|s| s.active_key_id.is_some() || !s.keys.is_empty())
            || self.api::<Deployment>().get_opt(&resources::agent_name(self.vd)).await?.is_some();
        let rotation = if had_keys {
            // Tokens signed with the lost keys may be in flight and agents still hold the old Secret: a key
            // active at once would be signed with before any agent has it. Start pending instead.
            vd_token::rotation::start(now, policy, &mut vd_token::rotation::os_random)
        } else {
            vd_token::rotation::rotate(None, now, policy, false, &mut vd_token::rotation::os_random)
        }
        .map_err(KeyringSecretError::from)?;
        let secret = resources::keyring_secret(self.vd, keyring::data(&rotation.keyring), requested);
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => return Err(Error::KeyringRaced),
            Err(e) => return Err(e.into()),
        }
        if had_keys {
            let pending = rotation.keyring.keys().first();
            let note = format!(
                "the keyring Secret {} was deleted and has been made again: every URL signed with the lost keys \
                 now fails with unknown_kid. The new key {} is pending and becomes active at {} \
                 (signing.propagationDelay, so that every agent has it first); until then backends cannot sign",
                secret.name_any(),
                pending.map(|k| k.kid()).unwrap_or_default(),
                pending.and_then(|k| k.activate_after()).map(rfc3339).unwrap_or_default(),
            );
            warn!(name = %self.name, namespace = %self.ns, "{note}");
            self.event(EventType::Warning, reasons::KEYRING_RECREATED, "Rotate", &note, None).await;
        } else {
            for event in &rotation.events {
                self.key_event(event).await;
            }
        }
        Ok(self.keys_observed(&rotation.keyring, policy, rotation.next_deadline))
    }

    fn keys_observed(&self, keyring: &Keyring, policy: &vd_token::rotation::RotationPolicy, deadline: u64) -> Keys {
        let active = keyring.active();
        let count = |s: KeyState| keyring.keys().iter().filter(|k| k.state() == s).count() as i64;
        self.ctx.metrics.observe_keyring(
            &self.ns,
            &self.name,
            &crate::metrics::KeyringView {
                next_rotation: next_rotation(keyring, policy),
                last_rotation: active.map(|a| a.activated_at().unwrap_or(a.created_at())),
                keys: [count(KeyState::Pending), count(KeyState::Active), count(KeyState::Retiring)],
            },
        );
        let view = KeysView {
            active_key_id: active.map(|a| a.kid().to_string()),
            last_rotation_time: active.map(|a| rfc3339(a.activated_at().unwrap_or(a.created_at()))),
            next_rotation_time: Some(rfc3339(next_rotation(keyring, policy))),
            keys: keyring
                .keys()
                .iter()
                .map(|k| KeyStatus {
                    id: k.kid().to_string(),
                    state: k.state().as_str().to_string(),
                    created: rfc3339(k.created_at()),
                    until: match k.state() {
                        KeyState::Pending => k.activate_after().map(rfc3339),
                        KeyState::Retiring => k.accept_until().map(rfc3339),
                        KeyState::Active => None,
                    },
                })
                .collect(),
        };
        let observed = match active {
            Some(_) => KeysObserved::Ready(view),
            None => {
                let pending = keyring.keys().iter().find(|k| k.state() == KeyState::Pending);
                let message = format!(
                    "the keyring was made again after its Secret was deleted; key {} becomes active at {}, and \
                     backends cannot sign until then",
                    pending.map(|k| k.kid()).unwrap_or_default(),
                    pending.and_then(|k| k.activate_after()).map(rfc3339).unwrap_or_default()
                );
                KeysObserved::Recreated { view, message }
            }
        };
        Keys { observed, next_deadline: Some(deadline) }
    }

    async fn key_event(&self, event: &KeyEvent) {
        let (reason, note, label, kid) = match event {
            KeyEvent::Created { kid } => ("KeyCreated", format!("created signing key {kid}"), "created", kid),
            KeyEvent::Published { kid, activate_after } => (
                "KeyPublished",
                format!("published key {kid} to agents; backends sign with it from {}", rfc3339(*activate_after)),
                "published",
                kid,
            ),
            KeyEvent::Promoted { kid, retired: Some(retired), accept_until } => (
                "KeyPromoted",
                format!("key {kid} is now active; {retired} is accepted until {}", rfc3339(*accept_until)),
                "promoted",
                kid,
            ),
            KeyEvent::Promoted { kid, retired: None, .. } => {
                ("KeyPromoted", format!("key {kid} is now active"), "promoted", kid)
            }
            KeyEvent::Removed { kid } => {
                ("KeyRemoved", format!("removed key {kid}: every token it signed has expired"), "removed", kid)
            }
        };
        info!(name = %self.name, namespace = %self.ns, "{note}");
        self.ctx.metrics.key_event(label);
        self.event(EventType::Normal, reason, "Rotate", &note, Some(kid)).await;
    }

    /// Step 2: are the storage credentials there? Only key names are checked; values are never read into logs.
    async fn credentials(&self) -> Result<Credentials, Error> {
        let Some(r) = &self.vd.spec.storage.credentials_secret_ref else { return Ok(Credentials::NotReferenced) };
        let secrets: Api<Secret> = self.api();
        let Some(secret) = secrets.get_opt(&r.name).await? else {
            return Ok(Credentials::Missing(Blocked::StorageCredentialsMissing(format!(
                "Secret {:?} (storage.credentialsSecretRef) does not exist",
                r.name
            ))));
        };
        let keys = secret.data.as_ref().map(|d| d.keys().map(String::as_str).collect::<Vec<_>>()).unwrap_or_default();
        let missing: Vec<&str> =
            ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].into_iter().filter(|k| !keys.contains(k)).collect();
        if !missing.is_empty() {
            return Ok(Credentials::Missing(Blocked::StorageCredentialsMissing(format!(
                "Secret {:?} has no {}",
                r.name,
                missing.join(" or ")
            ))));
        }
        Ok(Credentials::Present(secret.resource_version().unwrap_or_default()))
    }

    /// Step 2, continued: is the agents' certificate there, as a TLS Secret? A pod that mounts a missing Secret, or asks it for
    /// keys it lacks, never starts: better to say so and leave the running agents alone. Only type and key names
    /// are read.
    async fn tls(&self) -> Result<Credentials, Error> {
        let Some(tls) = &self.vd.spec.tls else { return Ok(Credentials::NotReferenced) };
        let name = &tls.secret_name;
        let Some(secret) = self.api::<Secret>().get_opt(name).await? else {
            return Ok(Credentials::Missing(Blocked::TlsSecretMissing(format!(
                "Secret {name:?} (tls.secretName) does not exist; the agents keep their previous configuration"
            ))));
        };
        let type_ = secret.type_.as_deref().unwrap_or("Opaque");
        let keys = secret.data.as_ref().map(|d| d.keys().map(String::as_str).collect::<Vec<_>>()).unwrap_or_default();
        let missing: Vec<&str> = ["tls.crt", "tls.key"].into_iter().filter(|k| !keys.contains(k)).collect();
        if type_ != "kubernetes.io/tls" || !missing.is_empty() {
            let lacks =
                if missing.is_empty() { String::new() } else { format!(" and has no {}", missing.join(" or ")) };
            return Ok(Credentials::Missing(Blocked::TlsSecretInvalid(format!(
                "Secret {name:?} (tls.secretName) is of type {type_:?}{lacks}: it must be a kubernetes.io/tls Secret \
                 with tls.crt and tls.key (kubectl create secret tls, or a cert-manager Certificate)"
            ))));
        }
        Ok(Credentials::Present(secret.resource_version().unwrap_or_default()))
    }

    /// Step 3: the agent fleet and how to reach it. Returns the Deployment as the API server has it.
    async fn agents(&self, versions: resources::SecretVersions<'_>) -> Result<Deployment, AgentsError> {
        let image = self.vd.spec.agents.image.clone().unwrap_or_else(|| self.ctx.agent_image.clone());
        let name = resources::agent_name(self.vd);
        self.apply_object(&resources::service_account(self.vd)).await?;
        self.apply_object(&resources::service(self.vd)).await?;
        let desired = resources::deployment(self.vd, &image, versions);
        if let Some(a) = &self.vd.spec.agents.autoscaling {
            self.hand_replicas_over(&name, a.min_replicas, a.max_replicas).await?;
        }
        let deployment: Deployment = self.apply_object(&desired).await?;
        self.apply_or_delete(resources::hpa(self.vd), &name).await?;
        self.apply_or_delete(resources::pdb(self.vd), &name).await?;
        self.apply_or_delete(resources::network_policy(self.vd), &name).await?;
        self.pod_monitor(&name).await?;
        Ok(deployment)
    }

    /// The PodMonitor belongs to the Prometheus Operator: where its CRD is missing, scraping is impossible but
    /// serving is not, so that is a Warning event rather than a blocked VideoDelivery.
    async fn pod_monitor(&self, name: &str) -> Result<(), AgentsError> {
        let ar = resources::pod_monitor_api_resource();
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), &self.ns, &ar);
        match resources::pod_monitor(self.vd) {
            Some(pm) => match api.patch(name, &self.apply, &Patch::Apply(&pm)).await {
                Ok(_) => Ok(()),
                Err(e) if kind_missing(&e) => {
                    let note = "agents.metrics.podMonitor is enabled but this cluster has no PodMonitor kind                                 (monitoring.coreos.com/v1, from the Prometheus Operator): the agents' metrics are                                 not scraped";
                    self.event(EventType::Warning, "PodMonitorUnavailable", "Deploy", note, None).await;
                    Ok(())
                }
                Err(e) => Err(self.classify("PodMonitor", name, e)),
            },
            None => self.delete_owned_dynamic(&api, "PodMonitor", name).await,
        }
    }

    /// Deletes a kind the cluster may lack (a CRD's) when this VideoDelivery owns one by that name.
    async fn delete_owned_dynamic(&self, api: &Api<DynamicObject>, kind: &str, name: &str) -> Result<(), AgentsError> {
        let live = match api.get_opt(name).await {
            Ok(live) => live,
            Err(e) if kind_missing(&e) => None,
            Err(e) => return Err(self.classify(kind, name, e)),
        };
        let uid = self.vd.uid().unwrap_or_default();
        if live.is_some_and(|l| l.owner_references().iter().any(|o| o.uid == uid)) {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if kind_missing(&e) => {}
                Err(e) => return Err(self.classify(kind, name, e)),
            }
        }
        Ok(())
    }

    /// Step 4: how viewers reach the agents: the HTTPRoute or the Ingress of `expose`, and the other deleted (first,
    /// so that a switch never leaves both). Leftovers are looked for only while status says something was exposed,
    /// so that a cluster without `expose` needs no rights on these kinds.
    async fn expose(&self) -> Result<Option<Exposure>, ExposeError> {
        let route = resources::http_route(self.vd);
        let ingress = resources::ingress(self.vd);
        let was_exposed =
            self.vd.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == types::EXPOSED));
        if self.vd.spec.expose.is_none() && !was_exposed {
            return Ok(None);
        }
        let routes: Api<DynamicObject> =
            Api::namespaced_with(self.ctx.client.clone(), &self.ns, &resources::http_route_api_resource());
        let name = self.name.as_str();
        if route.is_none() {
            self.delete_owned_dynamic(&routes, "HTTPRoute", name).await?;
        }
        if ingress.is_none() {
            self.apply_or_delete::<Ingress>(None, name).await?;
        }
        if let Some(r) = route {
            let applied = match routes.patch(name, &self.apply, &Patch::Apply(&r)).await {
                Ok(applied) => applied,
                Err(e) if kind_missing(&e) => {
                    let message = "expose.gateway needs the Gateway API (gateway.networking.k8s.io/v1 HTTPRoute), which \
                                   this cluster does not serve: install its CRDs, or use expose.ingress; the agents \
                                   serve inside the cluster meanwhile";
                    self.event(EventType::Warning, reasons::GATEWAY_API_UNAVAILABLE, "Expose", message, None).await;
                    let reason = reasons::GATEWAY_API_UNAVAILABLE;
                    return Ok(Some(Exposure::NotExposed { reason, message: message.into() }));
                }
                Err(e) => return Err(self.classify("HTTPRoute", name, e).into()),
            };
            let parents = self.vd.spec.expose.as_ref().and_then(|e| e.gateway.as_ref()).map(|g| &g.parent_refs[..]);
            let verdict = expose::route(name, &self.ns, parents.unwrap_or_default(), &applied.data);
            let tls = self.gateway_tls().await;
            let url = resources::public_url(self.vd, tls).unwrap_or_default();
            return Ok(Some(match verdict {
                Verdict::Serving(by) => Exposure::Exposed { kind: "HTTPRoute", name: name.into(), url, by },
                Verdict::Pending(message) => Exposure::NotExposed { reason: reasons::HTTPROUTE_PENDING, message },
                Verdict::Refused(message) => Exposure::NotExposed { reason: reasons::ROUTE_NOT_ACCEPTED, message },
            }));
        }
        if let Some(i) = ingress {
            let tls = i.spec.as_ref().is_some_and(|s| s.tls.is_some());
            let applied = self.apply_object(&i).await?;
            let url = resources::public_url(self.vd, tls).unwrap_or_default();
            return Ok(Some(match expose::ingress(&applied) {
                Verdict::Serving(by) => Exposure::Exposed { kind: "Ingress", name: name.into(), url, by },
                Verdict::Pending(message) | Verdict::Refused(message) => {
                    Exposure::NotExposed { reason: reasons::INGRESS_PENDING, message }
                }
            }));
        }
        Ok(None)
    }

    /// Whether the route's first Gateway terminates TLS for it: the listener named by `sectionName`, or any of its
    /// listeners, speaks HTTPS. A Gateway that cannot be read (elsewhere, not yet made) is no TLS known: http.
    async fn gateway_tls(&self) -> bool {
        let Some(p) = self.vd.spec.expose.as_ref().and_then(|e| e.gateway.as_ref()?.parent_refs.first()) else {
            return false;
        };
        let ns = p.namespace.as_deref().unwrap_or(&self.ns);
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.ctx.client.clone(), ns, &resources::gateways_api_resource());
        let gateway = match api.get_opt(&p.name).await {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(error = %e, gateway = %p.name, "cannot read the Gateway; the public URL says http");
                None
            }
        };
        let listeners = gateway.as_ref().and_then(|g| g.data.pointer("/spec/listeners")?.as_array().cloned());
        listeners
            .unwrap_or_default()
            .iter()
            .any(|l| p.section_name.as_deref().is_none_or(|s| l["name"] == s) && l["protocol"] == "HTTPS")
    }

    /// Moving from fixed replicas to autoscaling: an apply without `replicas` would drop this manager's claim on
    /// the field, and the API server would reset it to 1 until the autoscaler caught up. First a second field
    /// manager claims the current count (clamped to the new bounds), as the Server-Side Apply documentation
    /// describes for handing a field to an autoscaler; the autoscaler then takes it over.
    async fn hand_replicas_over(&self, name: &str, min: i32, max: i32) -> Result<(), AgentsError> {
        let api: Api<Deployment> = self.api();
        let Some(live) = api.get_opt(name).await.map_err(AgentsError::Kube)? else { return Ok(()) };
        let ours = live.managed_fields().iter().any(|m| {
            m.manager.as_deref() == Some(MANAGER)
                && m.operation.as_deref() == Some("Apply")
                && m.fields_v1.as_ref().is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
        });
        if !ours {
            return Ok(());
        }
        let current = live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).clamp(min, max);
        let patch = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": current},
        });
        let handoff = PatchParams::apply(HANDOFF_MANAGER).force();
        api.patch(name, &handoff, &Patch::Apply(&patch)).await.map_err(|e| self.classify("Deployment", name, e))?;
        info!(name = %self.name, namespace = %self.ns, replicas = current, "handing replicas to the autoscaler");
        Ok(())
    }

    fn classify(&self, kind: &str, name: &str, e: kube::Error) -> AgentsError {
        match refused(&e) {
            Some(msg) => AgentsError::Refused(format!("the API server refused {kind} {name}: {msg}")),
            None => AgentsError::Kube(e),
        }
    }

    async fn apply_object<K: Owned>(&self, obj: &K) -> Result<K, AgentsError> {
        let api: Api<K> = self.api();
        let name = obj.name_any();
        api.patch(&name, &self.apply, &Patch::Apply(obj)).await.map_err(|e| self.classify(&K::kind(&()), &name, e))
    }

    /// Deletes only what this VideoDelivery owns, and only when it exists: an autoscaler or budget someone else
    /// made under the same name is left alone.
    async fn apply_or_delete<K: Owned>(&self, obj: Option<K>, name: &str) -> Result<(), AgentsError> {
        if let Some(o) = obj {
            return self.apply_object(&o).await.map(drop);
        }
        let api: Api<K> = self.api();
        let Some(live) = api.get_opt(name).await.map_err(AgentsError::Kube)? else { return Ok(()) };
        let uid = self.vd.uid().unwrap_or_default();
        if !live.owner_references().iter().any(|o| o.uid == uid) {
            return Ok(());
        }
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.classify(&K::kind(&()), name, e)),
        }
    }

    /// Sidecar mode: the pods carrying this VideoDelivery's sidecar and how many are outdated; None if unlisted.
    async fn sidecars(&self) -> Option<crate::crd::SidecarStatus> {
        let selector = format!("{}={}", crate::inject::SIDECAR_OF_LABEL, self.name);
        let pods = self
            .api::<k8s_openapi::api::core::v1::Pod>()
            .list(&kube::api::ListParams::default().labels(&selector))
            .await;
        match pods {
            Ok(list) => {
                let (pods, outdated) = crate::inject::count(&list.items, self.vd, &self.ctx.agent_image);
                Some(crate::crd::SidecarStatus { pods, outdated })
            }
            Err(e) => {
                warn!(error = %e, "cannot list the pods with sidecars");
                None
            }
        }
    }

    /// Step 5: tell the truth in status. Written only when something changed, so a quiet object stays quiet.
    async fn write_status(&self, observed: &Observed) -> Result<(), Error> {
        let old = self.vd.status.clone().unwrap_or_default();
        let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut status = status::derive(observed, &old, now);
        if self.ctx.sidecar_mode {
            status.sidecars = self.sidecars().await.or(old.sidecars.clone());
        }
        if status == old {
            return Ok(());
        }
        let api: Api<VideoDelivery> = self.api();
        let patch = serde_json::json!({
            "apiVersion": "videodelivery.dev/v1alpha1",
            "kind": "VideoDelivery",
            "status": status,
        });
        api.patch_status(&self.name, &self.apply, &Patch::Apply(&patch)).await?;
        Ok(())
    }

    /// Events are best effort: a failure to record one must not fail the reconcile. Key events name their key as
    /// the related object, so that kube-runtime's event series do not fold one key's event into another's.
    async fn event(&self, type_: EventType, reason: &str, action: &str, note: &str, key: Option<&str>) {
        let secondary = key.map(|kid| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            namespace: Some(self.ns.clone()),
            name: Some(resources::keyring_secret_name(self.vd)),
            field_path: Some(format!("keys{{{kid}}}")),
            ..Default::default()
        });
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary,
        };
        if let Err(e) = self.ctx.recorder.publish(&ev, &self.vd.object_ref(&())).await {
            warn!(error = %e, reason, "could not record event");
        }
    }
}

/// A kind the API server does not serve (its CRD is not installed) answers 404.
fn kind_missing(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

enum AgentsError {
    Refused(String),
    Kube(kube::Error),
}

/// Exposure fails the same two ways as the agents, but is reported on its own condition.
enum ExposeError {
    Refused(String),
    Kube(kube::Error),
}

impl From<AgentsError> for ExposeError {
    fn from(e: AgentsError) -> Self {
        match e {
            AgentsError::Refused(m) => ExposeError::Refused(m),
            AgentsError::Kube(e) => ExposeError::Kube(e),
        }
    }
}

impl From<AgentsError> for Error {
    fn from(e: AgentsError) -> Self {
        match e {
            AgentsError::Refused(_) => Error::Refused,
            AgentsError::Kube(e) => Error::Kube(e),
        }
    }
}

fn agents_observed(d: Deployment) -> AgentsObserved {
    let status = d.status.unwrap_or_default();
    AgentsObserved {
        desired: d.spec.and_then(|s| s.replicas).unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
        available: status.available_replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
    }
}

/// A namespaced object the operator applies and deletes by name.
trait Owned:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Serialize
    + DeserializeOwned
    + Clone
    + std::fmt::Debug
{
}

impl<K> Owned for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
{
}

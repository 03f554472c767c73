//! The reconcile loop: one VideoDelivery in, its keyring Secret, agents and status out, in small named steps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};
use vd_token::rotation::{Event as KeyEvent, next_rotation};
use vd_token::{KeyState, Keyring};

use crate::crd::{KeyStatus, ROTATE_ANNOTATION, SigningFloors, VideoDelivery, VideoDeliveryStatus};
use crate::keyring::{self, KeyringSecretError, ROTATION_HANDLED_ANNOTATION};
use crate::metrics::Metrics;
use crate::resources::{self, MANAGED_BY};

/// The one field manager for everything this operator applies.
pub const MANAGER: &str = "videodelivery-operator";
/// Even with nothing due, look again this often (credentials Secrets are not watched).
const RESYNC: Duration = Duration::from_secs(300);
/// While storage credentials are missing, look again this often.
const CREDENTIALS_RETRY: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Keyring(#[from] KeyringSecretError),
    #[error("VideoDelivery has no namespace")]
    NoNamespace,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The agent image when a VideoDelivery names none.
    pub agent_image: String,
    /// The shortest signing timings accepted (the CRD has the same rules unless it is older than the operator).
    pub floors: SigningFloors,
    failures: Mutex<HashMap<ObjectRef<VideoDelivery>, u32>>,
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
            floors,
            failures: Mutex::default(),
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
    // Only what this operator made is watched, so a cluster full of Secrets costs nothing. Services and
    // ServiceAccounts are not watched: every reconcile re-applies them, and nothing about them feeds status.
    let mine = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    Controller::new(api(client.clone()), watcher::Config::default())
        .owns(owned::<Secret>(client.clone(), namespace), mine.clone())
        .owns(owned::<Deployment>(client.clone(), namespace), mine)
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
    if result.is_ok() {
        ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&ObjectRef::from(vd.as_ref()));
    }
    result
}

/// Transient failures retry with exponential backoff per object (1 s doubling to 5 min).
pub fn error_policy(vd: Arc<VideoDelivery>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = failures.entry(ObjectRef::from(vd.as_ref())).or_insert(0);
    *n = n.saturating_add(1);
    let wait = Duration::from_secs(1u64 << (*n - 1).min(8)).min(RESYNC);
    warn!(name = %vd.name_any(), namespace = ?vd.namespace(), error = %error, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// Storage credentials as the agents will see them.
enum Credentials {
    NotReferenced,
    /// The Secret's resourceVersion, which rolls the agents when the credentials change.
    Present(String),
    Missing(String),
}

enum Keys {
    Ready { keyring: Keyring, next_deadline: u64 },
    Broken(String),
}

struct Agents {
    desired: i32,
    ready: i32,
    available: i32,
}

struct Reconciler<'a> {
    vd: &'a VideoDelivery,
    ctx: &'a Context,
    ns: String,
    name: String,
    apply: PatchParams,
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

    async fn run(&self) -> Result<Action, Error> {
        let policy = match self.vd.spec.validate(&self.ctx.floors) {
            Ok(p) => p,
            Err(e) => {
                let msg = e.to_string();
                self.event(EventType::Warning, "InvalidSpec", "Validate", &msg).await;
                self.write_status(Outcome::Blocked { reason: "InvalidSpec", message: msg }, None, None).await?;
                return Ok(Action::await_change());
            }
        };
        let now = now_millis();
        let keys = self.keys(&policy, now / 1000).await?;
        let credentials = self.credentials().await?;
        let agents = match (&keys, &credentials) {
            (Keys::Ready { .. }, Credentials::NotReferenced | Credentials::Present(_)) => {
                let version = match &credentials {
                    Credentials::Present(v) => Some(v.as_str()),
                    _ => None,
                };
                Some(self.agents(version).await?)
            }
            _ => None,
        };
        let (outcome, keyring, wait) = match keys {
            Keys::Broken(message) => {
                (Outcome::Blocked { reason: "KeyringInvalid", message }, None, Action::await_change())
            }
            Keys::Ready { keyring, next_deadline } => {
                let due = next_deadline.saturating_mul(1000).saturating_sub(now);
                let mut wait = Duration::from_millis(due.max(100)).min(RESYNC);
                let outcome = match credentials {
                    Credentials::Missing(message) => {
                        wait = wait.min(CREDENTIALS_RETRY);
                        Outcome::Blocked { reason: "StorageCredentialsMissing", message }
                    }
                    _ => Outcome::Running,
                };
                (outcome, Some((keyring, policy)), Action::requeue(wait))
            }
        };
        self.write_status(outcome, keyring.as_ref(), agents.as_ref()).await?;
        Ok(wait)
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
                self.event(EventType::Warning, "KeyringInvalid", "Rotate", &msg).await;
                return Ok(Keys::Broken(msg));
            }
            Err(e) => return Err(e.into()),
        };
        let requested = self.vd.annotations().get(ROTATE_ANNOTATION).map(String::as_str);
        let handled =
            existing.as_ref().and_then(|s| s.annotations().get(ROTATION_HANDLED_ANNOTATION)).map(String::as_str);
        let rotation = keyring::step(current.as_ref(), now, policy, requested, handled)?;
        let now_handled = requested.or(handled);
        let data = keyring::data(&rotation.keyring);
        let stale = existing.as_ref().is_none_or(|s| s.data.as_ref() != Some(&data))
            || now_handled != handled
            || existing
                .as_ref()
                .is_some_and(|s| s.owner_references().iter().all(|o| o.uid != self.vd.uid().unwrap_or_default()));
        if stale {
            let mut secret = resources::keyring_secret(self.vd, data, now_handled);
            // Optimistic concurrency: if the Secret changed since it was read, the write fails and the
            // reconcile runs again on fresh data instead of overwriting keys.
            secret.metadata.resource_version = existing.as_ref().and_then(|s| s.resource_version());
            secrets.patch(&name, &self.apply, &Patch::Apply(&secret)).await?;
        }
        for event in &rotation.events {
            self.key_event(event).await;
        }
        Ok(Keys::Ready { keyring: rotation.keyring, next_deadline: rotation.next_deadline })
    }

    async fn key_event(&self, event: &KeyEvent) {
        let (reason, note, label) = match event {
            KeyEvent::Created { kid } => ("KeyCreated", format!("created signing key {kid}"), "created"),
            KeyEvent::Published { kid, activate_after } => (
                "KeyPublished",
                format!("published key {kid} to agents; backends sign with it from {}", rfc3339(*activate_after)),
                "published",
            ),
            KeyEvent::Promoted { kid, retired, accept_until } => (
                "KeyPromoted",
                match retired {
                    Some(retired) => {
                        format!("key {kid} is now active; {retired} is accepted until {}", rfc3339(*accept_until))
                    }
                    None => format!("key {kid} is now active"),
                },
                "promoted",
            ),
            KeyEvent::Removed { kid } => {
                ("KeyRemoved", format!("removed key {kid}: every token it signed has expired"), "removed")
            }
        };
        info!(name = %self.name, namespace = %self.ns, "{note}");
        self.ctx.metrics.key_event(label);
        self.event(EventType::Normal, reason, "Rotate", &note).await;
    }

    /// Step 2: are the storage credentials there? Only key names are checked; values are never read into logs.
    async fn credentials(&self) -> Result<Credentials, Error> {
        let Some(r) = &self.vd.spec.storage.credentials_secret_ref else { return Ok(Credentials::NotReferenced) };
        let secrets: Api<Secret> = self.api();
        let Some(secret) = secrets.get_opt(&r.name).await? else {
            return Ok(Credentials::Missing(format!(
                "Secret {:?} (storage.credentialsSecretRef) does not exist",
                r.name
            )));
        };
        let keys = secret.data.as_ref().map(|d| d.keys().map(String::as_str).collect::<Vec<_>>()).unwrap_or_default();
        let missing: Vec<&str> =
            ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].into_iter().filter(|k| !keys.contains(k)).collect();
        if !missing.is_empty() {
            return Ok(Credentials::Missing(format!("Secret {:?} has no {}", r.name, missing.join(" or "))));
        }
        Ok(Credentials::Present(secret.resource_version().unwrap_or_default()))
    }

    /// Step 3: the agent fleet and how to reach it.
    async fn agents(&self, credentials_version: Option<&str>) -> Result<Agents, Error> {
        let image = self.vd.spec.agents.image.clone().unwrap_or_else(|| self.ctx.agent_image.clone());
        self.apply_object(&resources::service_account(self.vd)).await?;
        self.apply_object(&resources::service(self.vd)).await?;
        let deployment: Deployment =
            self.apply_object(&resources::deployment(self.vd, &image, credentials_version)).await?;
        self.apply_or_delete(resources::hpa(self.vd), &resources::agent_name(self.vd)).await?;
        self.apply_or_delete(resources::pdb(self.vd), &resources::agent_name(self.vd)).await?;
        let status = deployment.status.unwrap_or_default();
        Ok(Agents {
            desired: deployment.spec.and_then(|s| s.replicas).unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
        })
    }

    async fn apply_object<K: Owned>(&self, obj: &K) -> Result<K, Error> {
        let api: Api<K> = self.api();
        Ok(api.patch(&obj.name_any(), &self.apply, &Patch::Apply(obj)).await?)
    }

    async fn apply_or_delete<K: Owned>(&self, obj: Option<K>, name: &str) -> Result<(), Error> {
        match obj {
            Some(o) => self.apply_object(&o).await.map(drop),
            None => match self.api::<K>().delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Step 4: tell the truth in status. Written only when something changed, so a quiet object stays quiet.
    async fn write_status(
        &self,
        outcome: Outcome,
        keys: Option<&(Keyring, vd_token::rotation::RotationPolicy)>,
        agents: Option<&Agents>,
    ) -> Result<(), Error> {
        let old = self.vd.status.clone().unwrap_or_default();
        let generation = self.vd.metadata.generation;
        let mut status = VideoDeliveryStatus {
            observed_generation: generation,
            url: Some(resources::url(self.vd)),
            ..Default::default()
        };
        if let Some((keyring, policy)) = keys {
            let active = keyring.active();
            status.active_key_id = active.map(|k| k.kid().to_string());
            status.last_rotation_time = active.map(|k| rfc3339(k.activated_at().unwrap_or(k.created_at())));
            status.next_rotation_time = Some(rfc3339(next_rotation(keyring, policy)));
            status.keys = keyring
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
                .collect();
        } else {
            // Keep what was known about keys when something else blocks.
            status.active_key_id = old.active_key_id.clone();
            status.keys = old.keys.clone();
        }
        if let Some(a) = agents {
            status.desired_agents = Some(a.desired);
            status.ready_agents = Some(a.ready);
        } else {
            status.desired_agents = old.desired_agents;
            status.ready_agents = old.ready_agents;
        }

        let keys_ready = keys.is_some();
        let agents_ok = agents.is_some_and(|a| a.desired > 0 && a.available >= a.desired);
        let (agents_reason, agents_msg) = match agents {
            None => ("NotDeployed", "agents are not deployed until keys and storage credentials are ready".to_string()),
            Some(a) if a.desired == 0 => ("ScaledToZero", "no agents are wanted".to_string()),
            Some(a) if agents_ok => {
                ("MinimumReplicasAvailable", format!("{}/{} agents available", a.available, a.desired))
            }
            Some(a) => ("AgentsUnavailable", format!("{}/{} agents available", a.available, a.desired)),
        };
        let (ready, ready_reason, ready_msg) = match &outcome {
            Outcome::Blocked { reason, message } => (false, *reason, message.clone()),
            Outcome::Running if !agents_ok => (false, agents_reason, agents_msg.clone()),
            Outcome::Running => (true, "Ready", format!("serving at {}", resources::url(self.vd))),
        };
        let keys_cond = match (&outcome, keys_ready) {
            (_, true) => (true, "KeysReady", "an active key is published".to_string()),
            (Outcome::Blocked { reason, message }, false) => (false, *reason, message.clone()),
            (Outcome::Running, false) => (false, "KeysPending", "no keyring yet".to_string()),
        };
        status.conditions = vec![
            condition(&old, "Ready", ready, ready_reason, ready_msg, generation),
            condition(&old, "KeysReady", keys_cond.0, keys_cond.1, keys_cond.2, generation),
            condition(&old, "AgentsAvailable", agents_ok, agents_reason, agents_msg, generation),
        ];
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

    /// Events are best effort: a failure to record one must not fail the reconcile.
    async fn event(&self, type_: EventType, reason: &str, action: &str, note: &str) {
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&ev, &self.vd.object_ref(&())).await {
            warn!(error = %e, reason, "could not record event");
        }
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

enum Outcome {
    Running,
    Blocked { reason: &'static str, message: String },
}

/// A condition that keeps its lastTransitionTime while its status holds.
fn condition(
    old: &VideoDeliveryStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let previous = old.conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

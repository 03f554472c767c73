//! The verifier in use, and keyring hot reload.
//!
//! Kubernetes updates a mounted Secret by swapping a `..data` symlink, so file-change notifications are unreliable
//! across those swaps; the agent polls the file's content once a second instead, which is cheap and always right.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use vd_token::{KeyState, Keyring, Policy, Signer, Verifier};

use crate::metrics::{Metrics, StateLabel};

/// The current verifier, swapped atomically when the keyring changes; requests never wait for a reload.
pub struct Auth {
    current: ArcSwapOption<Verifier>,
    /// Signs the tokens the agent derives (rewritten manifests, sessions) with the keyring's active key.
    signer: ArcSwapOption<Signer>,
    policy: Policy,
    path: PathBuf,
    last: std::sync::Mutex<Vec<u8>>,
}

impl Auth {
    pub fn new(path: PathBuf, policy: Policy) -> Auth {
        Auth {
            current: ArcSwapOption::empty(),
            signer: ArcSwapOption::empty(),
            policy,
            path,
            last: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn verifier(&self) -> Option<Arc<Verifier>> {
        self.current.load_full()
    }

    pub fn signer(&self) -> Option<Arc<Signer>> {
        self.signer.load_full()
    }

    /// Loads the file if it changed. A broken file keeps the last good keyring and is reported.
    pub fn reload(&self, metrics: &Metrics) -> Result<bool, String> {
        let bytes = std::fs::read(&self.path).map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == bytes && self.current.load().is_some() {
            return Ok(false);
        }
        let ring = Keyring::from_json(&bytes).map_err(|e| format!("{} is invalid: {e}", self.path.display()))?;
        for state in [KeyState::Pending, KeyState::Active, KeyState::Retiring] {
            let n = ring.keys().iter().filter(|k| k.state() == state).count();
            metrics.keyring_keys.get_or_create(&StateLabel { state: state.as_str() }).set(n as i64);
        }
        let kids: Vec<&str> = ring.keys().iter().map(|k| k.kid()).collect();
        tracing::info!(keys = ?kids, "keyring loaded");
        // A starting keyring (no active key yet) verifies but mints nothing until its pending key is promoted.
        self.signer.store(Signer::new(&ring).ok().map(Arc::new));
        self.current.store(Some(Arc::new(Verifier::new(&ring, self.policy))));
        *last = bytes;
        Ok(true)
    }

    /// Polls the keyring file until the process ends.
    pub async fn watch(self: Arc<Self>, metrics: Arc<Metrics>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = String::new();
        loop {
            tick.tick().await;
            match self.reload(&metrics) {
                Ok(_) => last_error.clear(),
                Err(e) => {
                    metrics.keyring_reload_errors.inc();
                    // Say it once per distinct problem, not once a second.
                    if e != last_error {
                        tracing::warn!(error = %e, "keyring not reloaded; keeping the last good one");
                        last_error = e;
                    }
                }
            }
        }
    }
}

//! Audits and the live estimate, per route.
//!
//! A share of requests (`audit.fraction`) is run again on the embedded engine after the client
//! has its answer, to its natural end, with a probe at every checkpoint: a full trace of live
//! traffic that every setting of the route's ladder can be replayed on. Audits have their own
//! concurrency cap; one due when the cap is reached is dropped and counted. The audit's trace
//! goes to the store beside the served one, and feeds the route's
//! [`Estimator`](stopwise_core::online::Estimator), which may switch the route's active setting
//! (fallback, promotion) or propose a promotion; each change is logged, counted, and kept in the
//! store.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{counter, gauge};
use serde_json::{json, Value};
use stopwise_core::certify::Risk;
use stopwise_core::online::{Change, Estimator};
use stopwise_core::recorder::TraceHead;
use stopwise_core::rules::PolicySpec;
use stopwise_core::trace::{Served, Trace};
use stopwise_db::{Store, Writer};
use stopwise_engine::record::{EventRecorder, Step};
use stopwise_engine::{Engine, Request};
use tokio::sync::Semaphore;

use crate::config::Route;

/// What one route keeps while it serves: the audit sampler and cap, and the estimator.
pub struct Live {
    route: String,
    fraction: f64,
    requests: AtomicU64,
    slots: Arc<Semaphore>,
    estimator: Option<Mutex<Estimator>>,
    /// Response ids of audits the estimator has seen, so that a second feedback does not count
    /// one twice; as long as the window.
    seen: Mutex<VecDeque<String>>,
    /// Changes made, newest last (the last 100).
    changes: Mutex<VecDeque<Value>>,
    /// When the active setting last changed, here or in the store (replicas share it).
    changed_ms: AtomicU64,
    /// The active setting's published estimates, for the dashboard.
    history: crate::dashboard::History,
}

/// Changes kept in memory for `/admin` (all are in the store).
const CHANGES_KEPT: usize = 100;

impl Live {
    pub fn new(route: &Route, audits_possible: bool) -> Result<Self, String> {
        let estimator = match &route.online {
            None => None,
            Some((settings, ladder, active)) => {
                Some(Mutex::new(Estimator::new(ladder.clone(), *active, *settings).map_err(|e| e.to_string())?))
            }
        };
        let live = Live {
            route: route.model.clone(),
            fraction: if audits_possible { route.audit.fraction } else { 0.0 },
            requests: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(route.audit.max_concurrent)),
            estimator,
            seen: Mutex::new(VecDeque::new()),
            changes: Mutex::new(VecDeque::new()),
            changed_ms: AtomicU64::new(0),
            history: crate::dashboard::History::default(),
        };
        live.publish();
        Ok(live)
    }

    /// Whether the next request is audited: exactly `fraction` of them, evenly spread (request
    /// k is when ⌊(k+1)·f⌋ > ⌊k·f⌋).
    pub fn due(&self) -> bool {
        if self.fraction <= 0.0 {
            return false;
        }
        let k = self.requests.fetch_add(1, Ordering::Relaxed) as f64;
        ((k + 1.0) * self.fraction).floor() > (k * self.fraction).floor()
    }

    /// The setting the route serves now; `None` without an estimator (the route's policy).
    pub fn active_policy(&self) -> Option<PolicySpec> {
        Some(lock(self.estimator.as_ref()?).active_policy().clone())
    }

    /// Estimates, active setting and proposal, as `/admin/online` shows them.
    pub fn report(&self) -> Value {
        let Some(estimator) = &self.estimator else { return json!({"estimator": null}) };
        let e = lock(estimator);
        let changes: Vec<Value> = lock(&self.changes).iter().cloned().collect();
        json!({
            "active": e.active(),
            "active_policy": e.active_policy(),
            "active_label": e.active_policy().label(),
            "generation": e.generation(),
            "epsilon": e.settings().epsilon,
            "delta": e.settings().delta,
            "risk": e.settings().risk,
            "window": e.settings().window,
            "audits_in_window": e.audits(),
            "min_audits": e.min_audits(),
            "estimates": e.estimates(),
            "proposal": e.proposal(),
            "changes": changes,
        })
    }

    /// An operator's decision on the pending proposal; the change made, if any.
    pub fn decide_proposal(&self, approve: bool, store: Option<&Store>) -> Option<Value> {
        let estimator = self.estimator.as_ref()?;
        let change = {
            let mut e = lock(estimator);
            if approve {
                e.approve()
            } else {
                e.reject();
                None
            }
        }?;
        Some(self.changed(&change, "approved by an operator", store))
    }

    /// Sets the active setting by its place on the ladder.
    pub fn set_active(&self, index: usize, store: Option<&Store>) -> Result<Value, String> {
        let estimator = self.estimator.as_ref().ok_or("this route has no [routes.online] ladder")?;
        let from = {
            let mut e = lock(estimator);
            let from = e.active();
            if !e.set_active(index) {
                return Err(format!("the ladder has {} settings (0 to {})", e.ladder().len(), e.ladder().len() - 1));
            }
            from
        };
        let change = Change::Promotion { from, to: index, bound: f64::NAN, n: 0 };
        Ok(self.changed(&change, "set by an operator", store))
    }

    /// Feeds an audit (gold joined when known) to the estimator, once per response.
    pub fn take_audit(&self, trace: &Trace, store: Option<&Store>) {
        let Some(estimator) = &self.estimator else { return };
        let response_id = trace.served.as_ref().map_or("", |s| s.response_id.as_str()).to_owned();
        let change = {
            let mut e = lock(estimator);
            // An EM-drop estimate waits for gold; a disagreement one takes the audit as it is.
            if e.settings().risk == Risk::EmDrop && trace.gold.is_empty() {
                return;
            }
            let mut seen = lock(&self.seen);
            if seen.contains(&response_id) {
                return;
            }
            seen.push_back(response_id);
            while seen.len() > e.settings().window {
                seen.pop_front();
            }
            e.observe(trace)
        };
        if let Some(change) = change {
            self.changed(&change, "the audit window's bound", store);
        }
        self.publish();
    }

    /// Logs, counts and keeps a change.
    fn changed(&self, change: &Change, why: &str, store: Option<&Store>) -> Value {
        let (kind, from, to, ladder) = {
            let Some(estimator) = &self.estimator else { return Value::Null };
            let e = lock(estimator);
            let (kind, from, to) = match change {
                Change::Fallback { from, to, .. } => ("fallback", *from, *to),
                Change::Promotion { from, to, .. } => ("promotion", *from, *to),
                Change::Proposal { from, to, .. } => ("proposal", *from, *to),
            };
            (kind, from, to, e.ladder().to_vec())
        };
        let record = json!({
            "route": self.route, "at_ms": crate::session::now_ms(), "kind": kind, "why": why,
            "from": ladder[from].label(), "to": ladder[to].label(), "to_policy": ladder[to],
            "evidence": change,
        });
        tracing::warn!(
            "route `{}`: {kind} from {} to {} ({why})",
            self.route,
            ladder[from].label(),
            ladder[to].label()
        );
        counter!("stopwise_policy_changes_total", "model" => self.route.clone(), "kind" => kind).increment(1);
        let mut changes = lock(&self.changes);
        changes.push_back(record.clone());
        while changes.len() > CHANGES_KEPT {
            changes.pop_front();
        }
        drop(changes);
        let now = crate::session::now_ms();
        let switched = kind != "proposal";
        if switched {
            self.changed_ms.store(now, Ordering::Relaxed);
        }
        if let Some(store) = store.cloned() {
            let (route, line) = (self.route.clone(), record.to_string());
            let policy = serde_json::to_string(&ladder[to]).unwrap_or_default();
            tokio::spawn(async move {
                if let Err(e) = store.put_change(&route, now, kind, &line).await {
                    tracing::warn!("route `{route}`: the {kind} was not stored: {e}");
                }
                // The other replicas adopt the new setting from here.
                if switched {
                    if let Err(e) = store.put_route_state(&route, to as u64, &policy, now).await {
                        tracing::warn!("route `{route}`: the new setting was not shared: {e}");
                    }
                }
            });
        }
        self.publish();
        record
    }

    /// Adopts the setting another replica recorded in the store, when it is newer than this
    /// replica's last change and is the same policy on this replica's ladder.
    pub fn adopt(&self, active: u64, policy: &str, updated_ms: u64) {
        let Some(estimator) = &self.estimator else { return };
        if updated_ms <= self.changed_ms.load(Ordering::Relaxed) {
            return;
        }
        let index = active as usize;
        let adopted = {
            let mut e = lock(estimator);
            let same = e.ladder().get(index).is_some_and(|p| serde_json::to_string(p).unwrap_or_default() == policy);
            if !same {
                tracing::warn!("route `{}`: the store's setting {index} is not on this replica's ladder", self.route);
                return;
            }
            let moved = e.active() != index;
            if moved {
                e.set_active(index);
            }
            moved.then(|| e.active_policy().label())
        };
        self.changed_ms.store(updated_ms, Ordering::Relaxed);
        if let Some(label) = adopted {
            tracing::info!("route `{}`: now serving {label}, as another replica decided", self.route);
            counter!("stopwise_policy_changes_total", "model" => self.route.clone(), "kind" => "adopted").increment(1);
            self.publish();
        }
    }

    /// The estimate in `/metrics`.
    fn publish(&self) {
        let Some(estimator) = &self.estimator else { return };
        let e = lock(estimator);
        let route = self.route.clone();
        gauge!("stopwise_online_epsilon", "model" => route.clone()).set(e.settings().epsilon);
        gauge!("stopwise_online_audits_in_window", "model" => route.clone()).set(e.audits() as f64);
        gauge!("stopwise_online_active_setting", "model" => route.clone()).set(e.active() as f64);
        gauge!("stopwise_online_generation", "model" => route.clone()).set(e.generation() as f64);
        for (i, estimate) in e.estimates().into_iter().enumerate() {
            let labels = [("model", route.clone()), ("setting", i.to_string()), ("policy", estimate.label.clone())];
            gauge!("stopwise_online_risk", &labels).set(estimate.risk);
            gauge!("stopwise_online_risk_bound", &labels).set(estimate.bound);
            gauge!("stopwise_online_token_reduction", &labels).set(estimate.token_reduction);
            gauge!("stopwise_online_certified", &labels).set(f64::from(u8::from(estimate.certified)));
        }
        self.history.record(&e);
    }

    /// The active setting's estimate each time it was published, oldest first.
    pub fn history(&self) -> Vec<crate::dashboard::Point> {
        self.history.points()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One audit to run once the client has its answer.
pub struct AuditJob {
    pub engine: Arc<dyn Engine>,
    /// The client's request with a probe at every checkpoint.
    pub request: Request,
    pub live: Arc<Live>,
    pub writer: Writer,
    pub store: Store,
}

impl AuditJob {
    /// Starts the audit unless the cap is reached (then it is dropped and counted). `served` is
    /// the served request's trace head, which the audit's trace shares.
    pub fn start(self, head: TraceHead, task: stopwise_core::answer::Task) {
        let route = self.live.route.clone();
        let Ok(slot) = self.live.slots.clone().try_acquire_owned() else {
            counter!("stopwise_audits_total", "model" => route, "result" => "dropped").increment(1);
            return;
        };
        tokio::spawn(async move {
            let _slot = slot;
            let result = self.run(head, task).await;
            let outcome = match result {
                Ok(()) => "run",
                Err(e) => {
                    tracing::warn!("route `{route}`: audit failed: {e}");
                    "failed"
                }
            };
            counter!("stopwise_audits_total", "model" => route, "result" => outcome).increment(1);
        });
    }

    async fn run(self, head: TraceHead, task: stopwise_core::answer::Task) -> Result<(), String> {
        let mut handle = self.engine.submit(self.request).map_err(|e| e.to_string())?;
        let mut recorder = EventRecorder::new(task);
        loop {
            let Some(event) = handle.next().await else { return Err("the engine closed the audit".into()) };
            match recorder.take(event) {
                Step::Going => {}
                Step::Done => break,
                Step::Failed(why) => return Err(why),
            }
        }
        let keep_text = head.question.is_some();
        let served = head.served.clone().map(|s| Served { audit: true, complete: true, ..s });
        let response_id = served.as_ref().map(|s| s.response_id.clone()).unwrap_or_default();
        let mut trace = recorder.finish(TraceHead { served, ..head }, keep_text).map_err(|e| e.to_string())?;
        self.writer.submit(trace.clone());
        // Gold that came before the audit finished joins it now.
        if let Ok(Some(feedback)) = self.store.feedback(&response_id).await {
            if let Some(gold) = feedback.gold {
                trace.gold = gold;
            }
        }
        self.live.take_audit(&trace, Some(&self.store));
        Ok(())
    }
}

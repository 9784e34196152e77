//! Certified thresholds: the most aggressive stop setting whose risk stays under ε, with a
//! finite-sample guarantee, and the machinery to check that the guarantee holds.
//!
//! Candidates come in *groups* (a rule family over its threshold grid, or one named policy),
//! each ordered from the safest setting to the most aggressive. Every candidate's result on every
//! calibration item is computed once into an [`OutcomeTable`]; certification and each of
//! thousands of validation splits then only add up rows of it.
//!
//! Methods ([`Method`]):
//! - **LTT** (Learn then Test, Angelopoulos et al. 2021): each candidate is a hypothesis
//!   "risk > ε" with a p-value (exact binomial, or Hoeffding-Bentkus); within a group the
//!   candidates are tested in order at level δ/G (fixed-sequence testing, stopping at the first
//!   failure), and the G groups share δ by Bonferroni. With probability ≥ 1−δ *every* certified
//!   candidate has risk ≤ ε, so picking the one that saves the most tokens keeps the guarantee.
//! - **CRC** (conformal risk control, Angelopoulos et al. 2022): per group, the most aggressive
//!   setting whose monotonised loss satisfies (Σ L̃ + 1)/(n + 1) ≤ ε/G. The guarantee is on the
//!   *expected* risk (E[risk] ≤ ε), weaker than LTT's high-probability one.
//! - **naive**: the most aggressive setting whose empirical risk is ≤ ε. No guarantee; it exists
//!   to show (in tests and in `validate`) what the guarantee buys.
//!
//! Only a certified setting that saves tokens (probe tokens counted) is chosen: one that costs
//! more in probes than it saves in stops is never better than running in full, however safe.
//!
//! Losses are per item and binary: `em-drop` counts an item whose full answer was correct and whose
//! stopped answer is not (its mean bounds the EM drop from above, as items that a stop made
//! correct are not credited); `disagreement` counts an item whose stopped answer differs from the
//! full run's (needs no gold).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::replay::{replay, Limits, Outcome, TraceFacts};
use crate::rng::SplitMix64;
use crate::rules::{Family, PolicySpec};
use crate::trace::Trace;

/// What a stop may cost, per item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Risk {
    /// The full answer was correct and the stopped answer is not (needs gold answers).
    EmDrop,
    /// The stopped answer differs from the full answer.
    Disagreement,
}

/// How candidates are certified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Ltt,
    Crc,
    /// No guarantee: empirical risk ≤ ε. For comparison only.
    Naive,
}

/// The p-value of LTT's hypothesis "risk > ε".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PValue {
    /// Exact binomial tail (Clopper-Pearson), valid for binary losses.
    Binomial,
    /// Hoeffding-Bentkus (Bates et al. 2021): the minimum of the two bounds.
    HoeffdingBentkus,
}

macro_rules! kebab_enum {
    ($ty:ty, $what:literal, $($variant:path => $name:literal),+) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($variant => $name),+ })
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($variant),)+
                    _ => Err(format!(concat!("unknown ", $what, " `{}`; expected one of: {}"), s, [$($name),+].join(", "))),
                }
            }
        }
    };
}
kebab_enum!(Risk, "risk", Risk::EmDrop => "em-drop", Risk::Disagreement => "disagreement");
kebab_enum!(Method, "method", Method::Ltt => "ltt", Method::Crc => "crc", Method::Naive => "naive");
kebab_enum!(PValue, "p-value", PValue::Binomial => "binomial", PValue::HoeffdingBentkus => "hoeffding-bentkus");

/// What to certify.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub epsilon: f64,
    pub delta: f64,
    pub risk: Risk,
    pub method: Method,
    pub p_value: PValue,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CertifyError {
    #[error("epsilon must be in (0, 1), got {0}")]
    Epsilon(f64),
    #[error("delta must be in (0, 1), got {0}")]
    Delta(f64),
    #[error("no traces to calibrate on")]
    NoItems,
    #[error("risk `em-drop` needs gold answers, and none of the {0} traces has any; use `--risk disagreement`")]
    NoGold(usize),
    #[error("no candidate settings to certify")]
    NoCandidates,
    #[error("calibration fraction must be in (0, 1) and leave items on both sides, got {fraction} of {items} items")]
    Fraction { fraction: f64, items: usize },
    #[error("splits must be at least 1")]
    Splits,
}

impl Settings {
    pub fn check(&self) -> Result<(), CertifyError> {
        if !(self.epsilon > 0.0 && self.epsilon < 1.0) {
            return Err(CertifyError::Epsilon(self.epsilon));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(CertifyError::Delta(self.delta));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// P(X ≤ k) for X ~ Binomial(n, p), summed in log space so that it stays exact for large n.
pub fn binomial_cdf(k: u64, n: u64, p: f64) -> f64 {
    if k >= n || p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return 0.0;
    }
    let (log_p, log_q) = (p.ln(), (-p).ln_1p());
    let mut log_term = n as f64 * log_q;
    let mut log_sum = log_term;
    for j in 0..k {
        log_term += ((n - j) as f64).ln() - ((j + 1) as f64).ln() + log_p - log_q;
        let (hi, lo) = if log_sum > log_term { (log_sum, log_term) } else { (log_term, log_sum) };
        log_sum = hi + (lo - hi).exp().ln_1p();
    }
    log_sum.exp().min(1.0)
}

/// The p-value of "risk > ε" after `losses` losses in `n` items. Smaller is stronger evidence
/// that the risk is at most ε. Not increasing in ε, not decreasing in `losses`.
pub fn p_value(kind: PValue, n: u64, losses: u64, epsilon: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let binomial = binomial_cdf(losses, n, epsilon);
    match kind {
        PValue::Binomial => binomial,
        PValue::HoeffdingBentkus => {
            let mean = (losses as f64 / n as f64).min(epsilon);
            let hoeffding = (-(n as f64) * bernoulli_kl(mean, epsilon)).exp();
            hoeffding.min(std::f64::consts::E * binomial).min(1.0)
        }
    }
}

/// KL divergence between Bernoulli(a) and Bernoulli(b), for a ≤ b < 1.
fn bernoulli_kl(a: f64, b: f64) -> f64 {
    let term = |x: f64, y: f64| if x == 0.0 { 0.0 } else { x * (x / y).ln() };
    term(a, b) + term(1.0 - a, 1.0 - b)
}

/// The smallest risk level r such that "risk > r" is rejected at `alpha`: an upper confidence
/// bound on the risk at level 1 − `alpha` (Clopper-Pearson for the binomial p-value).
pub fn upper_bound(kind: PValue, n: u64, losses: u64, alpha: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (losses as f64 / n as f64, 1.0);
    for _ in 0..64 {
        let mid = 0.5 * (lo + hi);
        if p_value(kind, n, losses, mid) <= alpha {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

// ---------------------------------------------------------------------------------------------
// The outcome table

/// One item's result under one candidate setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemResult {
    /// Tokens paid: generated plus probe tokens.
    pub cost: u64,
    /// The full answer was correct and the stopped one is not.
    pub em_loss: bool,
    /// The stopped answer differs from the full answer.
    pub disagree: bool,
}

impl ItemResult {
    fn of(facts: &TraceFacts, outcome: &Outcome) -> Self {
        ItemResult {
            cost: outcome.generated + outcome.probe_tokens,
            em_loss: facts.has_gold && facts.full_em && !outcome.em,
            disagree: !outcome.agree,
        }
    }

    fn loss(&self, risk: Risk) -> bool {
        match risk {
            Risk::EmDrop => self.em_loss,
            Risk::Disagreement => self.disagree,
        }
    }
}

/// One candidate setting and its result on every item.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub label: String,
    pub group: String,
    pub policy: PolicySpec,
    pub results: Vec<ItemResult>,
}

/// Candidates to certify, as named on a command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Candidates {
    /// A family over its threshold grid.
    Family(Family),
    /// One fixed policy (a preset, say): a group of one.
    Policy { name: String, policy: PolicySpec },
}

/// A group of candidates tested as one fixed sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    /// Column indices, from the safest setting to the most aggressive.
    pub columns: Vec<usize>,
}

/// Every candidate's result on every item, computed once.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeTable {
    pub columns: Vec<Column>,
    pub groups: Vec<Group>,
    /// Columns reported beside the certified setting but never certified (peer presets).
    pub peers: Vec<usize>,
    /// Tokens of each item's full run (no probes): the denominator of token reduction.
    pub full_cost: Vec<u64>,
    pub has_gold: Vec<bool>,
}

impl OutcomeTable {
    /// Replays every candidate (each family over a `grid`-point threshold grid) and every peer on
    /// `traces`. The budget grid's step is the first trace's probe interval.
    pub fn build(
        traces: &[Trace],
        candidates: &[Candidates],
        peers: &[(String, PolicySpec)],
        grid: usize,
        limits: Limits,
    ) -> Self {
        let facts: Vec<TraceFacts> = traces.iter().map(TraceFacts::of).collect();
        let interval = traces.first().map_or(32, |t| t.probe.interval);
        let mut table = OutcomeTable {
            columns: Vec::new(),
            groups: Vec::new(),
            peers: Vec::new(),
            full_cost: facts.iter().map(|f| u64::from(f.full_tokens)).collect(),
            has_gold: facts.iter().map(|f| f.has_gold).collect(),
        };
        let replay_all = |policy: &PolicySpec| -> Vec<ItemResult> {
            traces.iter().zip(&facts).map(|(t, f)| ItemResult::of(f, &replay(policy, t, f, limits))).collect()
        };
        for candidate in candidates {
            let first = table.columns.len();
            match candidate {
                Candidates::Family(family) => {
                    let thresholds = family.grid(grid, interval);
                    let mut results = vec![Vec::with_capacity(traces.len()); thresholds.len()];
                    for (t, f) in traces.iter().zip(&facts) {
                        for (column, outcome) in results.iter_mut().zip(family.outcomes(t, f, &thresholds, limits)) {
                            column.push(ItemResult::of(f, &outcome));
                        }
                    }
                    // Higher thresholds are safer: the sequence starts at the top of the grid.
                    for (threshold, results) in thresholds.iter().zip(results).rev() {
                        let policy = family.spec(*threshold);
                        table.columns.push(Column {
                            label: policy.label(),
                            group: family.name().to_owned(),
                            policy,
                            results,
                        });
                    }
                }
                Candidates::Policy { name, policy } => table.columns.push(Column {
                    label: name.clone(),
                    group: name.clone(),
                    policy: policy.clone(),
                    results: replay_all(policy),
                }),
            }
            let name = table.columns[first].group.clone();
            table.groups.push(Group { name, columns: (first..table.columns.len()).collect() });
        }
        for (name, policy) in peers {
            table.peers.push(table.columns.len());
            table.columns.push(Column {
                label: name.clone(),
                group: "peer".into(),
                policy: policy.clone(),
                results: replay_all(policy),
            });
        }
        table
    }

    pub fn items(&self) -> usize {
        self.full_cost.len()
    }

    /// Losses and the number of items the risk is measured on (items with gold, for `em-drop`).
    pub fn losses(&self, column: usize, items: &[usize], risk: Risk) -> (u64, u64) {
        let results = &self.columns[column].results;
        let mut losses = 0;
        let mut n = 0;
        for &i in items {
            if risk == Risk::Disagreement || self.has_gold[i] {
                n += 1;
                losses += u64::from(results[i].loss(risk));
            }
        }
        (losses, n)
    }

    /// `1 − tokens paid / full-run tokens` over `items` (probe tokens counted).
    pub fn token_reduction(&self, column: usize, items: &[usize]) -> f64 {
        let results = &self.columns[column].results;
        let (paid, full) =
            items.iter().fold((0u64, 0u64), |(paid, full), &i| (paid + results[i].cost, full + self.full_cost[i]));
        if full == 0 {
            0.0
        } else {
            1.0 - paid as f64 / full as f64
        }
    }

    fn risk_items(&self, items: &[usize], risk: Risk) -> u64 {
        match risk {
            Risk::Disagreement => items.len() as u64,
            Risk::EmDrop => items.iter().filter(|&&i| self.has_gold[i]).count() as u64,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Certification

/// What certification found for one candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateReport {
    pub label: String,
    pub group: String,
    pub policy: PolicySpec,
    /// Items the risk is measured on.
    pub n: u64,
    pub losses: u64,
    pub empirical_risk: f64,
    /// LTT's p-value of "risk > ε"; absent for other methods.
    pub p_value: Option<f64>,
    /// The method's bound: LTT's upper confidence bound at level 1 − δ/G, CRC's
    /// (Σ L̃ + 1)/(n + 1), the naive method's empirical risk.
    pub bound: f64,
    pub certified: bool,
    pub token_reduction: f64,
}

/// The result of certifying on a set of calibration items.
#[derive(Debug, Clone, PartialEq)]
pub struct Certification {
    pub settings: Settings,
    pub items: u64,
    /// Items the risk is measured on.
    pub n: u64,
    /// The level each group is tested at (δ/G for LTT).
    pub group_level: f64,
    /// Candidates that were tested, in testing order (a fixed sequence stops at its first
    /// failure; the rest of the group is not listed).
    pub candidates: Vec<CandidateReport>,
    /// Index into `candidates` of the certified setting that saves the most tokens, if one
    /// saves any.
    pub chosen: Option<usize>,
    /// Column of the chosen setting in the table.
    pub chosen_column: Option<usize>,
}

impl Certification {
    /// The smallest number of risk items at which a candidate with no observed loss would be
    /// certified: what to record when nothing can be certified yet.
    pub fn items_needed(&self, groups: usize) -> u64 {
        let groups = groups.max(1) as f64;
        let Settings { epsilon, delta, method, p_value: kind, .. } = self.settings;
        match method {
            Method::Naive => 1,
            Method::Crc => (groups / epsilon - 1.0).ceil().max(1.0) as u64,
            Method::Ltt => {
                let level = delta / groups;
                let mut n = ((level.ln() / (-epsilon).ln_1p()).ceil() as u64).max(1);
                while p_value(kind, n, 0, epsilon) > level {
                    n += 1;
                }
                n
            }
        }
    }
}

/// Certifies on `items` (indices into the table): see the module documentation.
pub fn certify(table: &OutcomeTable, items: &[usize], settings: &Settings) -> Result<Certification, CertifyError> {
    settings.check()?;
    if items.is_empty() {
        return Err(CertifyError::NoItems);
    }
    if table.groups.iter().all(|g| g.columns.is_empty()) {
        return Err(CertifyError::NoCandidates);
    }
    let n = table.risk_items(items, settings.risk);
    if n == 0 {
        return Err(CertifyError::NoGold(items.len()));
    }
    let groups = table.groups.len() as f64;
    let group_level = match settings.method {
        Method::Ltt => settings.delta / groups,
        Method::Crc => settings.epsilon / groups,
        Method::Naive => settings.epsilon,
    };
    let mut candidates = Vec::new();
    let mut columns = Vec::new();
    for group in &table.groups {
        // CRC's monotonised loss: an item counts as lost from the first (safest) candidate on
        // which it was lost, so the loss can only grow along the sequence.
        let mut lost_before = vec![false; table.items()];
        let mut monotone_losses = 0u64;
        for &column in &group.columns {
            let (losses, n) = table.losses(column, items, settings.risk);
            let empirical_risk = losses as f64 / n as f64;
            let (p, bound, certified) = match settings.method {
                Method::Ltt => {
                    let p = p_value(settings.p_value, n, losses, settings.epsilon);
                    (Some(p), upper_bound(settings.p_value, n, losses, group_level), p <= group_level)
                }
                Method::Crc => {
                    for &i in items {
                        let counted = settings.risk == Risk::Disagreement || table.has_gold[i];
                        if counted && !lost_before[i] && table.columns[column].results[i].loss(settings.risk) {
                            lost_before[i] = true;
                            monotone_losses += 1;
                        }
                    }
                    let bound = (monotone_losses as f64 + 1.0) / (n as f64 + 1.0);
                    (None, bound, bound <= group_level)
                }
                Method::Naive => (None, empirical_risk, empirical_risk <= settings.epsilon),
            };
            let c = &table.columns[column];
            candidates.push(CandidateReport {
                label: c.label.clone(),
                group: c.group.clone(),
                policy: c.policy.clone(),
                n,
                losses,
                empirical_risk,
                p_value: p,
                bound,
                certified,
                token_reduction: table.token_reduction(column, items),
            });
            columns.push(column);
            if !certified && settings.method != Method::Naive {
                break;
            }
        }
    }
    let chosen = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.certified && c.token_reduction > 0.0)
        .fold(None, |best: Option<(usize, f64)>, (i, c)| match best {
            Some((_, r)) if r >= c.token_reduction => best,
            _ => Some((i, c.token_reduction)),
        })
        .map(|(i, _)| i);
    Ok(Certification {
        settings: *settings,
        items: items.len() as u64,
        n,
        group_level,
        chosen_column: chosen.map(|i| columns[i]),
        candidates,
        chosen,
    })
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// The marker of a certificate document, so that a policy loader can tell it from a bare spec.
pub const CERTIFICATE_KIND: &str = "stopwise-certificate";

/// A certified setting, as written by `stopwise calibrate` and read as a policy by `replay` and
/// `serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub kind: String,
    pub version: u32,
    pub policy: PolicySpec,
    pub label: String,
    pub epsilon: f64,
    pub delta: f64,
    pub risk: Risk,
    pub method: Method,
    pub p_value: PValue,
    /// Calibration items, and those the risk was measured on.
    pub items: u64,
    pub n: u64,
    pub empirical_risk: f64,
    /// Upper confidence bound on the risk (LTT), or the CRC bound.
    pub upper_bound: f64,
    /// Token reduction on the calibration items, probe tokens counted.
    pub token_reduction: f64,
    /// Where the calibration traces came from (set by the caller).
    #[serde(default)]
    pub traces: Option<String>,
    pub candidates: Vec<CandidateReport>,
}

impl Certificate {
    /// The certificate of a certification, or `None` when nothing was certified.
    pub fn of(certification: &Certification) -> Option<Certificate> {
        let chosen = &certification.candidates[certification.chosen?];
        let s = certification.settings;
        Some(Certificate {
            kind: CERTIFICATE_KIND.into(),
            version: 1,
            policy: chosen.policy.clone(),
            label: chosen.label.clone(),
            epsilon: s.epsilon,
            delta: s.delta,
            risk: s.risk,
            method: s.method,
            p_value: s.p_value,
            items: certification.items,
            n: certification.n,
            empirical_risk: chosen.empirical_risk,
            upper_bound: chosen.bound,
            token_reduction: chosen.token_reduction,
            traces: None,
            candidates: certification.candidates.clone(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Validation over random splits

/// What one policy did on the test halves of a validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerValidation {
    pub label: String,
    pub policy: PolicySpec,
    /// Share of splits whose test risk is ≤ ε.
    pub coverage: f64,
    pub mean_test_risk: f64,
    pub mean_token_reduction: f64,
}

/// The result of `validate`: does the guarantee hold on held-out data, and what does it cost?
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Validation {
    pub settings: Settings,
    pub splits: u64,
    pub seed: u64,
    pub calibration_items: u64,
    pub test_items: u64,
    /// Share of splits whose test risk of the certified setting is ≤ ε (must be ≥ 1 − δ for LTT).
    pub coverage: f64,
    /// Share of splits where something was certified (otherwise the run is never stopped).
    pub certified_share: f64,
    pub mean_test_risk: f64,
    /// 95th percentile of the test risk over splits.
    pub p95_test_risk: f64,
    /// Mean token reduction of the certified setting on the test halves.
    pub mean_token_reduction: f64,
    /// Mean token reduction of the hindsight-best candidate (the most saving one whose test risk
    /// is ≤ ε), on the same test halves.
    pub mean_best_token_reduction: f64,
    /// `mean_token_reduction / mean_best_token_reduction` (1 when the best saves nothing).
    pub efficiency: f64,
    /// The settings chosen most often, with how many splits chose them.
    pub chosen: Vec<(String, u64)>,
    pub peers: Vec<PeerValidation>,
}

/// Certifies on a random `calibration_fraction` of the items and measures on the rest, `splits`
/// times (seeded).
pub fn validate(
    table: &OutcomeTable,
    settings: &Settings,
    splits: u64,
    calibration_fraction: f64,
    seed: u64,
) -> Result<Validation, CertifyError> {
    settings.check()?;
    let items = table.items();
    if items == 0 {
        return Err(CertifyError::NoItems);
    }
    if splits == 0 {
        return Err(CertifyError::Splits);
    }
    let calibration = (items as f64 * calibration_fraction).round() as usize;
    if !(calibration_fraction > 0.0 && calibration_fraction < 1.0) || calibration == 0 || calibration >= items {
        return Err(CertifyError::Fraction { fraction: calibration_fraction, items });
    }
    let risk_of = |column: Option<usize>, test: &[usize]| -> f64 {
        column.map_or(0.0, |c| {
            let (losses, n) = table.losses(c, test, settings.risk);
            if n == 0 {
                0.0
            } else {
                losses as f64 / n as f64
            }
        })
    };
    let candidates: Vec<usize> = table.groups.iter().flat_map(|g| g.columns.iter().copied()).collect();
    let mut rng = SplitMix64::new(seed);
    let mut order: Vec<usize> = (0..items).collect();
    let mut risks = Vec::with_capacity(splits as usize);
    let (mut covered, mut certified, mut reduction, mut best_reduction) = (0u64, 0u64, 0.0, 0.0);
    let mut chosen_counts: Vec<(String, u64)> = Vec::new();
    let mut peers: Vec<(u64, f64, f64)> = vec![(0, 0.0, 0.0); table.peers.len()];
    for _ in 0..splits {
        rng.shuffle(&mut order);
        let (calibrate_on, test) = order.split_at(calibration);
        let result = certify(table, calibrate_on, settings)?;
        let column = result.chosen_column;
        let test_risk = risk_of(column, test);
        risks.push(test_risk);
        covered += u64::from(test_risk <= settings.epsilon);
        certified += u64::from(column.is_some());
        reduction += column.map_or(0.0, |c| table.token_reduction(c, test));
        let label =
            column.map_or("never (no certified setting saves tokens)".to_owned(), |c| table.columns[c].label.clone());
        match chosen_counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, count)) => *count += 1,
            None => chosen_counts.push((label, 1)),
        }
        best_reduction += candidates
            .iter()
            .filter(|&&c| risk_of(Some(c), test) <= settings.epsilon)
            .map(|&c| table.token_reduction(c, test))
            .fold(0.0, f64::max);
        for (&column, peer) in table.peers.iter().zip(&mut peers) {
            let risk = risk_of(Some(column), test);
            peer.0 += u64::from(risk <= settings.epsilon);
            peer.1 += risk;
            peer.2 += table.token_reduction(column, test);
        }
    }
    let per_split = |x: f64| x / splits as f64;
    risks.sort_by(f64::total_cmp);
    chosen_counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    chosen_counts.truncate(5);
    let (mean_reduction, mean_best) = (per_split(reduction), per_split(best_reduction));
    Ok(Validation {
        settings: *settings,
        splits,
        seed,
        calibration_items: calibration as u64,
        test_items: (items - calibration) as u64,
        coverage: per_split(covered as f64),
        certified_share: per_split(certified as f64),
        mean_test_risk: per_split(risks.iter().sum()),
        p95_test_risk: risks[((risks.len() as f64 * 0.95).ceil() as usize).clamp(1, risks.len()) - 1],
        mean_token_reduction: mean_reduction,
        mean_best_token_reduction: mean_best,
        efficiency: if mean_best > 0.0 { mean_reduction / mean_best } else { 1.0 },
        chosen: chosen_counts,
        peers: table
            .peers
            .iter()
            .zip(&peers)
            .map(|(&c, &(covered, risk, reduction))| PeerValidation {
                label: table.columns[c].label.clone(),
                policy: table.columns[c].policy.clone(),
                coverage: per_split(covered as f64),
                mean_test_risk: per_split(risk),
                mean_token_reduction: per_split(reduction),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::budget::{Budget, BudgetFamily};
    use crate::rules::confidence::Confidence;
    use crate::rules::consistency::ConsistencyFamily;
    use crate::trace::tests::sample;

    fn settings(epsilon: f64, delta: f64, method: Method) -> Settings {
        Settings { epsilon, delta, risk: Risk::Disagreement, method, p_value: PValue::Binomial }
    }

    #[test]
    fn binomial_cdf_matches_known_values() {
        assert!((binomial_cdf(5, 10, 0.5) - 0.623_046_875).abs() < 1e-12);
        assert!((binomial_cdf(0, 10, 0.5) - 0.5f64.powi(10)).abs() < 1e-15);
        assert!((binomial_cdf(2, 20, 0.1) - 0.676_926_805_189_466).abs() < 1e-12);
        assert_eq!(binomial_cdf(10, 10, 0.3), 1.0);
        assert_eq!(binomial_cdf(3, 10, 0.0), 1.0);
        assert_eq!(binomial_cdf(3, 10, 1.0), 0.0);
        // Large n stays finite and exact enough: P(X <= 0) = 0.99^5000.
        assert!((binomial_cdf(0, 5000, 0.01).ln() - 5000.0 * 0.99f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn hoeffding_bentkus_is_never_below_the_exact_binomial() {
        for n in [10u64, 100, 1000] {
            for losses in [0, 1, n / 20, n / 10] {
                for eps in [0.01, 0.05, 0.2] {
                    let b = p_value(PValue::Binomial, n, losses, eps);
                    let hb = p_value(PValue::HoeffdingBentkus, n, losses, eps);
                    assert!(hb >= b * (1.0 - 1e-12), "n={n} losses={losses} eps={eps}: {hb} < {b}");
                }
            }
        }
    }

    #[test]
    fn upper_bound_matches_clopper_pearson() {
        // 0 losses in n: the exact bound solves (1 - u)^n = alpha.
        let u = upper_bound(PValue::Binomial, 100, 0, 0.05);
        assert!((u - (1.0 - 0.05f64.powf(0.01))).abs() < 1e-9);
        let u = upper_bound(PValue::Binomial, 200, 7, 0.05);
        assert!(u > 7.0 / 200.0 && (p_value(PValue::Binomial, 200, 7, u) - 0.05).abs() < 1e-6);
    }

    /// A synthetic group of `k` candidates whose true risks rise from 0 to `top` in even steps and
    /// whose costs fall: item `i` is lost at candidate `c` when its uniform draw is below risk(c).
    fn synthetic(n: usize, k: usize, top: f64, rng: &mut SplitMix64) -> (OutcomeTable, Vec<f64>) {
        let risks: Vec<f64> = (0..k).map(|c| top * c as f64 / (k - 1) as f64).collect();
        let draws: Vec<f64> = (0..n).map(|_| rng.unit()).collect();
        let columns = risks
            .iter()
            .enumerate()
            .map(|(c, &risk)| Column {
                label: format!("c{c}"),
                group: "g".into(),
                policy: Budget { max_tokens: (k - c) as u32 }.into(),
                results: draws
                    .iter()
                    .map(|&u| ItemResult { cost: (k - c) as u64, em_loss: u < risk, disagree: u < risk })
                    .collect(),
            })
            .collect();
        let table = OutcomeTable {
            columns,
            groups: vec![Group { name: "g".into(), columns: (0..k).collect() }],
            peers: vec![],
            full_cost: vec![k as u64 + 1; n],
            has_gold: vec![true; n],
        };
        (table, risks)
    }

    /// Share of fresh calibration sets on which the chosen setting's *true* risk exceeds ε, and
    /// the mean true risk of the chosen setting.
    fn failure_rate(method: Method, trials: usize) -> (f64, f64) {
        let s = settings(0.1, 0.1, method);
        let mut rng = SplitMix64::new(11);
        let (mut failures, mut mean_risk) = (0, 0.0);
        for _ in 0..trials {
            let (table, risks) = synthetic(200, 41, 0.2, &mut rng);
            let items: Vec<usize> = (0..200).collect();
            let result = certify(&table, &items, &s).unwrap();
            let risk = result.chosen_column.map_or(0.0, |c| risks[c]);
            failures += usize::from(risk > s.epsilon);
            mean_risk += risk;
        }
        (failures as f64 / trials as f64, mean_risk / trials as f64)
    }

    #[test]
    fn ltt_holds_its_guarantee_and_the_naive_selector_does_not() {
        let (ltt, _) = failure_rate(Method::Ltt, 400);
        let (naive, _) = failure_rate(Method::Naive, 400);
        assert!(ltt <= 0.1, "LTT failed on {ltt} of calibration sets (delta = 0.1)");
        assert!(naive > 0.3, "the naive selector failed on only {naive}: the test could not tell them apart");
    }

    #[test]
    fn crc_controls_the_expected_risk() {
        let (_, mean_risk) = failure_rate(Method::Crc, 400);
        assert!(mean_risk <= 0.1, "mean true risk {mean_risk} > epsilon");
    }

    #[test]
    fn fixed_sequence_stops_at_the_first_failure_and_the_best_certified_is_chosen() {
        let (table, _) = synthetic(2000, 41, 0.2, &mut SplitMix64::new(5));
        let items: Vec<usize> = (0..2000).collect();
        let result = certify(&table, &items, &settings(0.1, 0.05, Method::Ltt)).unwrap();
        let certified: Vec<bool> = result.candidates.iter().map(|c| c.certified).collect();
        assert!(certified[0] && !certified[certified.len() - 1]);
        assert_eq!(certified.iter().filter(|c| !**c).count(), 1, "testing goes on after a failure");
        let chosen = result.chosen.unwrap();
        assert_eq!(chosen, certified.len() - 2, "the most aggressive certified setting saves the most");
        let p: Vec<f64> = result.candidates.iter().map(|c| c.p_value.unwrap()).collect();
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "p-values rise with risk here: {p:?}");
        assert!(result.candidates[chosen].bound <= 0.1 + 1e-9, "a certified setting's upper bound is within epsilon");
    }

    #[test]
    fn a_certified_setting_that_costs_more_than_it_saves_is_never_chosen() {
        let (mut table, _) = synthetic(2000, 11, 0.2, &mut SplitMix64::new(5));
        let items: Vec<usize> = (0..2000).collect();
        let s = settings(0.1, 0.05, Method::Ltt);
        assert!(certify(&table, &items, &s).unwrap().chosen.is_some());
        // Probes make every setting cost as much as the full run (c10) or more (the others).
        table.full_cost = vec![1; 2000];
        let result = certify(&table, &items, &s).unwrap();
        assert!(result.candidates.iter().any(|c| c.certified));
        assert!(result.candidates.iter().all(|c| c.token_reduction <= 0.0));
        assert_eq!(result.chosen, None);
    }

    #[test]
    fn too_few_items_certifies_nothing_and_says_how_many_are_needed() {
        let (table, _) = synthetic(50, 5, 0.0, &mut SplitMix64::new(1));
        let items: Vec<usize> = (0..50).collect();
        let s = settings(0.01, 0.05, Method::Ltt);
        let result = certify(&table, &items, &s).unwrap();
        assert_eq!(result.chosen, None);
        let needed = result.items_needed(1);
        assert_eq!(needed, 299); // 0.99^299 <= 0.05 < 0.99^298
        let (table, _) = synthetic(needed as usize, 5, 0.0, &mut SplitMix64::new(1));
        let items: Vec<usize> = (0..needed as usize).collect();
        assert!(certify(&table, &items, &s).unwrap().chosen.is_some());
    }

    #[test]
    fn bad_settings_and_inputs_are_errors() {
        let (table, _) = synthetic(10, 3, 0.1, &mut SplitMix64::new(1));
        let items: Vec<usize> = (0..10).collect();
        for eps in [0.0, 1.0, -0.1, f64::NAN] {
            assert!(matches!(
                certify(&table, &items, &settings(eps, 0.05, Method::Ltt)),
                Err(CertifyError::Epsilon(_))
            ));
        }
        assert!(matches!(certify(&table, &items, &settings(0.1, 1.5, Method::Ltt)), Err(CertifyError::Delta(_))));
        assert_eq!(certify(&table, &[], &settings(0.1, 0.1, Method::Ltt)), Err(CertifyError::NoItems));
        let mut no_gold = table.clone();
        no_gold.has_gold = vec![false; 10];
        let em = Settings { risk: Risk::EmDrop, ..settings(0.1, 0.1, Method::Ltt) };
        assert_eq!(certify(&no_gold, &items, &em), Err(CertifyError::NoGold(10)));
        assert!(matches!(validate(&table, &em, 10, 1.0, 1), Err(CertifyError::Fraction { .. })));
        assert_eq!(validate(&table, &em, 0, 0.5, 1), Err(CertifyError::Splits));
    }

    #[test]
    fn validation_coverage_separates_ltt_from_naive() {
        // Coverage on splits of a finite pool is noisier than the population guarantee (test risk
        // scatters around the true risk), so the risk grid is coarse enough to leave LTT a margin.
        let (table, _) = synthetic(1000, 11, 0.2, &mut SplitMix64::new(9));
        let ltt = validate(&table, &settings(0.1, 0.1, Method::Ltt), 300, 0.5, 3).unwrap();
        let naive = validate(&table, &settings(0.1, 0.1, Method::Naive), 300, 0.5, 3).unwrap();
        assert!(ltt.coverage >= 0.9, "{ltt:?}");
        assert!(naive.coverage < 0.9, "{naive:?}");
        assert!(ltt.mean_token_reduction < naive.mean_token_reduction);
        assert!(ltt.efficiency > 0.0 && ltt.efficiency <= 1.0 + 1e-12);
        assert_eq!(ltt, validate(&table, &settings(0.1, 0.1, Method::Ltt), 300, 0.5, 3).unwrap(), "seeded");
    }

    #[test]
    fn certificates_round_trip_and_load_as_policies() {
        let traces: Vec<Trace> = (0..400)
            .map(|i| {
                let mut t = sample();
                t.id = format!("t{i}");
                t
            })
            .collect();
        let table = OutcomeTable::build(
            &traces,
            &[
                Candidates::Family(Family::Budget(BudgetFamily {})),
                Candidates::Family(Family::Consistency(ConsistencyFamily { hedge_filter: true })),
            ],
            &[("deer".into(), Confidence { threshold: 0.95, min_tokens: 0 }.into())],
            8,
            Limits::default(),
        );
        assert_eq!(table.groups.len(), 2);
        assert_eq!(table.peers.len(), 1);
        let items: Vec<usize> = (0..400).collect();
        let result = certify(&table, &items, &settings(0.05, 0.05, Method::Ltt)).unwrap();
        let certificate = Certificate::of(&result).expect("the sample's last probe agrees: something certifies");
        let text = serde_json::to_string(&certificate).unwrap();
        let back: Certificate = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (&back.policy, &back.label, back.n, back.candidates.len()),
            (&certificate.policy, &certificate.label, certificate.n, certificate.candidates.len())
        );
        assert_eq!(PolicySpec::parse(&text).unwrap(), certificate.policy);
        assert_eq!(PolicySpec::parse("dynasor-cot").unwrap(), PolicySpec::parse("dynasor-cot").unwrap());
        let broken = text.replace("\"version\":1", "\"version\":7");
        assert!(PolicySpec::parse(&broken).unwrap_err().to_string().contains("version 7"));
        let missing = text.replace("\"policy\"", "\"polcy\"");
        assert!(PolicySpec::parse(&missing).is_err());
    }
}

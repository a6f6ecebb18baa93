//! Deterministic simulation: the real engine of several nodes, on one thread, in
//! simulated time, over an in-memory store, a simulated payment provider and a notice
//! receiver (each payment's end sends a notice through the outbox), with crashes,
//! restarts, pauses past the lease, clock jumps, failed and commit-unknown store calls,
//! provider outages, hangs and lost answers — all chosen by one seed.
//!
//! After every step the invariants (I1–I4, I6, I7, "charged once" against the provider's
//! books, and the outbox) are checked; at the end, with the faults stopped, every operation a
//! client was told about must be terminal (I2). A run is a pure function of its seed and
//! settings: [`run_seed`] of the same seed gives the same [`SeedReport::digest`], so a
//! failing seed can be replayed, traced and fixed.
//!
//! [`Flaw`] breaks one rule on purpose, to show that the checks notice.

mod check;
mod world;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oncely::memory::Weakness;
use oncely::{
    Engine, EngineConfig, LeaseOwner, MemoryStore, OperationState, Orchestrator, WalKind,
};
use serde::Serialize;

use check::Clients;
pub use check::Violation;
use world::{
    Books, Counters, Dice, Journal, NodeClock, NodeStore, Notices, Pause, Pay, Payments, Provider,
    Weather, key, lock,
};

/// A rule broken on purpose, to show that the simulation finds its absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flaw {
    /// Finalize and reap ignore the lease owner: only the attempt number fences them.
    NoOwnerFence,
    /// The Reaper takes back an attempt whose outcome is already in the log.
    ReapRecorded,
    /// The decision is applied before the outcome is logged.
    FinalizeBeforeRecord,
    /// Every attempt sends the provider a key of its own.
    FreshKeyPerAttempt,
    /// A payment's end and the notice it sends are written in two transactions.
    FollowUpsApart,
}

impl Flaw {
    /// Every flaw.
    pub const ALL: [Flaw; 5] = [
        Self::NoOwnerFence,
        Self::ReapRecorded,
        Self::FinalizeBeforeRecord,
        Self::FreshKeyPerAttempt,
        Self::FollowUpsApart,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::NoOwnerFence => "no-owner-fence",
            Self::ReapRecorded => "reap-recorded",
            Self::FinalizeBeforeRecord => "finalize-before-record",
            Self::FreshKeyPerAttempt => "fresh-key-per-attempt",
            Self::FollowUpsApart => "follow-ups-apart",
        }
    }

    /// The flaw of that name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|flaw| flaw.name() == name)
    }

    fn weakness(self) -> Option<Weakness> {
        match self {
            Self::NoOwnerFence => Some(Weakness::NoOwnerFence),
            Self::ReapRecorded => Some(Weakness::ReapRecorded),
            Self::FinalizeBeforeRecord => Some(Weakness::FinalizeBeforeRecord),
            Self::FollowUpsApart => Some(Weakness::FollowUpsApart),
            Self::FreshKeyPerAttempt => None,
        }
    }
}

/// The shape of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimConfig {
    /// Engines sharing the store.
    pub nodes: usize,
    /// Payments the clients submit.
    pub operations: usize,
    /// Fault-injecting steps before the faults stop.
    pub steps: usize,
    /// A rule broken on purpose.
    pub flaw: Option<Flaw>,
    /// Keep the event log's lines in the report (for one seed: they are many).
    #[serde(skip)]
    pub keep_events: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            operations: 30,
            steps: 150,
            flaw: None,
            keep_events: false,
        }
    }
}

impl SimConfig {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), crate::Error> {
        if !(1..=16).contains(&self.nodes) {
            return Err(crate::Error::Setup(format!(
                "nodes must be 1 to 16, not {}",
                self.nodes
            )));
        }
        if !(1..=10_000).contains(&self.operations) {
            return Err(crate::Error::Setup(format!(
                "operations must be 1 to 10000, not {}",
                self.operations
            )));
        }
        if self.steps > 100_000 {
            return Err(crate::Error::Setup(format!(
                "steps must be at most 100000, not {}",
                self.steps
            )));
        }
        Ok(())
    }
}

/// What one seed's run did and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// SHA-256 of the run's event log (first 16 hex digits): the same seed and settings
    /// give the same digest.
    pub digest: String,
    /// Events in the log.
    pub events: u64,
    /// Simulated seconds the run took.
    pub simulated_seconds: u64,
    /// Faults and what they caused, by name.
    pub counts: BTreeMap<String, u64>,
    /// Operations by domain and final state (`SIM_PAYMENT COMPLETED`).
    pub states: BTreeMap<String, u64>,
    /// The first broken invariant, if any.
    pub violation: Option<String>,
    /// The step at which it was seen (`steps` for the end check).
    pub step: Option<usize>,
    /// The event log, when [`SimConfig::keep_events`] asked for it: simulated
    /// milliseconds, then the event.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub event_log: Vec<String>,
}

/// Node `i` of a run.
struct Node {
    engine: Option<Arc<Engine<NodeStore, Payments>>>,
    /// The same process's engine for the notices its payments' ends send.
    notices: Option<Engine<NodeStore, Notices>>,
    incarnation: u32,
    pause: Pause,
    skew_ms: Arc<AtomicI64>,
}

/// Everything one run shares between its driver and its clients.
struct World {
    config: SimConfig,
    store: MemoryStore,
    provider: Arc<Provider>,
    weather: Arc<Weather>,
    nodes: Mutex<Vec<Node>>,
    clients: Mutex<Clients>,
    /// Clients still trying to submit.
    pending: AtomicUsize,
    dice: Dice,
    origin: chrono::DateTime<chrono::Utc>,
    start: tokio::time::Instant,
    claim_on_accept: bool,
    settle_in_two_steps: bool,
    tally: Mutex<BTreeMap<&'static str, u64>>,
}

/// The lease of the simulated engines; pauses outlast it.
const LEASE: Duration = Duration::from_secs(2);

impl World {
    fn note(&self, event: &str) {
        self.weather.journal.note(event);
    }

    fn tally(&self, what: &'static str) {
        *lock(&self.tally).entry(what).or_default() += 1;
    }

    fn start_node(&self, index: usize) -> Result<(), crate::Error> {
        let mut nodes = lock(&self.nodes);
        let node = &mut nodes[index];
        node.incarnation += 1;
        let store = NodeStore {
            inner: self.store.clone(),
            node: index,
            pause: node.pause.clone(),
            weather: self.weather.clone(),
            settle_in_two_steps: self.settle_in_two_steps,
        };
        let payments = Payments {
            provider: self.provider.clone(),
            pause: node.pause.clone(),
            fresh_key_per_attempt: self.config.flaw == Some(Flaw::FreshKeyPerAttempt),
        };
        let notices = Notices {
            provider: self.provider.clone(),
            pause: node.pause.clone(),
        };
        let config = EngineConfig {
            workers: 4,
            lease_ttl: LEASE,
            call_timeout: LEASE.mul_f64(0.8),
            poll_interval: Duration::from_millis(100),
            maintenance_interval: Duration::from_millis(500),
            finalize_grace: Duration::from_millis(500),
            batch_size_max: 8,
            retention: None,
            claim_on_accept: self.claim_on_accept,
            batches_in_flight: 2,
        };
        let clock = NodeClock {
            origin: self.origin,
            start: self.start,
            skew_ms: node.skew_ms.clone(),
        };
        // One process, one incarnation: both engines lease under its name.
        let owner = LeaseOwner::from_stored(format!("node-{index}/{:04x}", node.incarnation));
        let failed = |error: oncely::Error| crate::Error::Setup(format!("engine: {error}"));
        let engine = Engine::builder(store.clone(), payments)
            .config(config.clone())
            .clock(clock.clone())
            .owner(owner.clone())
            .start()
            .map_err(failed)?;
        node.notices = Some(
            Engine::builder(store, notices)
                .config(config)
                .clock(clock)
                .owner(owner)
                .start()
                .map_err(failed)?,
        );
        node.engine = Some(Arc::new(engine));
        drop(nodes);
        self.note(&format!("start node {index}"));
        Ok(())
    }

    /// A live node's engine, chosen by the dice.
    fn live_engine(&self) -> Option<Arc<Engine<NodeStore, Payments>>> {
        let nodes = lock(&self.nodes);
        let live: Vec<_> = nodes
            .iter()
            .filter_map(|node| node.engine.clone())
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(live[self.dice.below(live.len())].clone())
    }

    /// Indexes of the nodes for which `keep` holds.
    fn nodes_where(&self, keep: impl Fn(&Node) -> bool) -> Vec<usize> {
        lock(&self.nodes)
            .iter()
            .enumerate()
            .filter(|(_, node)| keep(node))
            .map(|(index, _)| index)
            .collect()
    }

    fn pick(&self, candidates: &[usize]) -> Option<usize> {
        (!candidates.is_empty()).then(|| candidates[self.dice.below(candidates.len())])
    }

    fn crash(&self, index: usize) {
        let mut nodes = lock(&self.nodes);
        let node = &mut nodes[index];
        if let Some(engine) = node.engine.take() {
            engine.crash();
        }
        if let Some(engine) = node.notices.take() {
            engine.crash();
        }
        node.pause.set_paused(false);
        drop(nodes);
        self.note(&format!("crash node {index}"));
    }

    fn check(&self, end: bool) -> Result<(), Violation> {
        let (operations, wal) = self.store.snapshot();
        let books = lock(&self.provider.books);
        let clients = lock(&self.clients);
        check::check(&operations, &wal, &books, &clients, end)
    }
}

/// One client: submits `n` until a node answers, on whichever node is up.
async fn client(world: Arc<World>, n: usize, amount: i64, conflicting: bool) {
    let key = key(n);
    loop {
        let Some(engine) = world.live_engine() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let submitted = tokio::time::timeout(
            Duration::from_secs(1),
            engine.submit(key.clone(), Pay { amount }),
        )
        .await;
        drop(engine);
        let mut clients = lock(&world.clients);
        let complaint = match submitted {
            Ok(Ok(submission)) if conflicting => Some(format!(
                "{key} was {} with another command",
                if submission.replayed {
                    "replayed"
                } else {
                    "accepted"
                }
            )),
            Ok(Ok(submission)) => {
                let ack = clients.acked.entry(key.to_string()).or_default();
                if submission.replayed {
                    ack.replayed += 1;
                } else {
                    ack.new += 1;
                }
                let stored: Result<Pay, _> = serde_json::from_value(submission.operation.payload);
                (stored.ok() != Some(Pay { amount }))
                    .then(|| format!("{key} answered with another command"))
            }
            Ok(Err(oncely::Error::Conflict { .. })) if conflicting => None,
            Ok(Err(oncely::Error::Conflict { .. })) => {
                Some(format!("{key} was refused as a conflict with itself"))
            }
            // Stopped, a store error, no answer in time: ask again.
            Ok(Err(_)) | Err(_) => {
                drop(clients);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Some(detail) = complaint {
            clients.complaints.push(Violation {
                invariant: "I1",
                detail,
            });
        }
        break;
    }
    world.pending.fetch_sub(1, Ordering::SeqCst);
}

fn spawn_client(world: &Arc<World>, n: usize, amount: i64, conflicting: bool) {
    world.pending.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(client(world.clone(), n, amount, conflicting));
}

/// The amount of operation `n`: a few end in 7 and are declined.
fn amount_of(world: &World, n: usize) -> i64 {
    let amount = 100 + world.dice.i64(0..=9_900);
    lock(&world.clients)
        .amounts
        .insert(key(n).to_string(), amount);
    amount
}

/// One fault-injecting step.
fn step(world: &Arc<World>, submitted: &mut usize) -> Result<(), crate::Error> {
    let roll = world.dice.below(100);
    let acked: Vec<String> = lock(&world.clients).acked.keys().cloned().collect();
    match roll {
        0..=34 if *submitted < world.config.operations => {
            let n = *submitted;
            *submitted += 1;
            let amount = amount_of(world, n);
            world.note(&format!("submit {n} {amount}"));
            spawn_client(world, n, amount, false);
        }
        35..=42 if !acked.is_empty() => {
            let key = &acked[world.dice.below(acked.len())];
            let n = key_number(key);
            let amount = lock(&world.clients).amounts.get(key).copied().unwrap_or(0);
            world.note(&format!("resubmit {n}"));
            world.tally("resubmits");
            spawn_client(world, n, amount, false);
        }
        43..=46 if !acked.is_empty() => {
            let key = &acked[world.dice.below(acked.len())];
            let n = key_number(key);
            let amount = lock(&world.clients).amounts.get(key).copied().unwrap_or(0) + 1;
            world.note(&format!("conflicting submit {n}"));
            world.tally("conflictingSubmits");
            spawn_client(world, n, amount, true);
        }
        47..=52 => {
            if let Some(index) = world.pick(&world.nodes_where(|node| node.engine.is_some())) {
                world.crash(index);
                world.tally("crashes");
            }
        }
        53..=62 => {
            if let Some(index) = world.pick(&world.nodes_where(|node| node.engine.is_none())) {
                world.start_node(index)?;
                world.tally("restarts");
            }
        }
        63..=67 => {
            let candidates =
                world.nodes_where(|node| node.engine.is_some() && !node.pause.is_paused());
            if let Some(index) = world.pick(&candidates) {
                let pause = lock(&world.nodes)[index].pause.clone();
                let length = world.dice.millis(2_500..=6_000);
                pause.set_paused(true);
                world.note(&format!("pause node {index} for {length:?}"));
                world.tally("pauses");
                tokio::spawn(async move {
                    tokio::time::sleep(length).await;
                    pause.set_paused(false);
                });
            }
        }
        68..=71 => {
            if let Some(index) = world.pick(&world.nodes_where(|_| true)) {
                let jump = world.dice.i64(-3_000..=8_000);
                lock(&world.nodes)[index]
                    .skew_ms
                    .fetch_add(jump, Ordering::SeqCst);
                world.note(&format!("clock of node {index} jumps {jump} ms"));
                world.tally("clockJumps");
            }
        }
        72..=74 => {
            let (operations, _) = world.store.snapshot();
            let ended: Vec<_> = operations
                .into_iter()
                .filter(|o| o.scope.domain.as_str() == <Payments as Orchestrator>::DOMAIN)
                .filter(|o| matches!(o.state, OperationState::Failed | OperationState::Timeout))
                .collect();
            if !ended.is_empty()
                && let Some(engine) = world.live_engine()
            {
                let operation = ended[world.dice.below(ended.len())].clone();
                world.note(&format!("operator retries {}", operation.scope.key));
                world.tally("operatorRetries");
                tokio::spawn(async move {
                    // Refused if another retry got there first, or a store fault hit it.
                    let _ = engine.retry(&operation.scope).await;
                });
            }
        }
        75..=76 => {
            let (operations, _) = world.store.snapshot();
            let live: Vec<_> = operations
                .into_iter()
                .filter(|o| o.scope.domain.as_str() == <Payments as Orchestrator>::DOMAIN)
                .filter(|o| !o.state.is_terminal())
                .collect();
            if !live.is_empty()
                && let Some(engine) = world.live_engine()
            {
                let operation = live[world.dice.below(live.len())].clone();
                world.note(&format!(
                    "operator cancels {} ({})",
                    operation.scope.key, operation.state
                ));
                world.tally("operatorCancels");
                tokio::spawn(async move {
                    // Refused if it ended meanwhile, or a store fault hit it.
                    let _ = engine.cancel(&operation.scope).await;
                });
            }
        }
        _ => {}
    }
    Ok(())
}

fn key_number(key: &str) -> usize {
    key.trim_start_matches("op-").parse().unwrap_or(0)
}

/// Runs one seed: the fault-injecting steps, then the heal, checking after each step.
async fn simulate(seed: u64, config: SimConfig) -> Result<SeedReport, crate::Error> {
    // The engine's retry jitter draws from this thread's generator.
    fastrand::seed(seed);
    let journal = Arc::new(Journal::new(config.keep_events));
    let weather = Arc::new(Weather {
        stormy: AtomicBool::new(true),
        dice: Dice::new(seed ^ 0x9e37_79b9_7f4a_7c15),
        counters: Counters::default(),
        journal: journal.clone(),
    });
    let mut store = MemoryStore::new();
    if let Some(weakness) = config.flaw.and_then(Flaw::weakness) {
        store = store.weakened(weakness);
    }
    let dice = Dice::new(seed);
    let claim_on_accept = dice.chance(50);
    let settle_in_two_steps = dice.chance(50);
    let world = Arc::new(World {
        nodes: Mutex::new(
            (0..config.nodes)
                .map(|_| Node {
                    engine: None,
                    notices: None,
                    incarnation: 0,
                    pause: Pause::default(),
                    skew_ms: Arc::new(AtomicI64::new(0)),
                })
                .collect(),
        ),
        config,
        store,
        provider: Arc::new(Provider {
            books: Mutex::new(Books::default()),
            weather: weather.clone(),
        }),
        weather,
        clients: Mutex::new(Clients::default()),
        pending: AtomicUsize::new(0),
        dice,
        origin: chrono::DateTime::from_timestamp_millis(1_767_225_600_000).unwrap_or_default(),
        start: tokio::time::Instant::now(),
        claim_on_accept,
        settle_in_two_steps,
        tally: Mutex::new(BTreeMap::new()),
    });
    world.note(&format!(
        "seed {seed} claim-on-accept {claim_on_accept} settle-in-two-steps {settle_in_two_steps}"
    ));
    for index in 0..world.config.nodes {
        world.start_node(index)?;
    }
    let mut report = SeedReport {
        seed,
        ..SeedReport::default()
    };
    let mut submitted = 0;
    let mut found = None;
    for number in 0..world.config.steps {
        step(&world, &mut submitted)?;
        tokio::time::sleep(world.dice.millis(0..=400)).await;
        if let Err(violation) = world.check(false) {
            found = Some((number, violation));
            break;
        }
    }
    if found.is_none() {
        found = heal(&world, &mut submitted)
            .await?
            .map(|violation| (world.config.steps, violation));
    }
    for index in 0..world.config.nodes {
        world.crash(index);
    }
    let (operations, wal) = world.store.snapshot();
    for operation in &operations {
        journal.note(&format!(
            "end {} {} {}",
            operation.scope.key, operation.state, operation.attempt_count
        ));
        *report
            .states
            .entry(format!("{} {}", operation.scope.domain, operation.state))
            .or_default() += 1;
    }
    let counters = &world.weather.counters;
    let mut counts: BTreeMap<String, u64> = lock(&world.tally)
        .iter()
        .map(|(name, n)| ((*name).to_owned(), *n))
        .collect();
    for (name, counter) in [
        ("storeFailedBefore", &counters.fail_before),
        ("storeCommitUnknown", &counters.commit_unknown),
        ("providerUnavailable", &counters.provider_unavailable),
        ("providerHangs", &counters.provider_hangs),
        ("lostAnswers", &counters.lost_answers),
        ("charges", &counters.charges),
        ("providerReplays", &counters.replays),
        ("noticesActedOn", &counters.notices),
    ] {
        counts.insert(name.to_owned(), counter.load(Ordering::Relaxed));
    }
    let kinds = |kind: WalKind| wal.iter().filter(|entry| entry.kind == kind).count() as u64;
    counts.insert("fencedOutcomes".into(), kinds(WalKind::OutcomeRejected));
    counts.insert("reaped".into(), kinds(WalKind::Reaped));
    report.counts = counts;
    report.events = journal.events();
    report.simulated_seconds = u64::try_from(journal.elapsed_ms() / 1_000).unwrap_or(u64::MAX);
    report.digest = journal.digest();
    report.event_log = journal.lines();
    if let Some((number, violation)) = found {
        report.step = Some(number);
        report.violation = Some(violation.to_string());
    }
    Ok(report)
}

/// Stops the faults, brings every node back, submits what was not, and waits (in
/// simulated time) for every operation to end. Returns the first violation.
async fn heal(
    world: &Arc<World>,
    submitted: &mut usize,
) -> Result<Option<Violation>, crate::Error> {
    world.weather.stormy.store(false, Ordering::SeqCst);
    world.note("heal");
    for index in 0..world.config.nodes {
        let down = {
            let nodes = lock(&world.nodes);
            nodes[index].pause.set_paused(false);
            nodes[index].skew_ms.store(0, Ordering::SeqCst);
            nodes[index].engine.is_none()
        };
        if down {
            world.start_node(index)?;
        }
    }
    while *submitted < world.config.operations {
        let n = *submitted;
        *submitted += 1;
        let amount = amount_of(world, n);
        spawn_client(world, n, amount, false);
    }
    // Ten simulated minutes: far more than the retry budget needs.
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(violation) = world.check(false) {
            return Ok(Some(violation));
        }
        let (operations, _) = world.store.snapshot();
        if world.pending.load(Ordering::SeqCst) == 0
            && operations.iter().all(|o| o.state.is_terminal())
        {
            break;
        }
    }
    Ok(world.check(true).err())
}

/// Runs one seed on a single-threaded runtime of its own with simulated time.
pub fn run_seed(seed: u64, config: &SimConfig) -> Result<SeedReport, crate::Error> {
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let report = runtime.block_on(simulate(seed, config.clone()));
    // Tasks still parked (a client behind a crashed node, a hung provider call) go with
    // the runtime.
    runtime.shutdown_background();
    report
}

/// What a run of many seeds found.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The settings.
    pub config: Option<SimConfig>,
    /// Seeds run.
    pub seeds: u64,
    /// The first seed.
    pub first_seed: u64,
    /// Seconds of wall time.
    pub wall_seconds: f64,
    /// Simulated seconds, all seeds together.
    pub simulated_seconds: u64,
    /// Every count, summed over the seeds.
    pub counts: BTreeMap<String, u64>,
    /// Operations by domain and final state, summed.
    pub states: BTreeMap<String, u64>,
    /// The seeds that broke an invariant, in seed order.
    pub failures: Vec<SeedReport>,
}

/// Runs `count` seeds from `first` on `jobs` threads; with `stop_at_first_failure`, seeds
/// after a failing one are not started (every seed before it still runs, so the first
/// failure in seed order is found).
pub fn run_seeds(
    first: u64,
    count: u64,
    config: &SimConfig,
    jobs: usize,
    stop_at_first_failure: bool,
) -> Result<Summary, crate::Error> {
    config.validate()?;
    let started = Instant::now();
    let next = AtomicU64::new(first);
    let end = first.saturating_add(count);
    let stop = AtomicBool::new(false);
    let reports: Mutex<Vec<SeedReport>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<crate::Error>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= end {
                        break;
                    }
                    match run_seed(seed, config) {
                        Ok(report) => {
                            if report.violation.is_some() {
                                tracing::warn!(seed, violation = ?report.violation, digest = %report.digest, "invariant broken");
                                if stop_at_first_failure {
                                    stop.store(true, Ordering::SeqCst);
                                }
                            }
                            lock(&reports).push(report);
                        }
                        Err(error) => {
                            stop.store(true, Ordering::SeqCst);
                            lock(&errors).push(error);
                        }
                    }
                }
            });
        }
    });
    if let Some(error) = lock(&errors).pop() {
        return Err(error);
    }
    let mut reports = std::mem::take(&mut *lock(&reports));
    reports.sort_by_key(|report| report.seed);
    if stop_at_first_failure
        && let Some(at) = reports.iter().position(|report| report.violation.is_some())
    {
        reports.truncate(at + 1);
    }
    let mut summary = Summary {
        config: Some(config.clone()),
        seeds: reports.len() as u64,
        first_seed: first,
        wall_seconds: started.elapsed().as_secs_f64(),
        ..Summary::default()
    };
    for report in reports {
        summary.simulated_seconds += report.simulated_seconds;
        for (name, n) in &report.counts {
            *summary.counts.entry(name.clone()).or_default() += n;
        }
        for (state, n) in &report.states {
            *summary.states.entry(state.clone()).or_default() += n;
        }
        if report.violation.is_some() {
            summary.failures.push(report);
        }
    }
    Ok(summary)
}

//! `oncely sim`: the deterministic simulator, run as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::oncely;

fn run(args: &[&str]) -> (bool, String, String) {
    let output = oncely().arg("sim").args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn digest(stdout: &str) -> String {
    let line = stdout.lines().find(|line| line.contains("digest")).unwrap();
    line.rsplit(' ').next().unwrap().to_owned()
}

#[test]
fn two_hundred_seeds_keep_every_invariant_under_every_fault() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("sim.json");
    let (ok, stdout, stderr) = run(&["--seeds", "200", "--json", json.to_str().unwrap()]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("every invariant held in every seed"),
        "{stdout}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(summary["seeds"], 200);
    assert_eq!(summary["failures"].as_array().unwrap().len(), 0);
    // Every kind of fault happened, and the engine had to use every way out of them.
    for count in [
        "crashes",
        "restarts",
        "pauses",
        "clockJumps",
        "storeFailedBefore",
        "storeCommitUnknown",
        "providerUnavailable",
        "providerHangs",
        "lostAnswers",
        "providerReplays",
        "fencedOutcomes",
        "reaped",
        "operatorRetries",
        "operatorCancels",
        "conflictingSubmits",
        "resubmits",
    ] {
        assert!(
            summary["counts"][count].as_u64().unwrap() > 0,
            "no {count} in {summary}"
        );
    }
    // Every payment ended, most were charged once, and each end was announced once.
    let states = summary["states"].as_object().unwrap();
    let count = |name: &str| states.get(name).and_then(|n| n.as_u64()).unwrap_or(0);
    let completed = count("SIM_PAYMENT COMPLETED");
    let cancelled = count("SIM_PAYMENT CANCELLED");
    let payments = completed + count("SIM_PAYMENT FAILED") + cancelled;
    assert_eq!(payments, 200 * 30, "{states:?}");
    assert!(completed > payments / 2, "{states:?}");
    assert!(cancelled > 0, "{states:?}");
    // Each completed payment was charged once; a cancelled one only when a paused worker's
    // request reached the provider after the provider had been asked (the audit's case).
    let charges = summary["counts"]["charges"].as_u64().unwrap();
    assert!(
        (completed..=completed + cancelled).contains(&charges),
        "{charges} charges: {states:?}"
    );
    assert_eq!(count("SIM_NOTICE COMPLETED"), payments, "{states:?}");
    assert_eq!(
        summary["counts"]["noticesActedOn"].as_u64().unwrap(),
        payments
    );
    let all: u64 = states.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(
        all,
        2 * payments,
        "nothing else, nothing in flight: {states:?}"
    );
}

#[test]
fn a_seed_replays_to_the_same_digest_and_another_seed_does_not() {
    let (ok, first, _) = run(&["--seed", "17", "--events"]);
    assert!(ok, "{first}");
    let (_, again, _) = run(&["--seed", "17", "--events"]);
    assert_eq!(digest(&first), digest(&again));
    assert_eq!(first, again, "the same event log, line for line");
    assert!(
        first.lines().any(|line| line.contains("crash node")),
        "{first}"
    );
    let (_, other, _) = run(&["--seed", "18"]);
    assert_ne!(digest(&first), digest(&other));
}

/// Each rule the simulation should guard, removed in turn: it finds the removal within
/// a few dozen seeds, and the seed it names replays to the same failure.
#[test]
fn each_removed_rule_is_found_and_its_seed_replays() {
    for flaw in [
        "reap-recorded",
        "finalize-before-record",
        "fresh-key-per-attempt",
        "follow-ups-apart",
    ] {
        let (ok, stdout, stderr) = run(&["--seeds", "200", "--flaw", flaw]);
        assert!(ok, "{flaw} not found:\n{stdout}\n{stderr}");
        let found = stdout
            .lines()
            .find(|line| line.contains("BROKEN"))
            .unwrap()
            .to_owned();
        let seed = found.split_whitespace().nth(1).unwrap();
        let (ok, replay, _) = run(&["--seed", seed, "--flaw", flaw]);
        assert!(ok, "{replay}");
        let broken = replay.lines().find(|l| l.contains("BROKEN")).unwrap();
        let violation = |line: &str| line.split_once("): ").map(|(_, v)| v.to_owned());
        assert_eq!(
            broken.split_once(": ").map(|(_, v)| v.to_owned()),
            violation(&found),
            "{flaw}: the replay breaks the same invariant"
        );
        assert!(found.contains(&digest(&replay)), "{found} vs {replay}");
    }
}

#[test]
fn bad_settings_are_refused_with_a_message() {
    let (ok, _, stderr) = run(&["--seeds", "1", "--flaw", "nope"]);
    assert!(!ok);
    assert!(stderr.contains("reap-recorded"), "{stderr}");
    let (ok, _, stderr) = run(&["--seeds", "1", "--nodes", "0"]);
    assert!(!ok);
    assert!(stderr.contains("nodes must be 1 to 16"), "{stderr}");
    let (ok, _, stderr) = run(&["--events", "--seeds", "1"]);
    assert!(!ok);
    assert!(stderr.contains("--seed"), "{stderr}");
}

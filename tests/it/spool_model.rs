//! Model-based test: the spool and a `VecDeque` driven by the same random operations agree.

use std::collections::VecDeque;

use proptest::prelude::*;
use teledge::seal::Keyring;
use teledge::spool::{RecordId, Spool, SpoolConfig, SpoolError};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Flush,
    Read(usize),
    /// Acknowledge through the n-th unacknowledged record (modulo the queue length).
    Ack(usize),
    Reopen,
    /// Shrink the bound to this many bytes and reopen (the disk fills up).
    Fill(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Append),
        // Records larger than one sled value (stored in parts) and ones that end a segment.
        1 => (6_000usize..30_000, any::<u8>())
            .prop_map(|(n, seed)| Op::Append((0..n).map(|i| (i as u8) ^ seed).collect())),
        1 => Just(Op::Flush),
        2 => (1usize..20).prop_map(Op::Read),
        2 => (0usize..50).prop_map(Op::Ack),
        1 => Just(Op::Reopen),
        1 => (2_000u64..20_000).prop_map(Op::Fill),
    ]
}

fn keyring() -> Keyring {
    Keyring::new((1, [7; 32]), &[])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn spool_agrees_with_a_queue(ops in proptest::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SpoolConfig::new(dir.path(), "node-m");
        config.max_bytes = 1 << 30;
        let (mut spool, _) = Spool::open(config.clone(), keyring()).unwrap();
        // The model: records not yet acknowledged, in order. With a bound, the model only
        // knows which records may have been dropped: the oldest ones.
        let mut model: VecDeque<(RecordId, Vec<u8>)> = VecDeque::new();
        let mut bounded = false;
        let mut last_id: Option<RecordId> = None;
        // Only durable records are read: those appended before the last flush or restart.
        let mut durable: Option<RecordId> = None;
        for op in ops {
            match op {
                Op::Append(payload) => {
                    let appended = match spool.append(&payload) {
                        // Larger than the whole bound: refused with a clear error, and the
                        // store left as it was (the bound is enforced by the next append).
                        Err(SpoolError::TooLarge(_)) if bounded => continue,
                        other => other.unwrap(),
                    };
                    if let Some(id) = appended {
                        prop_assert!(last_id.is_none_or(|l| id > l), "ids grow");
                        last_id = Some(id);
                        model.push_back((id, payload));
                    }
                    if bounded {
                        // Drop-oldest keeps the held bytes within the bound.
                        prop_assert!(spool.stats().bytes <= config.max_bytes);
                    }
                }
                Op::Flush => {
                    spool.flush().unwrap();
                    durable = last_id;
                }
                Op::Read(n) => {
                    let got = spool.read(None, n).unwrap();
                    let data: Vec<_> = got
                        .iter()
                        .filter(|r| !is_gap(&r.payload))
                        .map(|r| (r.id, r.payload.clone()))
                        .collect();
                    if bounded {
                        // Dropped records are the oldest: what is left is a suffix of the
                        // model, read in order.
                        sync_drops(&mut model, &mut spool, durable);
                    }
                    let expected: Vec<_> = model
                        .iter()
                        .filter(|(id, _)| durable.is_some_and(|d| *id <= d))
                        .take(n)
                        .cloned()
                        .collect();
                    prop_assert_eq!(data.len().min(expected.len()), data.len());
                    prop_assert_eq!(&data[..], &expected[..data.len()]);
                }
                Op::Ack(n) => {
                    if bounded {
                        sync_drops(&mut model, &mut spool, durable);
                    }
                    // The forwarder only ever acknowledges what it read: durable records.
                    let sendable = model
                        .iter()
                        .filter(|(id, _)| durable.is_some_and(|d| *id <= d))
                        .count();
                    if sendable > 0 {
                        let (through, _) = model[n % sendable].clone();
                        spool.ack(through).unwrap();
                        // An acknowledgement is durable at once, and so is every append
                        // before it (one flush).
                        durable = last_id;
                        while model.front().is_some_and(|(id, _)| *id <= through) {
                            model.pop_front();
                        }
                    }
                }
                Op::Reopen => {
                    drop(spool);
                    spool = Spool::open(config.clone(), keyring()).unwrap().0;
                    durable = last_id;
                }
                Op::Fill(bytes) => {
                    drop(spool);
                    config.max_bytes = bytes;
                    bounded = true;
                    spool = Spool::open(config.clone(), keyring()).unwrap().0;
                    durable = last_id;
                }
            }
            let stats = spool.stats();
            if !bounded {
                prop_assert_eq!(stats.records as usize, model.len());
            }
        }
        // Everything the model still holds is in the spool, in order, after a restart.
        drop(spool);
        let (mut spool, _) = Spool::open(config.clone(), keyring()).unwrap();
        if bounded {
            let mut m = model.clone();
            sync_drops(&mut m, &mut spool, last_id);
            model = m;
        }
        let all: Vec<_> = spool
            .read(None, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|r| !is_gap(&r.payload))
            .map(|r| (r.id, r.payload))
            .collect();
        prop_assert_eq!(all, model.into_iter().collect::<Vec<_>>());
    }
}

fn is_gap(payload: &[u8]) -> bool {
    payload.starts_with(b"{\"type\":\"gap\"")
}

/// Removes from the model the oldest records the spool dropped under its bound.
fn sync_drops(
    model: &mut VecDeque<(RecordId, Vec<u8>)>,
    spool: &mut Spool,
    durable: Option<RecordId>,
) {
    let present: Vec<RecordId> = spool
        .read(None, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|r| !is_gap(&r.payload))
        .map(|r| r.id)
        .collect();
    // Only a prefix may be missing: drop-oldest never leaves holes.
    while model
        .front()
        .is_some_and(|(id, _)| durable.is_some_and(|d| *id <= d) && !present.contains(id))
    {
        model.pop_front();
    }
    assert!(
        model
            .iter()
            .filter(|(id, _)| durable.is_some_and(|d| *id <= d))
            .all(|(id, _)| present.contains(id)),
        "a record vanished from the middle of the spool"
    );
}

/// The child of `a_kill_right_after_open_keeps_the_store_epoch`: opens the spool named by
/// `TELEDGE_SPOOL_CHILD`, prints its epoch, and waits to be killed.
#[test]
#[ignore = "run as a child process by a_kill_right_after_open_keeps_the_store_epoch"]
fn spool_child_opens_and_waits() {
    let dir = std::env::var("TELEDGE_SPOOL_CHILD").unwrap();
    let (spool, _) = Spool::open(SpoolConfig::new(dir, "node-m"), keyring()).unwrap();
    println!("epoch {}", spool.epoch());
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_kill_right_after_open_keeps_the_store_epoch() {
    use std::io::BufRead;
    // Open flushes: the epoch a new store chose is on disk before anything else happens, so a
    // SIGKILL right after the open finds the same store again.
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "spool_model::spool_child_opens_and_waits",
            "--ignored",
            "--nocapture",
        ])
        .env("TELEDGE_SPOOL_CHILD", &spool_dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut epoch = None;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(e) = line.unwrap().strip_prefix("epoch ") {
            epoch = Some(e.parse::<u64>().unwrap());
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (spool, _) = Spool::open(SpoolConfig::new(&spool_dir, "node-m"), keyring()).unwrap();
    assert_eq!(Some(spool.epoch()), epoch);
}

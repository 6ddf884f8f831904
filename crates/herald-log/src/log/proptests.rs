//! Random appends, reopens (clean, crashed, crashed with a torn tail) and reads against
//! a model that is just the list of batches the log should hold.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::batch::validate_batches;
use crate::test_util::{BatchSpec, make_batch};

#[derive(Debug, Clone)]
enum Tear {
    /// Cut this fraction (in 1/256ths, at least one byte) off the last batch.
    Truncate(u8),
    /// Append bytes that are not a batch.
    Garbage(Vec<u8>),
    /// Flip a bit in the last batch (outside partitionLeaderEpoch, which no check covers).
    Flip(Index),
}

#[derive(Debug, Clone)]
enum Op {
    /// Batches to append in one call: (records, bytes per record, max timestamp).
    Append(Vec<(usize, usize, i64)>),
    Reopen {
        clean: bool,
        tear: Option<Tear>,
    },
    Read {
        at: Index,
        max_bytes: usize,
    },
    Flush,
}

fn tear() -> impl Strategy<Value = Tear> {
    prop_oneof![
        any::<u8>().prop_map(Tear::Truncate),
        prop::collection::vec(any::<u8>(), 1..120).prop_map(Tear::Garbage),
        any::<Index>().prop_map(Tear::Flip),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((1usize..6, 7usize..40, 0i64..1_000), 1..4).prop_map(Op::Append),
        1 => (any::<bool>(), prop::option::of(tear())).prop_map(|(clean, tear)| Op::Reopen { clean, tear }),
        3 => (any::<Index>(), 0usize..1_500).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => Just(Op::Flush),
    ]
}

fn active_segment(dir: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

/// Damage the active segment after a crash; returns whether the last batch is lost.
fn apply_tear(dir: &Path, tear: &Tear, last_batch: Option<&Vec<u8>>) -> bool {
    let path = active_segment(dir);
    let mut bytes = fs::read(&path).unwrap();
    // The last batch lives in the active segment iff the active segment is not empty.
    let last = last_batch.filter(|_| !bytes.is_empty());
    match (tear, last) {
        (Tear::Garbage(garbage), _) => {
            OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(garbage)
                .unwrap();
            false
        }
        (Tear::Truncate(fraction), Some(last)) => {
            let cut = (last.len() * usize::from(*fraction) / 256).max(1);
            bytes.truncate(bytes.len() - cut);
            fs::write(&path, bytes).unwrap();
            true
        }
        (Tear::Flip(at), Some(last)) => {
            let mut i = at.index(last.len() - 4);
            if i >= 12 {
                i += 4; // skip partitionLeaderEpoch @12..16
            }
            let start = bytes.len() - last.len();
            bytes[start + i] ^= 0x04;
            fs::write(&path, bytes).unwrap();
            true
        }
        (_, None) => false,
    }
}

fn check_whole_log(log: &PartitionLog, model: &[Vec<u8>]) {
    let next = model
        .last()
        .map_or(0, |b| validate_batches(b).unwrap()[0].last_offset() + 1);
    assert_eq!(log.next_offset(), next);
    assert_eq!(
        log.size_bytes(),
        model.iter().map(|b| b.len() as u64).sum::<u64>()
    );
    assert_eq!(log.read(0, usize::MAX).unwrap(), model.concat());
    let headers: Vec<BatchHeader> = log.batch_headers().unwrap();
    let expected: Vec<BatchHeader> = model
        .iter()
        .map(|b| validate_batches(b).unwrap()[0])
        .collect();
    assert_eq!(headers, expected);
}

fn run(config: LogConfig, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Some(PartitionLog::open(dir.path(), config.clone()).unwrap());
    // Every batch the log must hold, as stored (base offset written in).
    let mut model: Vec<Vec<u8>> = Vec::new();
    let mut now_ms = 0i64;
    for op in ops {
        now_ms += 97;
        let current = log.as_mut().unwrap();
        match op {
            Op::Append(specs) => {
                let parts: Vec<Vec<u8>> = specs
                    .iter()
                    .map(|&(records, record_bytes, ts)| {
                        make_batch(&BatchSpec {
                            records,
                            record_bytes,
                            base_timestamp: ts,
                            max_timestamp: ts,
                            ..BatchSpec::default()
                        })
                    })
                    .collect();
                let buf = parts.concat();
                let before = current.next_offset();
                match current.append(&buf, now_ms) {
                    Ok(info) => {
                        let buf =
                            crate::test_util::stored_as(&buf, info.base_offset, info.last_offset);
                        assert_eq!(info.base_offset, before);
                        assert_eq!(info.batch_count, parts.len());
                        let mut at = 0;
                        let mut expected_base = before;
                        for part in &parts {
                            let stored = buf[at..at + part.len()].to_vec();
                            // Byte-identical except the base offset, which is dense.
                            assert_eq!(stored[8..], part[8..]);
                            assert_eq!(
                                validate_batches(&stored).unwrap()[0].base_offset,
                                expected_base
                            );
                            expected_base +=
                                validate_batches(part).unwrap()[0].records_count as i64;
                            at += part.len();
                            model.push(stored);
                        }
                        assert_eq!(info.last_offset + 1, expected_base);
                        assert_eq!(current.next_offset(), expected_base);
                    }
                    Err(LogError::AppendTooLarge { .. }) => {
                        assert!(buf.len() as u64 > config.segment_bytes_max);
                        assert_eq!(current.next_offset(), before);
                    }
                    Err(e) => panic!("append failed: {e}"),
                }
            }
            Op::Read { at, max_bytes } => {
                let next = current.next_offset();
                let offset = at.index(next as usize + 1) as i64;
                let got = current.read(offset, max_bytes).unwrap();
                if offset == next {
                    assert!(got.is_empty());
                    continue;
                }
                // Whole batches only, starting with the one holding `offset`.
                let headers = validate_batches(&got).unwrap();
                assert!(headers[0].base_offset <= offset && offset <= headers[0].last_offset());
                assert!(headers.len() == 1 || got.len() <= max_bytes);
                let first = model
                    .iter()
                    .position(|b| {
                        validate_batches(b).unwrap()[0].base_offset == headers[0].base_offset
                    })
                    .unwrap();
                let expected = model[first..first + headers.len()].concat();
                assert_eq!(got, expected);
                // It stopped only because the next batch would not fit.
                if let Some(next_batch) = model.get(first + headers.len()) {
                    assert!(got.len() + next_batch.len() > max_bytes);
                }
            }
            Op::Flush => current.flush().unwrap(),
            Op::Reopen { clean, tear } => {
                let mut old = log.take().unwrap();
                if clean {
                    old.close().unwrap();
                } else {
                    drop(old);
                }
                if let Some(tear) = &tear
                    && apply_tear(dir.path(), tear, model.last())
                {
                    model.pop();
                }
                let reopened = PartitionLog::open(dir.path(), config.clone()).unwrap();
                check_whole_log(&reopened, &model);
                log = Some(reopened);
            }
        }
    }
    let mut last = log.take().unwrap();
    check_whole_log(&last, &model);
    last.close().unwrap();
    let reopened = PartitionLog::open(dir.path(), config).unwrap();
    assert!(reopened.recovery_info().clean_shutdown);
    assert_eq!(reopened.recovery_info().rebuilt_indexes, 0);
    check_whole_log(&reopened, &model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn appends_reopens_and_reads_keep_the_log_whole(
        segment_bytes_max in 150u64..2_000,
        index_interval_bytes in 0u64..400,
        segment_ms_max in 200i64..5_000,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(LogConfig { segment_bytes_max, segment_ms_max, index_interval_bytes }, ops);
    }
}

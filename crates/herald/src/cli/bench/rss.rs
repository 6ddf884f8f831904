//! `--broker-pid`: the broker's resident memory, sampled while a bench runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// Time between two samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Resident set sizes seen during a run, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RssStats {
    pub start: u64,
    pub min: u64,
    pub max: u64,
    pub end: u64,
    pub samples: u64,
}

impl RssStats {
    fn add(stats: &mut Option<RssStats>, bytes: u64) {
        match stats {
            None => {
                *stats = Some(RssStats {
                    start: bytes,
                    min: bytes,
                    max: bytes,
                    end: bytes,
                    samples: 1,
                })
            }
            Some(s) => {
                s.min = s.min.min(bytes);
                s.max = s.max.max(bytes);
                s.end = bytes;
                s.samples += 1;
            }
        }
    }
}

/// VmRSS of a process from the text of its /proc/PID/status, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Samples `pid` until `stop()`; the handle yields what was seen.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Option<RssStats>>,
}

impl Sampler {
    pub fn start(pid: u32) -> anyhow::Result<Sampler> {
        let path = format!("/proc/{pid}/status");
        let first = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| parse_vm_rss(&s));
        let Some(first) = first else {
            anyhow::bail!("--broker-pid {pid}: cannot read VmRSS from {path}");
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut stats = None;
            RssStats::add(&mut stats, first);
            while !flag.load(Ordering::Relaxed) {
                tokio::time::sleep(SAMPLE_EVERY).await;
                // A broker that exited mid-run leaves the samples taken so far.
                match tokio::fs::read_to_string(&path)
                    .await
                    .ok()
                    .and_then(|s| parse_vm_rss(&s))
                {
                    Some(bytes) => RssStats::add(&mut stats, bytes),
                    None => break,
                }
            }
            stats
        });
        Ok(Sampler { stop, task })
    }

    pub async fn stop(self) -> Option<RssStats> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let status = "Name:\therald\nVmPeak:\t  300000 kB\nVmRSS:\t   20872 kB\nThreads:\t5\n";
        assert_eq!(parse_vm_rss(status), Some(20_872 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn stats_keep_start_min_max_end() {
        let mut stats = None;
        for bytes in [30, 10, 50, 20] {
            RssStats::add(&mut stats, bytes);
        }
        assert_eq!(
            stats,
            Some(RssStats {
                start: 30,
                min: 10,
                max: 50,
                end: 20,
                samples: 4
            })
        );
    }
}

//! What a connection's messages in assembly (a `basic.publish` whose content has not
//! all arrived) hold, kept as it changes. The reader checks it on every frame: which
//! message is late, and whether another channel's message holds request-pool memory.
//! Scanning the channels instead would make every frame cost as much as the channels
//! open (up to channel_max, 65535).

use std::collections::BTreeSet;
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Assembly {
    /// (when its basic.publish came, channel) of every message in assembly: the first
    /// is the oldest.
    started: BTreeSet<(Instant, u16)>,
    /// Messages in assembly holding request-pool memory (a body frame came).
    holding: usize,
}

impl Assembly {
    /// A basic.publish came on `channel`: its content follows.
    pub(crate) fn begin(&mut self, channel: u16, started: Instant) {
        let new = self.started.insert((started, channel));
        debug_assert!(new, "channel {channel} already had a message in assembly");
    }

    /// A message in assembly took request-pool memory for the first time.
    pub(crate) fn hold(&mut self) {
        self.holding += 1;
        debug_assert!(self.holding <= self.started.len());
    }

    /// The message on `channel` is whole or dropped; `held` if it had memory.
    pub(crate) fn end(&mut self, channel: u16, started: Instant, held: bool) {
        let was = self.started.remove(&(started, channel));
        debug_assert!(was, "channel {channel} had no message in assembly");
        if held {
            debug_assert!(self.holding > 0);
            self.holding = self.holding.saturating_sub(1);
        }
    }

    /// The message in assembly that started first: (when, channel).
    pub(crate) fn oldest(&self) -> Option<(Instant, u16)> {
        self.started.first().copied()
    }

    /// Whether a message other than the caller's holds memory (`mine_holds`: the
    /// caller's own does).
    pub(crate) fn others_hold(&self, mine_holds: bool) -> bool {
        self.holding > usize::from(mine_holds)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.started.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn oldest_is_the_first_started_and_moves_on_as_messages_end() {
        let t0 = Instant::now();
        let mut a = Assembly::default();
        assert_eq!(a.oldest(), None);
        a.begin(7, t0 + Duration::from_millis(5));
        a.begin(3, t0);
        a.begin(9, t0 + Duration::from_millis(10));
        assert_eq!(a.oldest(), Some((t0, 3)));
        a.end(3, t0, false);
        assert_eq!(a.oldest(), Some((t0 + Duration::from_millis(5), 7)));
        a.end(9, t0 + Duration::from_millis(10), false);
        a.end(7, t0 + Duration::from_millis(5), false);
        assert_eq!(a.oldest(), None);
    }

    #[test]
    fn two_channels_may_start_at_the_same_instant() {
        let t0 = Instant::now();
        let mut a = Assembly::default();
        a.begin(1, t0);
        a.begin(2, t0);
        assert_eq!(a.len(), 2);
        a.end(1, t0, false);
        assert_eq!(a.oldest(), Some((t0, 2)));
    }

    #[test]
    fn others_hold_counts_every_holder_but_the_caller() {
        let t0 = Instant::now();
        let mut a = Assembly::default();
        a.begin(1, t0);
        a.begin(2, t0);
        assert!(!a.others_hold(false));
        a.hold(); // channel 1
        assert!(a.others_hold(false), "seen from channel 2");
        assert!(!a.others_hold(true), "seen from channel 1");
        a.hold(); // channel 2
        assert!(a.others_hold(true));
        a.end(1, t0, true);
        assert!(!a.others_hold(true), "only channel 2 is left");
        a.end(2, t0, true);
        assert!(!a.others_hold(false));
    }

    #[test]
    fn many_channels_cost_what_they_hold() {
        let t0 = Instant::now();
        let mut a = Assembly::default();
        for id in 1..=u16::MAX {
            a.begin(id, t0 + Duration::from_micros(u64::from(id)));
            a.hold();
        }
        assert_eq!(a.oldest(), Some((t0 + Duration::from_micros(1), 1)));
        for id in 1..u16::MAX {
            a.end(id, t0 + Duration::from_micros(u64::from(id)), true);
        }
        assert!(!a.others_hold(true));
        assert_eq!(
            a.oldest(),
            Some((t0 + Duration::from_micros(65535), u16::MAX))
        );
    }
}

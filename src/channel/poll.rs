//! Capped exponential backoff for polling a key that is not there yet.

use std::time::Duration;

use super::PollPolicy;

/// Sleeps of a poll loop: `initial`, doubling, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts a backoff following `policy`.
    pub fn new(policy: PollPolicy) -> Self {
        Backoff {
            next: policy.initial,
            max: policy.max,
        }
    }

    /// The next sleep, never longer than `limit`.
    pub fn next_sleep(&mut self, limit: Duration) -> Duration {
        let sleep = self.next.min(limit);
        self.next = (self.next * 2).min(self.max);
        sleep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let mut b = Backoff::new(PollPolicy {
            initial: Duration::from_micros(100),
            max: Duration::from_micros(350),
        });
        let long = Duration::from_secs(1);
        let sleeps: Vec<_> = (0..4).map(|_| b.next_sleep(long).as_micros()).collect();
        assert_eq!(sleeps, vec![100, 200, 350, 350]);
        assert_eq!(b.next_sleep(Duration::from_micros(5)).as_micros(), 5);
    }
}

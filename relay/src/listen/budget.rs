//! The agent handshake budget: a token bucket of `rate` handshakes a
//! second, bursts of as many, and a short queue behind it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A token bucket of agent handshakes: `rate` per second, bursts of as
/// many, and a short queue behind it.
#[derive(Debug)]
pub struct HandshakeBudget {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

/// How long a handshake may wait for the budget before it is refused.
/// Waiting a moment lets an agent in on its first try instead of sending
/// it into exponential backoff, which in a 10,000-agent restart storm left
/// a tail of agents still away 20 s after the rest were back. The agent's
/// own handshake timeout (10 s) leaves room for it.
pub const HANDSHAKE_QUEUE: Duration = Duration::from_secs(3);

impl HandshakeBudget {
    /// A full bucket of `per_sec`.
    pub fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec.max(1));
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// How long a handshake asking now would wait for its turn, without
    /// booking it: what a busy relay tells the agents it refuses.
    pub fn backlog(&self) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let now = Instant::now().max(*last);
        let refilled =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        Duration::from_secs_f64((1.0 - refilled).max(0.0) / self.rate)
    }

    /// The budget's rate, handshakes a second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Books one handshake: how long to wait before starting it (zero when
    /// the budget has one now), or `None` when even waiting `max_wait`
    /// would not reach one — then refuse it.
    pub fn reserve(&self, max_wait: Duration) -> Option<Duration> {
        self.reserve_at(max_wait, Instant::now())
    }

    fn reserve_at(&self, max_wait: Duration, now: Instant) -> Option<Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let now = now.max(*last);
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        // Tokens below zero are handshakes booked ahead of the refill.
        let left = *tokens - 1.0;
        let wait = Duration::from_secs_f64((-left).max(0.0) / self.rate);
        if wait > max_wait {
            return None;
        }
        *tokens = left;
        Some(wait)
    }
}

/// Waits out a booked handshake's turn; false if the relay stops first.
pub(super) async fn wait_turn(wait: Duration, cancel: &CancellationToken) -> bool {
    if wait.is_zero() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = cancel.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_queues_a_short_wait_and_refuses_a_long_one() {
        let budget = HandshakeBudget::new(10);
        // One instant throughout, so no refill happens between the calls.
        let now = Instant::now();
        let reserve = |max_wait| budget.reserve_at(max_wait, now);
        for _ in 0..10 {
            assert_eq!(reserve(Duration::ZERO), Some(Duration::ZERO));
        }
        assert_eq!(reserve(Duration::ZERO), None, "the burst is spent");
        let ms = |n| Some(Duration::from_millis(n));
        // The next ones wait for the refill: 0.1 s, 0.2 s, ... up to 1 s.
        let booked: Vec<_> = (0..12).map(|_| reserve(Duration::from_secs(1))).collect();
        let waits: Vec<_> = (1..=10).map(|i| ms(i * 100)).collect();
        assert_eq!(booked[..10].len(), waits.len());
        for (got, want) in booked.iter().zip(&waits) {
            let (got, want) = (got.unwrap(), want.unwrap());
            assert!(
                got.abs_diff(want) < Duration::from_millis(1),
                "{got:?} vs {want:?}"
            );
        }
        // Beyond a second's wait: refused, and not booked.
        assert_eq!(booked[10..], [None, None]);
        // Later, the refill has paid the bookings back.
        let later = now + Duration::from_secs(3);
        assert_eq!(
            budget.reserve_at(Duration::ZERO, later),
            Some(Duration::ZERO)
        );
    }
}

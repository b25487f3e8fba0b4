//! The timing rules, as pure functions: when to refresh a token and how long to back off.
//! The agent's loop applies them; nothing here sleeps.

use std::time::{Duration, SystemTime};

use crate::config::{RefreshPolicy, RetryPolicy};
use crate::token::Token;

/// How long to wait before refreshing `token`, seen at `now`.
///
/// kubelet's rule: refresh once `at` of the lifetime has passed, minus a random part
/// (`jitter` × lifetime × `random`, `random` in `[0, 1)`) so replicas spread out; then clamp to
/// `[min_interval, max_interval]`. `min_interval` never pushes the refresh past expiry: for a
/// token shorter-lived than that, the unclamped time is used. A wall clock earlier than the
/// token's issue time means the clock jumped backwards, and the token is refreshed at once.
pub fn refresh_delay(
    policy: &RefreshPolicy,
    token: &Token,
    now: SystemTime,
    random: f64,
) -> Duration {
    let Ok(age) = now.duration_since(token.issued_at) else {
        return Duration::ZERO;
    };
    let lifetime = token.lifetime();
    let target = lifetime
        .mul_f64(policy.at.fraction())
        .saturating_sub(lifetime.mul_f64(policy.jitter.fraction() * random.clamp(0.0, 1.0)));
    let base = target.saturating_sub(age);
    let clamped = base.clamp(policy.min_interval, policy.max_interval);
    if clamped >= token.remaining(now) {
        base
    } else {
        clamped
    }
}

/// Exponential backoff: `initial`, doubling up to `max`, each delay shortened by up to 25 %
/// at random (Vault Agent's rule); [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    last: Option<Duration>,
}

impl Backoff {
    pub fn new(policy: RetryPolicy) -> Self {
        Backoff { policy, last: None }
    }

    /// The next delay; `random` in `[0, 1)` picks the jitter.
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let step = match self.last {
            None => self.policy.initial,
            Some(last) => last.saturating_mul(2),
        }
        .min(self.policy.max);
        self.last = Some(step);
        step.mul_f64(1.0 - 0.25 * random.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.last = None;
    }

    /// True when no failure has been seen since the last reset.
    pub fn is_reset(&self) -> bool {
        self.last.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Percent;

    fn policy() -> RefreshPolicy {
        RefreshPolicy {
            at: Percent::from_fraction_unchecked(0.8),
            jitter: Percent::from_fraction_unchecked(0.1),
            min_interval: Duration::from_secs(10),
            max_interval: Duration::from_secs(24 * 3600),
        }
    }

    fn token(issued: SystemTime, lifetime: u64) -> Token {
        Token::new(
            "t".into(),
            "Bearer".into(),
            issued,
            issued + Duration::from_secs(lifetime),
        )
    }

    #[test]
    fn refreshes_at_80_percent_minus_jitter() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = token(now, 1000);
        assert_eq!(
            refresh_delay(&policy(), &t, now, 0.0),
            Duration::from_secs(800)
        );
        assert_eq!(
            refresh_delay(&policy(), &t, now, 0.5),
            Duration::from_secs(750)
        );
        let almost_full_jitter = refresh_delay(&policy(), &t, now, 0.999_999_9).as_secs_f64();
        assert!(
            (700.0..700.001).contains(&almost_full_jitter),
            "{almost_full_jitter}"
        );
        // Later in its life, the remaining wait shrinks.
        assert_eq!(
            refresh_delay(&policy(), &t, now + Duration::from_secs(500), 0.0),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn clamps_to_min_and_max() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut p = policy();
        p.max_interval = Duration::from_secs(60);
        assert_eq!(
            refresh_delay(&p, &token(now, 1000), now, 0.0),
            Duration::from_secs(60)
        );
        // Past the refresh point: wait min_interval rather than spin.
        assert_eq!(
            refresh_delay(&p, &token(now, 1000), now + Duration::from_secs(850), 0.0),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn min_interval_never_outlives_the_token() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // 5 s token: 80 % is 4 s, which beats the 10 s min_interval that would let it expire.
        assert_eq!(
            refresh_delay(&policy(), &token(now, 5), now, 0.0),
            Duration::from_secs(4)
        );
    }

    #[test]
    fn clock_jumped_backwards_forces_refresh() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = token(now, 1000);
        assert_eq!(
            refresh_delay(&policy(), &t, now - Duration::from_secs(1), 0.0),
            Duration::ZERO
        );
    }

    #[test]
    fn backoff_doubles_caps_jitters_and_resets() {
        let mut b = Backoff::new(RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        });
        let seq: Vec<u64> = (0..11).map(|_| b.next_delay(0.0).as_secs()).collect();
        assert_eq!(seq, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(b.next_delay(0.999_999).as_secs_f64().round(), 225.0);
        b.reset();
        assert!(b.is_reset());
        assert_eq!(b.next_delay(0.0), Duration::from_secs(1));
    }
}

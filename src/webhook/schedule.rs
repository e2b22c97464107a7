//! When a failed delivery is tried again: the `WEBHOOK_RETRY_SCHEDULE` delays with
//! ±20% jitter (N delays = N + 1 attempts), and the receiver's `Retry-After` (seconds
//! or an HTTP date) as a lower bound.
//!
//! Pure: the caller passes the clock and the jitter, so every rule is unit-tested
//! without sleeping. Parsing the schedule reuses `config::parse_duration`, the one
//! duration grammar of the configuration.

use std::time::Duration;

use time::OffsetDateTime;

use crate::config::parse_duration;

/// How far each delay may stray either way (0.2 = ±20%), so that endpoints that failed
/// together (an outage) are not retried in lock-step.
pub const JITTER: f64 = 0.2;

/// The longest `Retry-After` honoured; a receiver asking for more (or a clock far off)
/// gets retried after a day instead of never.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// The delays between attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>) -> Self {
        RetrySchedule { delays }
    }

    /// `"5s,5m,30m"`; an entry that is not a duration names itself in the error.
    /// (`Config` has already validated `WEBHOOK_RETRY_SCHEDULE`; this is for callers
    /// holding a string.)
    pub fn parse(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| parse_duration(d).ok_or_else(|| format!("{d:?} is not a duration")))
            .collect::<Result<Vec<_>, _>>()
            .map(RetrySchedule::new)
    }

    /// How many attempts a delivery gets in all.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// When attempt `made + 1` is due, given that `made` attempts (at least one) have
    /// been made, the last of which just ended at `now`; `None` when `made` was the
    /// last. `jitter` in `[-1, 1]` scales the delay by `1 + jitter × JITTER`.
    pub fn next_attempt(
        &self,
        made: u32,
        now: OffsetDateTime,
        jitter: f64,
    ) -> Option<OffsetDateTime> {
        let index = usize::try_from(made.checked_sub(1)?).ok()?;
        let delay = self.delays.get(index)?;
        let factor = 1.0 + jitter.clamp(-1.0, 1.0) * JITTER;
        Some(now + delay.mul_f64(factor))
    }
}

/// A uniformly random jitter in `[-1, 1]` for [`RetrySchedule::next_attempt`].
pub fn random_jitter() -> f64 {
    rand::random::<f64>() * 2.0 - 1.0
}

/// `Retry-After` as a wait from `now`: delay-seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`). A date in the past means "now" (zero); values
/// above [`MAX_RETRY_AFTER`] are capped; anything else is ignored (`None`).
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let format = time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        let at = time::PrimitiveDateTime::parse(value, &format)
            .ok()?
            .assume_utc();
        Duration::try_from(at - now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);

    fn schedule(s: &str) -> RetrySchedule {
        RetrySchedule::parse(s).unwrap()
    }

    #[test]
    fn webhook_schedule_of_n_delays_gives_n_plus_one_attempts() {
        let s = schedule("5s,5m,30m");
        assert_eq!(s.max_attempts(), 4);
        let check = |made: u32, expected: Option<OffsetDateTime>| {
            assert_eq!(
                s.next_attempt(made, NOW, 0.0),
                expected,
                "after {made} attempts"
            );
        };
        check(1, Some(datetime!(2026-03-01 12:00:05 UTC)));
        check(2, Some(datetime!(2026-03-01 12:05:00 UTC)));
        check(3, Some(datetime!(2026-03-01 12:30:00 UTC)));
        check(4, None);
        check(40, None);
        // Zero attempts made is a caller bug; there is no "next" to compute.
        check(0, None);
    }

    #[test]
    fn webhook_schedule_jitter_stays_within_twenty_percent() {
        let s = schedule("10s");
        assert_eq!(
            s.next_attempt(1, NOW, 1.0),
            Some(datetime!(2026-03-01 12:00:12 UTC))
        );
        assert_eq!(
            s.next_attempt(1, NOW, -1.0),
            Some(datetime!(2026-03-01 12:00:08 UTC))
        );
        // Out-of-range jitter is clamped rather than trusted.
        assert_eq!(
            s.next_attempt(1, NOW, 7.0),
            Some(datetime!(2026-03-01 12:00:12 UTC))
        );
        for _ in 0..1000 {
            let j = random_jitter();
            assert!((-1.0..=1.0).contains(&j), "{j}");
            let at = s.next_attempt(1, NOW, j).unwrap();
            let wait = at - NOW;
            assert!(wait >= time::Duration::seconds(8) && wait <= time::Duration::seconds(12));
        }
    }

    #[test]
    fn webhook_schedule_parses_like_the_configuration() {
        assert_eq!(
            schedule("10ms, 20ms"),
            RetrySchedule::new(vec![Duration::from_millis(10), Duration::from_millis(20)])
        );
        assert_eq!(schedule("").max_attempts(), 1);
        assert!(RetrySchedule::parse("5s,soon")
            .unwrap_err()
            .contains("soon"));
    }

    #[test]
    fn webhook_retry_after_accepts_seconds_and_http_dates() {
        let check = |value: &str, expected: Option<Duration>| {
            assert_eq!(parse_retry_after(value, NOW), expected, "{value:?}");
        };
        check("1", Some(Duration::from_secs(1)));
        check(" 120 ", Some(Duration::from_secs(120)));
        check(
            "Sun, 01 Mar 2026 12:00:30 GMT",
            Some(Duration::from_secs(30)),
        );
        check("Sun, 01 Mar 2026 11:00:00 GMT", Some(Duration::ZERO));
        check("999999999", Some(MAX_RETRY_AFTER));
        check("soon", None);
        check("-5", None);
        check("", None);
    }
}

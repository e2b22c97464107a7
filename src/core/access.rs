//! Who may talk to the bot: `ALLOWED_CHANNELS`, `BLOCKED_USERS` and the per-user rate
//! limit `USER_RATE_LIMIT`, checked before a turn is queued, on every platform alike.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::message::Inbound;

/// What [`Access::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Not an allowed channel, or a blocked user: never answered.
    Ignored,
    /// Over the user's rate: answered politely, not relayed.
    Limited,
}

#[derive(Debug, Clone, Default)]
pub struct AccessSettings {
    /// Empty: every channel.
    pub allowed_channels: Vec<String>,
    pub blocked_users: Vec<String>,
    /// At most `.0` turns per `.1` per user.
    pub user_rate_limit: Option<(u32, Duration)>,
}

pub struct Access {
    allowed_channels: HashSet<String>,
    blocked_users: HashSet<String>,
    limiter: Option<RateLimiter>,
}

impl Access {
    pub fn new(settings: AccessSettings) -> Self {
        Access {
            allowed_channels: settings.allowed_channels.into_iter().collect(),
            blocked_users: settings.blocked_users.into_iter().collect(),
            limiter: settings
                .user_rate_limit
                .map(|(turns, per)| RateLimiter::new(turns, per)),
        }
    }

    pub fn check(&self, msg: &Inbound) -> Verdict {
        if self.refusal(msg).is_some() {
            return Verdict::Ignored;
        }
        match &self.limiter {
            Some(limiter) if !limiter.allow(msg, Instant::now()) => Verdict::Limited,
            _ => Verdict::Allowed,
        }
    }
}

impl Access {
    /// Why `msg` is never relayed (a blocked user, a channel outside
    /// `ALLOWED_CHANNELS`), for a platform that must answer anyway — a slash command
    /// waits for a response. Reads no rate-limit state.
    pub fn refusal(&self, msg: &Inbound) -> Option<Refusal> {
        if self.blocked_users.contains(&msg.user) {
            Some(Refusal::BlockedUser)
        } else if !self.allowed_channels.is_empty() && !self.allowed_channels.contains(&msg.channel)
        {
            Some(Refusal::ChannelNotAllowed)
        } else {
            None
        }
    }
}

/// Why a message is not relayed, said only where the platform needs an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `BLOCKED_USERS`.
    BlockedUser,
    /// Not in `ALLOWED_CHANNELS`.
    ChannelNotAllowed,
}

impl Refusal {
    /// What the user is told (privately).
    pub fn reply(self) -> &'static str {
        match self {
            Refusal::BlockedUser => "You are not allowed to use this bot.",
            Refusal::ChannelNotAllowed => {
                "This bot does not answer in this channel. Ask in one of the channels it serves."
            }
        }
    }
}

/// GCRA (the generic cell rate algorithm): one timestamp per user, no timers. A user
/// may send `turns` at once, then one more every `per / turns`.
struct RateLimiter {
    /// Time between turns at the sustained rate.
    interval: Duration,
    /// How far ahead of now a user's "theoretical arrival time" may run: the burst.
    tolerance: Duration,
    /// Per user (platform + id): when their next turn would be due at the steady rate.
    due: DashMap<String, Instant>,
}

impl RateLimiter {
    fn new(turns: u32, per: Duration) -> Self {
        let interval = per / turns.max(1);
        RateLimiter {
            interval,
            tolerance: per.saturating_sub(interval),
            due: DashMap::new(),
        }
    }

    fn allow(&self, msg: &Inbound, now: Instant) -> bool {
        // Forget users who are back at rest, so the map stays as small as the set of
        // users active within one window.
        if self.due.len() > 10_000 {
            self.due.retain(|_, due| *due > now);
        }
        let key = format!("{}:{}", msg.platform.as_str(), msg.user);
        let mut due = self.due.entry(key).or_insert(now);
        let tat = (*due).max(now);
        if tat.saturating_duration_since(now) > self.tolerance {
            return false;
        }
        *due = tat + self.interval;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::Platform;

    fn msg(channel: &str, user: &str) -> Inbound {
        Inbound {
            platform: Platform::Slack,
            workspace: "T".into(),
            channel: channel.into(),
            thread: None,
            user: user.into(),
            message_id: "1".into(),
            text: "hi".into(),
        }
    }

    #[test]
    fn allowed_channels_and_blocked_users() {
        let access = Access::new(AccessSettings {
            allowed_channels: vec!["C1".into(), "D9".into()],
            blocked_users: vec!["U666".into()],
            user_rate_limit: None,
        });
        assert_eq!(access.check(&msg("C1", "U1")), Verdict::Allowed);
        assert_eq!(access.check(&msg("D9", "U1")), Verdict::Allowed);
        assert_eq!(access.check(&msg("C2", "U1")), Verdict::Ignored);
        assert_eq!(access.check(&msg("C1", "U666")), Verdict::Ignored);
    }

    #[test]
    fn no_settings_allow_everything() {
        let access = Access::new(AccessSettings::default());
        for _ in 0..1000 {
            assert_eq!(access.check(&msg("C", "U")), Verdict::Allowed);
        }
    }

    #[test]
    fn the_rate_allows_a_burst_then_one_per_interval_per_user() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let a = msg("C", "A");
        assert!(limiter.allow(&a, t0));
        assert!(limiter.allow(&a, t0));
        assert!(limiter.allow(&a, t0));
        assert!(
            !limiter.allow(&a, t0),
            "the fourth in a burst is over the rate"
        );
        assert!(
            limiter.allow(&msg("C", "B"), t0),
            "other users are not affected"
        );
        assert!(!limiter.allow(&a, t0 + Duration::from_secs(19)));
        assert!(
            limiter.allow(&a, t0 + Duration::from_secs(20)),
            "one more after per/turns"
        );
    }
}

//! Penalties for source addresses that fail to log in, in the spirit of
//! OpenSSH's `PerSourcePenalties` and SFTPGo's defender: each connection
//! that ends without logging in counts against its address; the address's
//! rejections are answered ever more slowly, and after `ban_after` failures
//! within an hour it is banned, the ban doubling with each repeat (up to a
//! day). A successful login clears the count, not a running ban.
//!
//! Pure: time is passed in, so the rules are tested without waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures older than this are forgotten.
const WINDOW: Duration = Duration::from_secs(3600);
const MAX_BAN: Duration = Duration::from_secs(24 * 3600);
const MAX_DELAY: Duration = Duration::from_secs(8);
/// Addresses tracked at most; the oldest are dropped beyond it (a flood of
/// spoofed sources must not grow memory without bound).
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    Banned { remaining: Duration },
}

#[derive(Debug, Default, Clone)]
struct Record {
    failures: Vec<Instant>,
    banned_until: Option<Instant>,
    bans: u32,
    last_seen: Option<Instant>,
}

#[derive(Debug)]
pub struct Defender {
    ban_after: u32,
    ban: Duration,
    sources: HashMap<IpAddr, Record>,
}

impl Defender {
    pub fn new(ban_after: u32, ban: Duration) -> Defender {
        Defender {
            ban_after: ban_after.max(1),
            ban,
            sources: HashMap::new(),
        }
    }

    /// Applies new settings (config reload) without forgetting the records.
    pub fn configure(&mut self, ban_after: u32, ban: Duration) {
        self.ban_after = ban_after.max(1);
        self.ban = ban;
    }

    /// May a connection from `addr` proceed at `now`?
    pub fn check(&mut self, addr: IpAddr, now: Instant) -> Verdict {
        match self.sources.get(&addr).and_then(|r| r.banned_until) {
            Some(until) if until > now => Verdict::Banned {
                remaining: until - now,
            },
            _ => Verdict::Admit,
        }
    }

    /// How long to hold back a rejection for `addr`: nothing on a first
    /// failure, then doubling from half a second up to eight.
    pub fn delay(&self, addr: IpAddr, now: Instant) -> Duration {
        let recent = self.sources.get(&addr).map_or(0, |r| {
            r.failures.iter().filter(|t| now - **t < WINDOW).count()
        });
        if recent == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (recent - 1).min(5);
        (Duration::from_millis(500) * factor).min(MAX_DELAY)
    }

    /// Records a connection from `addr` that ended without logging in.
    /// Returns the length of the ban it started, if it started one.
    pub fn failed(&mut self, addr: IpAddr, now: Instant) -> Option<Duration> {
        if self.sources.len() >= MAX_TRACKED && !self.sources.contains_key(&addr) {
            self.forget_oldest();
        }
        let (ban_after, base) = (self.ban_after, self.ban);
        let r = self.sources.entry(addr).or_default();
        r.last_seen = Some(now);
        r.failures.retain(|t| now - *t < WINDOW);
        r.failures.push(now);
        if r.failures.len() as u32 >= ban_after {
            let length = (base * 2u32.saturating_pow(r.bans.min(16))).min(MAX_BAN);
            r.banned_until = Some(now + length);
            r.bans += 1;
            r.failures.clear();
            return Some(length);
        }
        None
    }

    /// A successful login: the address's failure count starts again.
    pub fn succeeded(&mut self, addr: IpAddr) {
        if let Some(r) = self.sources.get_mut(&addr) {
            r.failures.clear();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some(oldest) = self
            .sources
            .iter()
            .min_by_key(|(_, r)| r.last_seen)
            .map(|(a, _)| *a)
        {
            self.sources.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn delays_grow_then_the_address_is_banned_and_the_ban_doubles() {
        let t0 = Instant::now();
        let mut d = Defender::new(3, Duration::from_secs(60));
        assert_eq!(d.delay(ip(1), t0), Duration::ZERO);
        assert_eq!(d.failed(ip(1), t0), None);
        assert_eq!(d.delay(ip(1), t0), Duration::from_millis(500));
        assert_eq!(d.failed(ip(1), t0), None);
        assert_eq!(d.delay(ip(1), t0), Duration::from_secs(1));
        assert_eq!(d.check(ip(1), t0), Verdict::Admit);
        assert_eq!(d.failed(ip(1), t0), Some(Duration::from_secs(60)));
        assert_eq!(
            d.check(ip(1), t0 + Duration::from_secs(10)),
            Verdict::Banned {
                remaining: Duration::from_secs(50)
            }
        );
        // Another address is not affected.
        assert_eq!(d.check(ip(2), t0), Verdict::Admit);
        // The ban ends; three more failures ban for twice as long.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(d.check(ip(1), t1), Verdict::Admit);
        d.failed(ip(1), t1);
        d.failed(ip(1), t1);
        assert_eq!(d.failed(ip(1), t1), Some(Duration::from_secs(120)));
    }

    #[test]
    fn failures_older_than_an_hour_and_a_success_reset_the_count() {
        let t0 = Instant::now();
        let mut d = Defender::new(2, Duration::from_secs(60));
        d.failed(ip(1), t0);
        assert_eq!(d.failed(ip(1), t0 + Duration::from_secs(3601)), None);
        d.succeeded(ip(1));
        assert_eq!(
            d.delay(ip(1), t0 + Duration::from_secs(3601)),
            Duration::ZERO
        );
        assert_eq!(d.failed(ip(1), t0 + Duration::from_secs(3602)), None);
    }

    #[test]
    fn the_delay_is_capped() {
        let t0 = Instant::now();
        let mut d = Defender::new(100, Duration::from_secs(60));
        for _ in 0..20 {
            d.failed(ip(1), t0);
        }
        assert_eq!(d.delay(ip(1), t0), MAX_DELAY);
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_sources() {
        let t0 = Instant::now();
        let mut d = Defender::new(5, Duration::from_secs(60));
        for i in 0..(MAX_TRACKED as u32 + 100) {
            d.failed(
                IpAddr::from(i.to_be_bytes()),
                t0 + Duration::from_micros(i as u64),
            );
        }
        assert_eq!(d.sources.len(), MAX_TRACKED);
    }
}

//! Penalties for source addresses that fail to log in, in the spirit of
//! OpenSSH's `PerSourcePenalties` and SFTPGo's defender: each connection
//! that ends without logging in counts against its address; the address's
//! rejections are answered ever more slowly, and after `ban_after` failures
//! within an hour it is banned, the ban doubling with each repeat (up to a
//! day). A successful login clears the count, not a running ban.
//!
//! One burst of failures (connections that all end within [`BURST`], such
//! as a flood timing out together) is one offence, and failures while the
//! address is already banned add nothing, so a burst cannot escalate a ban.
//! Exempt addresses (`ban_exempt`, suppliers' `allow_from`) are never
//! delayed or banned; the caller logs their failures instead.
//!
//! Pure: time is passed in, so the rules are tested without waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// Failures this close to the last counted one are the same offence.
/// (A login attempt takes at least the 300 ms rejection time, so attempts
/// made one after another are never one burst.)
pub const BURST: Duration = Duration::from_millis(250);

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
    /// When the last ban started: failures of its burst that end later add nothing.
    banned_at: Option<Instant>,
    bans: u32,
    last_seen: Option<Instant>,
}

#[derive(Debug)]
pub struct Defender {
    ban_after: u32,
    ban: Duration,
    exempt: Vec<IpNet>,
    sources: HashMap<IpAddr, Record>,
}

impl Defender {
    pub fn new(ban_after: u32, ban: Duration) -> Defender {
        Defender {
            ban_after: ban_after.max(1),
            ban,
            exempt: Vec::new(),
            sources: HashMap::new(),
        }
    }

    /// Applies new settings (config reload) without forgetting the records.
    pub fn configure(&mut self, ban_after: u32, ban: Duration, exempt: &[IpNet]) {
        self.ban_after = ban_after.max(1);
        self.ban = ban;
        if self.exempt != exempt {
            self.exempt = exempt.to_vec();
            // A newly exempt address loses a running ban at once.
            let exempt = &self.exempt;
            self.sources
                .retain(|a, _| !exempt.iter().any(|n| n.contains(a)));
        }
    }

    /// Never delayed or banned.
    pub fn is_exempt(&self, addr: IpAddr) -> bool {
        self.exempt.iter().any(|n| n.contains(&addr))
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
        if self.is_exempt(addr) {
            return Duration::ZERO;
        }
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
        if self.is_exempt(addr) {
            return None;
        }
        if let Some(r) = self.sources.get_mut(&addr) {
            r.last_seen = Some(now);
            let banned = r.banned_until.is_some_and(|until| until > now);
            let same_burst = r.failures.last().is_some_and(|t| now - *t < BURST)
                || r.banned_at.is_some_and(|t| now - t < BURST);
            if banned || same_burst {
                return None;
            }
        }
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
            r.banned_at = Some(now);
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
        let s = |n: u64| Duration::from_secs(n);
        let mut d = Defender::new(3, s(60));
        assert_eq!(d.delay(ip(1), t0), Duration::ZERO);
        assert_eq!(d.failed(ip(1), t0), None);
        assert_eq!(d.delay(ip(1), t0), Duration::from_millis(500));
        assert_eq!(d.failed(ip(1), t0 + s(2)), None);
        assert_eq!(d.delay(ip(1), t0 + s(2)), s(1));
        assert_eq!(d.check(ip(1), t0 + s(2)), Verdict::Admit);
        assert_eq!(d.failed(ip(1), t0 + s(4)), Some(s(60)));
        assert_eq!(
            d.check(ip(1), t0 + s(14)),
            Verdict::Banned { remaining: s(50) }
        );
        // Another address is not affected.
        assert_eq!(d.check(ip(2), t0), Verdict::Admit);
        // The ban ends; three more failures ban for twice as long.
        let t1 = t0 + s(65);
        assert_eq!(d.check(ip(1), t1), Verdict::Admit);
        d.failed(ip(1), t1);
        d.failed(ip(1), t1 + s(2));
        assert_eq!(d.failed(ip(1), t1 + s(4)), Some(s(120)));
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
        for i in 0..20 {
            d.failed(ip(1), t0 + Duration::from_secs(2 * i));
        }
        assert_eq!(d.delay(ip(1), t0 + Duration::from_secs(40)), MAX_DELAY);
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

    /// Regression: 70 connections from one address timing out within 11 ms
    /// escalated its ban six times (to 9,600 s). A burst is one offence.
    #[test]
    fn a_burst_of_failures_is_one_offence_and_cannot_escalate_a_ban() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Defender::new(3, Duration::from_secs(300));
        let bans: Vec<Duration> = (0..70)
            .filter_map(|i| d.failed(ip(1), t0 + ms(i * 11 / 70)))
            .collect();
        assert!(bans.is_empty(), "one burst is one failure: {bans:?}");
        // Three separate offences ban once, for the first length.
        d.failed(ip(1), t0 + ms(2_000));
        assert_eq!(
            d.failed(ip(1), t0 + ms(4_000)),
            Some(Duration::from_secs(300))
        );
        // The rest of that burst, and failures during the ban, add nothing.
        for i in 0..100 {
            assert_eq!(d.failed(ip(1), t0 + ms(4_000 + i * 1_000)), None);
        }
        assert_eq!(
            d.check(ip(1), t0 + ms(200_000)),
            Verdict::Banned {
                remaining: Duration::from_secs(104)
            }
        );
    }

    #[test]
    fn exempt_addresses_are_never_delayed_or_banned() {
        let t0 = Instant::now();
        let mut d = Defender::new(1, Duration::from_secs(60));
        assert_eq!(d.failed(ip(1), t0), Some(Duration::from_secs(60)));
        d.configure(
            1,
            Duration::from_secs(60),
            &["192.0.2.0/28".parse().unwrap()],
        );
        // Exempting the address lifts its running ban.
        assert_eq!(d.check(ip(1), t0), Verdict::Admit);
        for i in 0..50 {
            assert_eq!(d.failed(ip(1), t0 + Duration::from_secs(2 * i)), None);
        }
        assert_eq!(d.delay(ip(1), t0), Duration::ZERO);
        assert!(d.is_exempt(ip(15)));
        assert!(!d.is_exempt(ip(16)));
        assert_eq!(d.failed(ip(16), t0), Some(Duration::from_secs(60)));
    }
}

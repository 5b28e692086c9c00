//! The front door's bookkeeping of connections that have not logged in yet.
//!
//! A flood of idle connections must not lock legitimate suppliers out. So:
//! - one address may hold at most `per_address` of them (addresses exempt
//!   from bans, a supplier's own networks, are not held to this);
//! - when all `total` places are taken, the newcomer is still admitted and
//!   an older connection gives way: one that has sent nothing yet before
//!   one that has (a client sends its SSH identification at once), then one
//!   from an address whose connections have given way most often (a flood
//!   reconnects as fast as it is closed; a supplier's login does not come
//!   back), then one from the address holding the most places, then the
//!   oldest; exempt addresses give way last. A login that
//!   completes in milliseconds therefore never waits behind idle sockets,
//!   unlike OpenSSH's random early drop (`MaxStartups`), which turns some
//!   suppliers away under the same flood.
//!
//! Pure: time is passed in; each place carries a payload (the connection's
//! cancel handle) that the caller acts on.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Instant;

/// A connection's place among those not yet logged in.
pub type Place = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_address: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission<T> {
    /// Admitted; `evicted` is the payload of the connection that gave way.
    Admitted { place: Place, evicted: Option<T> },
    /// The address already holds its share of connections not logged in.
    PerAddressCap,
}

#[derive(Debug)]
struct Waiting<T> {
    addr: IpAddr,
    since: Instant,
    exempt: bool,
    payload: T,
}

#[derive(Debug)]
pub struct Gate<T> {
    next: Place,
    waiting: BTreeMap<Place, Waiting<T>>,
    per_address: HashMap<IpAddr, usize>,
    /// How often each address's connections gave way (forgotten in bulk
    /// when it grows past `GAVE_WAY_ADDRESSES`).
    gave_way: HashMap<IpAddr, u32>,
}

/// Addresses whose evictions are remembered at most; a larger flood starts
/// the count afresh.
const GAVE_WAY_ADDRESSES: usize = 65_536;

impl<T> Default for Gate<T> {
    fn default() -> Self {
        Gate {
            next: 0,
            waiting: BTreeMap::new(),
            per_address: HashMap::new(),
            gave_way: HashMap::new(),
        }
    }
}

impl<T> Gate<T> {
    /// Connections not logged in now.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// A new connection from `addr`.
    /// `spoke` tells whether a waiting connection has sent anything yet.
    pub fn admit(
        &mut self,
        addr: IpAddr,
        exempt: bool,
        now: Instant,
        caps: Caps,
        payload: T,
        spoke: impl Fn(&T) -> bool,
    ) -> Admission<T> {
        let held = self.per_address.get(&addr).copied().unwrap_or(0);
        if !exempt && held >= caps.per_address.max(1) {
            return Admission::PerAddressCap;
        }
        let evicted = if self.waiting.len() >= caps.total.max(1) {
            self.victim(spoke).and_then(|p| {
                let addr = self.waiting.get(&p)?.addr;
                if self.gave_way.len() >= GAVE_WAY_ADDRESSES {
                    self.gave_way.clear();
                }
                *self.gave_way.entry(addr).or_default() += 1;
                self.leave(p)
            })
        } else {
            None
        };
        self.next += 1;
        let place = self.next;
        self.waiting.insert(
            place,
            Waiting {
                addr,
                since: now,
                exempt,
                payload,
            },
        );
        *self.per_address.entry(addr).or_default() += 1;
        Admission::Admitted { place, evicted }
    }

    /// The connection logged in or ended: its place is free. Returns its
    /// payload, or `None` if it had already given way.
    pub fn leave(&mut self, place: Place) -> Option<T> {
        let w = self.waiting.remove(&place)?;
        if let Some(n) = self.per_address.get_mut(&w.addr) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&w.addr);
            }
        }
        Some(w.payload)
    }

    /// Who gives way: not exempt before exempt, silent before spoken, then
    /// the address that gave way most often, then the address holding the
    /// most places, then the oldest connection.
    fn victim(&self, spoke: impl Fn(&T) -> bool) -> Option<Place> {
        self.waiting
            .iter()
            .min_by_key(|(place, w)| {
                let held = self.per_address.get(&w.addr).copied().unwrap_or(0);
                let gave_way = self.gave_way.get(&w.addr).copied().unwrap_or(0);
                (
                    w.exempt,
                    spoke(&w.payload),
                    std::cmp::Reverse(gave_way),
                    std::cmp::Reverse(held),
                    w.since,
                    **place,
                )
            })
            .map(|(place, _)| *place)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    fn silent(_: &&str) -> bool {
        false
    }

    const CAPS: Caps = Caps {
        total: 3,
        per_address: 2,
    };

    fn place<T>(a: Admission<T>) -> (Place, Option<T>) {
        match a {
            Admission::Admitted { place, evicted } => (place, evicted),
            Admission::PerAddressCap => panic!("refused"),
        }
    }

    #[test]
    fn one_address_holds_at_most_its_share_unless_exempt() {
        let t = Instant::now();
        let mut g = Gate::default();
        place(g.admit(ip(1), false, t, CAPS, "a", silent));
        place(g.admit(ip(1), false, t, CAPS, "b", silent));
        assert_eq!(
            g.admit(ip(1), false, t, CAPS, "c", silent),
            Admission::PerAddressCap
        );
        // An exempt address (a supplier's network) is not held to it.
        let mut g = Gate::default();
        for p in ["a", "b", "c"] {
            place(g.admit(ip(1), true, t, CAPS, p, silent));
        }
        assert_eq!(g.len(), 3);
    }

    #[test]
    fn when_full_the_newcomer_gets_in_and_the_busiest_then_the_oldest_gives_way() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let mut g = Gate::default();
        place(g.admit(ip(1), false, t, CAPS, "1-old", silent));
        place(g.admit(ip(2), false, t + s, CAPS, "2-old", silent));
        place(g.admit(ip(2), false, t + 2 * s, CAPS, "2-new", silent));
        let (_, evicted) = place(g.admit(ip(3), false, t + 3 * s, CAPS, "3", silent));
        assert_eq!(evicted, Some("2-old"), "ip 2 holds the most places");
        let (_, evicted) = place(g.admit(ip(4), false, t + 4 * s, CAPS, "4", silent));
        assert_eq!(evicted, Some("2-new"), "ip 2 has given way before");
        let (_, evicted) = place(g.admit(ip(5), false, t + 5 * s, CAPS, "5", silent));
        assert_eq!(evicted, Some("1-old"), "then the oldest");
        assert_eq!(g.len(), 3);
    }

    /// Regression: under a flood of reconnecting sockets a supplier's
    /// connection, not yet read from, was once the oldest silent one and gave
    /// way ("Connection reset by peer" before the SSH banner).
    #[test]
    fn a_flood_that_keeps_coming_back_gives_way_before_a_newcomer_address() {
        let t = Instant::now();
        let ms = Duration::from_millis(1);
        let mut g = Gate::default();
        // A flood from five addresses churns: each newcomer evicts one,
        // which comes back (or is refused while its address holds two).
        let flood = |g: &mut Gate<&'static str>, i: u32| -> Option<&'static str> {
            let from = ip(10 + (i % 5) as u8);
            match g.admit(from, false, t + ms * i, CAPS, "flood", silent) {
                Admission::Admitted { evicted, .. } => evicted,
                Admission::PerAddressCap => None,
            }
        };
        for i in 0..30 {
            flood(&mut g, i);
        }
        // The supplier arrives; the flood goes on, and it is soon the oldest.
        place(g.admit(ip(1), false, t + ms * 30, CAPS, "supplier", silent));
        let mut evictions = 0;
        for i in 31..61 {
            let evicted = flood(&mut g, i);
            assert_ne!(evicted, Some("supplier"), "round {i}");
            evictions += usize::from(evicted.is_some());
        }
        assert!(evictions >= 10, "the flood kept evicting: {evictions}");
        assert!(g.waiting.values().any(|w| w.payload == "supplier"));
    }

    #[test]
    fn exempt_connections_give_way_last() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let mut g = Gate::default();
        place(g.admit(ip(1), true, t, CAPS, "supplier", silent));
        place(g.admit(ip(2), false, t + s, CAPS, "x", silent));
        place(g.admit(ip(3), false, t + 2 * s, CAPS, "y", silent));
        let (_, evicted) = place(g.admit(ip(4), false, t + 3 * s, CAPS, "z", silent));
        assert_eq!(evicted, Some("x"));
    }

    #[test]
    fn leaving_frees_the_place_and_the_address_count_once() {
        let t = Instant::now();
        let mut g = Gate::default();
        let (a, _) = place(g.admit(ip(1), false, t, CAPS, "a", silent));
        let (_, _) = place(g.admit(ip(1), false, t, CAPS, "b", silent));
        assert_eq!(g.leave(a), Some("a"));
        assert_eq!(g.leave(a), None, "a place is freed once");
        place(g.admit(ip(1), false, t, CAPS, "c", silent));
        assert_eq!(g.len(), 2);
        assert_eq!(
            g.admit(ip(1), false, t, CAPS, "d", silent),
            Admission::PerAddressCap
        );
    }

    #[test]
    fn a_connection_that_spoke_gives_way_after_silent_ones() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let spoke = |p: &&str| p.starts_with("client");
        let mut g = Gate::default();
        g.admit(ip(1), false, t, CAPS, "client", spoke);
        g.admit(ip(2), false, t + s, CAPS, "idle-1", spoke);
        g.admit(ip(3), false, t + 2 * s, CAPS, "idle-2", spoke);
        let (_, evicted) = place(g.admit(ip(4), false, t + 3 * s, CAPS, "idle-3", spoke));
        assert_eq!(evicted, Some("idle-1"), "the older client stays");
    }
}

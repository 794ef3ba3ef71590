//! Failed-login delays: slow password guessing down without ever locking a device out.
//!
//! There is no lockout. Each attempt waits, before its credentials are checked, for the larger of
//! two delays (see [`DelayRule::delay`]):
//! - per account: after `free` recent failures of that username, `base * 2^(failures - free)`,
//!   capped at the account maximum;
//! - per source address: the same shape with a higher `free` count (thousands of CPEs can share
//!   one carrier-NAT address) and its own maximum. IPv6 addresses count per /64 (what one host
//!   or one customer usually gets), IPv4 and IPv4-mapped addresses per address.
//!
//! The wait is a timer on the attempt's own task, so the real device, using the right password,
//! waits at most the larger maximum and then gets in. Failures are forgotten after a quiet
//! `window`; a success clears the account's record (not the address's: an address that sends
//! both good and bad logins is still an address that sends bad ones).
//!
//! The tables hold no usernames: keys are 64-bit SipHash values under a per-process random key
//! (std's `RandomState`), so an 8 KB name costs the same as a short one and colliding on purpose
//! needs the key. A collision merely shares a delay. Memory is bounded by two generations per
//! table (see [`FailureTable`]); forgetting is O(1) (a generation is dropped whole) and nothing on
//! the failure path scans the table.

use std::collections::hash_map::{HashMap, RandomState};
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Records per generation of one table. 57,344 is 7/8 of 65,536: a std `HashMap` holds that many
/// in 65,536 buckets without growing. A record is 16 bytes plus one control byte, so one
/// generation is about 1.1 MB, and the two tables (accounts, addresses) with two generations each
/// stay under 4.5 MB however many names or addresses an attacker tries.
pub const GENERATION_CAPACITY: usize = 57_344;

/// The delay shape of one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayRule {
    /// Recent failures that cost nothing.
    pub free: u32,
    /// Delay once `free` failures are reached; doubles with every further failure.
    pub base: Duration,
    /// The delay never exceeds this.
    pub max: Duration,
}

impl DelayRule {
    /// The wait before an attempt when `failures` recent failures are on record:
    /// zero below `free`, else `min(base * 2^(failures - free), max)`.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures < self.free {
            return Duration::ZERO;
        }
        let doublings = (failures - self.free).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// One failure record: 16 bytes with its key.
#[derive(Clone, Copy, Debug)]
struct Record {
    /// Seconds since the table's epoch of the latest failure.
    last: u32,
    failures: u32,
}

struct Generations {
    current: HashMap<u64, Record, Identity>,
    previous: HashMap<u64, Record, Identity>,
    /// Seconds since the epoch when `current` was started.
    started: u32,
}

/// Failure counts keyed by a 64-bit hash, in two generations: records go into `current`; when
/// `current` reaches [`GENERATION_CAPACITY`] records or is older than the window, it becomes
/// `previous` and the old `previous` is dropped. Lookups look in both and ignore records older
/// than the window. So a record lives at least one window unless the table is flooded, and then
/// at least until `GENERATION_CAPACITY` other keys have failed; a key that keeps failing is
/// moved into `current` on each failure, so flooding does not clear an account under attack
/// faster than its own failures refresh it.
pub struct FailureTable {
    rule: DelayRule,
    window_secs: u32,
    capacity: usize,
    epoch: Instant,
    generations: Mutex<Generations>,
}

impl FailureTable {
    pub fn new(rule: DelayRule, window: Duration, capacity: usize) -> FailureTable {
        let window_secs = u32::try_from(window.as_secs()).unwrap_or(u32::MAX).max(1);
        FailureTable {
            rule,
            window_secs,
            capacity: capacity.max(1),
            epoch: Instant::now(),
            generations: Mutex::new(Generations {
                current: HashMap::with_hasher(Identity),
                previous: HashMap::with_hasher(Identity),
                started: 0,
            }),
        }
    }

    fn secs(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A panic while holding this lock cannot leave a record half-written: recover.
        self.generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Recent failures on record for `key`.
    pub fn failures(&self, key: u64, now: Instant) -> u32 {
        let now = self.secs(now);
        let g = self.lock();
        let record = g.current.get(&key).or_else(|| g.previous.get(&key));
        match record {
            Some(r) if now.saturating_sub(r.last) < self.window_secs => r.failures,
            _ => 0,
        }
    }

    /// The wait an attempt for `key` gets now.
    pub fn delay(&self, key: u64, now: Instant) -> Duration {
        self.rule.delay(self.failures(key, now))
    }

    /// Count a failure for `key`. Returns true when a generation was dropped.
    pub fn record_failure(&self, key: u64, now: Instant) -> bool {
        let now = self.secs(now);
        let mut g = self.lock();
        let mut rotated = false;
        if g.current.len() >= self.capacity || now.saturating_sub(g.started) >= self.window_secs {
            // Dropping a map of plain-data records frees its one allocation: O(1).
            g.previous = std::mem::replace(&mut g.current, HashMap::with_hasher(Identity));
            g.started = now;
            rotated = true;
        }
        let old = g
            .current
            .get(&key)
            .or_else(|| g.previous.get(&key))
            .copied()
            .filter(|r| now.saturating_sub(r.last) < self.window_secs);
        let failures = old.map_or(0, |r| r.failures).saturating_add(1);
        g.current.insert(
            key,
            Record {
                last: now,
                failures,
            },
        );
        rotated
    }

    /// Forget `key` (a successful login).
    pub fn clear(&self, key: u64) {
        let mut g = self.lock();
        g.current.remove(&key);
        g.previous.remove(&key);
    }

    /// Records held now (both generations), for tests and statistics.
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The keys are SipHash outputs already: hashing them again would only cost time.
#[derive(Clone, Copy, Default)]
struct Identity;

impl BuildHasher for Identity {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Settings of the login throttle (from `[limits]`).
#[derive(Clone, Copy, Debug)]
pub struct ThrottleSettings {
    pub account: DelayRule,
    pub address: DelayRule,
    pub window: Duration,
}

/// The delay for one attempt and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait {
    pub delay: Duration,
    /// Keys to record a failure or success under.
    pub account_key: u64,
    pub address_key: u64,
}

/// Per-account and per-address failure tables.
pub struct LoginThrottle {
    keys: RandomState,
    accounts: FailureTable,
    addresses: FailureTable,
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings) -> LoginThrottle {
        LoginThrottle::with_capacity(settings, GENERATION_CAPACITY)
    }

    pub fn with_capacity(settings: ThrottleSettings, capacity: usize) -> LoginThrottle {
        LoginThrottle {
            keys: RandomState::new(),
            accounts: FailureTable::new(settings.account, settings.window, capacity),
            addresses: FailureTable::new(settings.address, settings.window, capacity),
        }
    }

    /// Keyed hash of a username, ASCII case folded (usernames are case-insensitive), without
    /// copying it.
    fn account_key(&self, username: &str) -> u64 {
        let mut h = self.keys.build_hasher();
        h.write_u8(b'u');
        for b in username.bytes() {
            h.write_u8(b.to_ascii_lowercase());
        }
        h.finish()
    }

    fn address_key(&self, ip: IpAddr) -> u64 {
        let mut h = self.keys.build_hasher();
        match ip {
            IpAddr::V4(v4) => {
                h.write_u8(4);
                h.write(&v4.octets());
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => {
                    h.write_u8(4);
                    h.write(&v4.octets());
                }
                None => {
                    h.write_u8(6);
                    h.write(&v6.octets()[..8]);
                }
            },
        }
        h.finish()
    }

    /// How long an attempt for `username` from `ip` waits before its credentials are checked.
    pub fn wait(&self, username: &str, ip: IpAddr, now: Instant) -> Wait {
        let account_key = self.account_key(username);
        let address_key = self.address_key(ip);
        let delay = self
            .accounts
            .delay(account_key, now)
            .max(self.addresses.delay(address_key, now));
        Wait {
            delay,
            account_key,
            address_key,
        }
    }

    /// Count a failed attempt. Returns the number of generations dropped (0..=2).
    pub fn record_failure(&self, wait: &Wait, now: Instant) -> u64 {
        u64::from(self.accounts.record_failure(wait.account_key, now))
            + u64::from(self.addresses.record_failure(wait.address_key, now))
    }

    /// A successful login clears the account's record.
    pub fn record_success(&self, wait: &Wait) {
        self.accounts.clear(wait.account_key);
    }

    /// Records held (accounts, addresses).
    pub fn sizes(&self) -> (usize, usize) {
        (self.accounts.len(), self.addresses.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            account: DelayRule {
                free: 3,
                base: MS(250),
                max: MS(2000),
            },
            address: DelayRule {
                free: 20,
                base: MS(250),
                max: MS(8000),
            },
            window: Duration::from_secs(300),
        }
    }

    #[test]
    fn delay_rule_doubles_from_free_and_caps() {
        let rule = settings().account;
        let delays: Vec<u64> = (0..9).map(|f| rule.delay(f).as_millis() as u64).collect();
        assert_eq!(delays, [0, 0, 0, 250, 500, 1000, 2000, 2000, 2000]);
        assert_eq!(rule.delay(u32::MAX), MS(2000));
        let zero_free = DelayRule {
            free: 0,
            base: MS(1),
            max: Duration::MAX,
        };
        assert_eq!(zero_free.delay(0), MS(1));
        // 2^31 ms overflows nothing: the shift is capped and the product checked.
        assert_eq!(zero_free.delay(40), MS(1u64 << 31));
        let off = DelayRule {
            free: 0,
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(off.delay(1000), Duration::ZERO);
    }

    #[test]
    fn account_and_address_delays_combine_and_success_clears_the_account() {
        let t = LoginThrottle::new(settings());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other_ip: IpAddr = "198.51.100.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..4 {
            let w = t.wait("cpe-x", ip, now);
            t.record_failure(&w, now);
        }
        assert_eq!(t.wait("cpe-x", ip, now).delay, MS(500));
        // Case-insensitive, and the account delay follows the name to any address.
        assert_eq!(t.wait("CPE-X", other_ip, now).delay, MS(500));
        assert_eq!(t.wait("cpe-y", ip, now).delay, Duration::ZERO);
        // The address gets slow only after its own free count.
        for i in 0..18 {
            let w = t.wait(&format!("n{i}"), ip, now);
            t.record_failure(&w, now);
        }
        assert_eq!(t.wait("cpe-y", ip, now).delay, MS(1000));
        assert_eq!(t.wait("cpe-y", other_ip, now).delay, Duration::ZERO);
        let w = t.wait("cpe-x", ip, now);
        t.record_success(&w);
        assert_eq!(t.wait("cpe-x", other_ip, now).delay, Duration::ZERO);
        assert_eq!(t.wait("cpe-x", ip, now).delay, MS(1000), "address kept");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let t = LoginThrottle::new(settings());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(t.address_key(a), t.address_key(b));
        assert_ne!(t.address_key(a), t.address_key(c));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(t.address_key(v4), t.address_key(mapped));
    }

    #[test]
    fn failures_are_forgotten_after_the_window() {
        let table = FailureTable::new(settings().account, Duration::from_secs(300), 100);
        let t0 = table.epoch;
        for _ in 0..5 {
            table.record_failure(1, t0);
        }
        assert_eq!(table.failures(1, t0 + Duration::from_secs(299)), 5);
        assert_eq!(table.failures(1, t0 + Duration::from_secs(300)), 0);
        // A failure after the window starts a new count.
        table.record_failure(1, t0 + Duration::from_secs(400));
        assert_eq!(table.failures(1, t0 + Duration::from_secs(400)), 1);
    }

    #[test]
    fn table_is_bounded_and_keeps_keys_under_attack() {
        const CAP: usize = 1000;
        let table = FailureTable::new(settings().account, Duration::from_secs(300), CAP);
        let now = table.epoch;
        let mut rotations = 0;
        for key in 0..50_000u64 {
            rotations += u32::from(table.record_failure(key + 100, now));
            // The attacked account fails every 500 other failures: it is never forgotten.
            if key % 500 == 0 {
                table.record_failure(7, now);
            }
            assert!(table.len() <= 2 * CAP, "{}", table.len());
        }
        assert!(rotations >= 50, "{rotations}");
        assert_eq!(table.failures(7, now), 100);
        // Keys not refreshed for two generations' worth of other failures are gone.
        assert_eq!(table.failures(100, now), 0);
        // The last ones are still there.
        assert_eq!(table.failures(50_099, now), 1);
    }

    #[test]
    fn generations_rotate_when_the_window_passes() {
        let table = FailureTable::new(settings().account, Duration::from_secs(10), 1000);
        let t0 = table.epoch;
        table.record_failure(1, t0);
        table.record_failure(2, t0 + Duration::from_secs(11));
        assert_eq!(table.len(), 2, "first rotation keeps the old generation");
        table.record_failure(3, t0 + Duration::from_secs(22));
        assert_eq!(table.len(), 2, "second rotation drops key 1");
        assert_eq!(table.failures(2, t0 + Duration::from_secs(15)), 1);
    }
}

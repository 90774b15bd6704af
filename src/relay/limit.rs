//! Rate limits per client address with a global ceiling, and the client
//! address itself: the peer's, or behind a trusted proxy, the one it forwarded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

/// A network such as `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?} is not an address or network (e.g. 10.0.0.0/8, 127.0.0.1, ::1/128)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().map_err(|_| err())?, Some(p.parse::<u8>().map_err(|_| err())?)),
            None => (s.parse::<IpAddr>().map_err(|_| err())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err());
        }
        Ok(Self { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => (u128::from(u32::from(v4)) << 96, 32),
                    None => (u128::from(v6), 128),
                },
            }
        };
        let ((net, net_len), (ip, ip_len)) = (bits(self.addr), bits(ip));
        if net_len != ip_len {
            return false;
        }
        // Both sit in the top bits of a u128: compare the top `prefix` of them.
        let Some(mask) = u128::MAX.checked_shl(128 - u32::from(self.prefix)) else { return true };
        net & mask == ip & mask
    }
}

/// Proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct Proxies(pub Vec<Cidr>);

impl Proxies {
    /// Whether `ip` is one of these proxies.
    pub fn trusted(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy;
    /// then the nearest address in `X-Forwarded-For` that is not one.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted(peer) {
            return peer;
        }
        let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
        let hops: Vec<IpAddr> =
            forwarded.iter().flat_map(|v| v.split(',')).filter_map(|h| h.trim().parse::<IpAddr>().ok()).collect();
        hops.into_iter().rev().find(|ip| !self.trusted(*ip)).unwrap_or(peer)
    }
}

/// A token bucket: `capacity` requests at once, refilled over a minute.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Self {
        Self { tokens: capacity, at: now }
    }

    /// Takes `n` tokens spent elsewhere (on another relay), down to none.
    fn charge(&mut self, capacity: f64, n: u32, now: Instant) {
        let per_sec = capacity / 60.0;
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * per_sec).min(capacity);
        self.at = now;
        self.tokens = (self.tokens - f64::from(n)).max(0.0);
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, capacity: f64, now: Instant) -> Result<(), Duration> {
        let per_sec = capacity / 60.0;
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * per_sec).min(capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_sec))
        }
    }
}

/// Addresses tracked before idle ones are forgotten.
const MAX_TRACKED: usize = 100_000;

/// The delay before answering the first request that comes back before its
/// `Retry-After`; each further early one doubles it, up to [`PENALTY_MAX`].
const PENALTY_BASE: Duration = Duration::from_millis(25);

/// The longest an answer to an address that ignores `Retry-After` waits.
const PENALTY_MAX: Duration = Duration::from_secs(2);

/// Addresses under a penalty tracked at once; past it (once the calm ones
/// are forgotten) a new offender gets plain 429s, undelayed.
const MAX_PENALISED: usize = 10_000;

/// Requests per minute per client, with a ceiling for all clients together.
#[derive(Debug)]
pub struct RateLimiter {
    per_ip: f64,
    global: f64,
    /// Budgets and penalties, behind one lock held only to count.
    table: Mutex<Table>,
    /// How many addresses may be under a penalty at once.
    max_penalised: usize,
    /// Requests let through since the other relays were last told, per client;
    /// counted only once [`RateLimiter::share`] is called (in a cluster).
    counts: Counts,
}

/// What the limiter remembers.
#[derive(Debug)]
struct Table {
    /// Each client's budget.
    clients: HashMap<IpAddr, Bucket>,
    /// All clients' budget together.
    global: Bucket,
    /// Clients refused lately: when they were told to come back, and how
    /// often they came earlier.
    penalties: HashMap<IpAddr, Penalty>,
}

/// A client that was refused.
#[derive(Debug, Clone, Copy)]
struct Penalty {
    /// When its last answer's `Retry-After` ends.
    back_at: Instant,
    /// Requests it sent before that, in a row: the delay grows with them.
    strikes: u32,
}

/// A request the limiter does not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Seconds for `Retry-After`.
    pub retry_after: u64,
    /// How long to wait before answering: zero, unless the client came back
    /// before an earlier `Retry-After` ended. Waiting costs the relay a
    /// sleeping task; answering at once would cost it the next request.
    pub delay: Duration,
}

/// Events per client noted for the other relays of a cluster.
#[derive(Debug, Default)]
struct Counts {
    /// Whether to note them at all (only relays in a cluster do).
    on: AtomicBool,
    /// Per client network, since the last [`Counts::take`].
    by_client: Mutex<HashMap<IpAddr, u32>>,
}

impl Counts {
    fn note(&self, key: IpAddr) {
        if self.on.load(Ordering::Relaxed) {
            *self.by_client.lock().unwrap().entry(key).or_default() += 1;
        }
    }

    fn take(&self) -> Vec<(IpAddr, u32)> {
        std::mem::take(&mut *self.by_client.lock().unwrap()).into_iter().collect()
    }
}

impl Table {
    /// Notes a refusal of `key` telling it to wait `retry` seconds; the
    /// delay before the answer: none for a client that waited as told last
    /// time, growing for one that keeps coming back early.
    fn penalise(&mut self, key: IpAddr, now: Instant, retry: u64, max: usize) -> Duration {
        if !self.penalties.contains_key(&key) && self.penalties.len() >= max {
            self.penalties.retain(|_, p| p.back_at > now);
            if self.penalties.len() >= max {
                return Duration::ZERO;
            }
        }
        let penalty = self.penalties.entry(key).or_insert(Penalty { back_at: now, strikes: 0 });
        penalty.strikes = if now >= penalty.back_at { 0 } else { penalty.strikes.saturating_add(1) };
        let delay = match penalty.strikes {
            0 => Duration::ZERO,
            n => PENALTY_BASE.saturating_mul(1 << (n - 1).min(16)).min(PENALTY_MAX),
        };
        penalty.back_at = penalty.back_at.max(now + delay + Duration::from_secs(retry));
        delay
    }

    /// A request from `key` was let through: a penalty ends once the client
    /// comes back no earlier than it was told.
    fn forgive(&mut self, key: IpAddr, now: Instant) {
        if self.penalties.get(&key).is_some_and(|p| now >= p.back_at) {
            self.penalties.remove(&key);
        }
    }
}

impl RateLimiter {
    /// `per_ip` requests a minute per client (0: no limit); the ceiling is 50 times that.
    pub fn new(per_ip: u32) -> Self {
        let per_ip = f64::from(per_ip);
        let global = per_ip * 50.0;
        let table =
            Table { clients: HashMap::new(), global: Bucket::full(global, Instant::now()), penalties: HashMap::new() };
        Self { per_ip, global, table: Mutex::new(table), max_penalised: MAX_PENALISED, counts: Counts::default() }
    }

    /// Notes the requests let through from now on, for [`RateLimiter::take_counts`].
    pub fn share(&self) {
        self.counts.on.store(true, Ordering::Relaxed);
    }

    /// The requests let through per client since the last call, to tell the other relays.
    pub fn take_counts(&self) -> Vec<(IpAddr, u32)> {
        self.counts.take()
    }

    /// Counts `n` requests from `ip` that another relay let through against this relay's budgets.
    pub fn charge(&self, ip: IpAddr, n: u32) {
        if self.per_ip == 0.0 {
            return;
        }
        let now = Instant::now();
        let mut table = self.table.lock().unwrap();
        let Table { clients, global, .. } = &mut *table;
        if clients.len() < MAX_TRACKED || clients.contains_key(&network(ip)) {
            clients.entry(network(ip)).or_insert_with(|| Bucket::full(self.per_ip, now)).charge(self.per_ip, n, now);
        }
        global.charge(self.global, n, now);
    }

    /// Whether a request from `ip` would be refused now, counting nothing:
    /// shows what a relay has heard from the others of a cluster, which it
    /// does on its own time (tests wait on it).
    pub fn exhausted(&self, ip: IpAddr) -> bool {
        if self.per_ip == 0.0 {
            return false;
        }
        let table = self.table.lock().unwrap();
        let Some(bucket) = table.clients.get(&network(ip)) else { return false };
        let refilled = bucket.tokens + bucket.at.elapsed().as_secs_f64() * self.per_ip / 60.0;
        refilled < 1.0
    }

    /// Lets a request from `ip` through, or says when to retry and how long
    /// to hold the answer.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        if self.per_ip == 0.0 {
            return Ok(());
        }
        let key = network(ip);
        let mut table = self.table.lock().unwrap();
        let Table { clients, global, .. } = &mut *table;
        if clients.len() >= MAX_TRACKED {
            // Forget clients whose buckets have refilled: they lose nothing.
            let per_ip = self.per_ip;
            clients.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_ip / 60.0 < per_ip);
        }
        let bucket = clients.entry(key).or_insert_with(|| Bucket::full(self.per_ip, now));
        let taken = bucket.take(self.per_ip, now).and_then(|()| global.take(self.global, now));
        match taken {
            Ok(()) => {
                table.forgive(key, now);
                drop(table);
                self.counts.note(key);
                Ok(())
            }
            Err(wait) => {
                let retry_after = wait.as_secs().max(1) + u64::from(wait.subsec_nanos() > 0);
                let delay = table.penalise(key, now, retry_after, self.max_penalised);
                Err(Refused { retry_after, delay })
            }
        }
    }
}

/// Counts one kind of event (agent registrations) per client per UTC day.
#[derive(Debug)]
pub struct DailyCap {
    max: u32,
    /// The day (days since the epoch) being counted, and the counts in it.
    counts: Mutex<(i64, HashMap<IpAddr, u32>)>,
    /// Events counted since the other relays were last told (in a cluster).
    shared: Counts,
}

impl DailyCap {
    /// At most `max` events a day per client (0: no cap).
    pub fn new(max: u32) -> Self {
        Self { max, counts: Mutex::default(), shared: Counts::default() }
    }

    /// Notes the events counted from now on, for [`DailyCap::take_counts`].
    pub fn share(&self) {
        self.shared.on.store(true, Ordering::Relaxed);
    }

    /// The events counted per client since the last call, to tell the other relays.
    pub fn take_counts(&self) -> Vec<(IpAddr, u32)> {
        self.shared.take()
    }

    /// Counts `n` events from `ip` that another relay counted at `now_ms`.
    pub fn charge(&self, ip: IpAddr, n: u32, now_ms: i64) {
        let day = now_ms.div_euclid(86_400_000);
        let mut guard = self.counts.lock().unwrap();
        let (counted_day, counts) = &mut *guard;
        if *counted_day != day {
            *counted_day = day;
            counts.clear();
        }
        if counts.len() < MAX_TRACKED {
            let count = counts.entry(network(ip)).or_default();
            *count = count.saturating_add(n);
        }
    }

    /// The cap per client.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Counts one event from `ip` at `now_ms`; false when it is over the cap.
    pub fn take(&self, ip: IpAddr, now_ms: i64) -> bool {
        if self.max == 0 {
            return true;
        }
        let day = now_ms.div_euclid(86_400_000);
        let mut guard = self.counts.lock().unwrap();
        let (counted_day, counts) = &mut *guard;
        if *counted_day != day || counts.len() >= MAX_TRACKED {
            *counted_day = day;
            counts.clear();
        }
        let n = counts.entry(network(ip)).or_default();
        if *n >= self.max {
            return false;
        }
        *n += 1;
        self.shared.note(network(ip));
        true
    }
}

/// The unit a client is counted by: its IPv4 address, or its IPv6 /64.
pub fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked")),
        v4 => v4,
    }
}

/// Answers 429 (with `Retry-After`) to a client past its budget, and closes
/// its connection: a client that keeps sending pays a new handshake each
/// time. One that comes back before its `Retry-After` ends is answered after
/// a delay that grows while it does, so ignoring it gets fewer answers, not more.
pub async fn middleware(
    axum::extract::State(state): axum::extract::State<super::AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ip = state.config.proxies.client_ip(peer.ip(), request.headers());
    let refused = match state.limiter.check(ip) {
        Ok(()) => return next.run(request).await,
        Err(refused) => refused,
    };
    state.metrics.rate_limited();
    drop(request);
    if !refused.delay.is_zero() {
        tokio::time::sleep(refused.delay).await;
    }
    let secs = refused.retry_after;
    let mut err = super::error::ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        super::error::Reason::RateLimited,
        format!(
            "Too many requests from this address; retry in {secs} s. Requests sent sooner are answered more and more slowly."
        ),
    );
    err.retry_after = Some(secs);
    let mut response = err.into_response();
    response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(!net.contains(ip("::1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        assert!(one.contains(ip("::ffff:127.0.0.1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!("10.0.0.0/33".parse::<Cidr>().unwrap_err().contains("not an address or network"));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "198.51.100.9, 203.0.113.7, 10.0.0.2".parse().unwrap());
        let none = Proxies::default();
        assert_eq!(none.client_ip(ip("10.0.0.1"), &headers), ip("10.0.0.1"));
        let proxies = Proxies(vec!["10.0.0.0/8".parse().unwrap()]);
        // The nearest untrusted hop: the client the proxies saw, not what the client claimed.
        assert_eq!(proxies.client_ip(ip("10.0.0.1"), &headers), ip("203.0.113.7"));
        assert_eq!(proxies.client_ip(ip("192.0.2.1"), &headers), ip("192.0.2.1"));
        assert_eq!(proxies.client_ip(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
    }

    #[test]
    fn a_client_past_its_budget_is_told_when_to_retry() {
        let limiter = RateLimiter::new(60);
        for _ in 0..60 {
            limiter.check(ip("192.0.2.1")).unwrap();
        }
        let retry = limiter.check(ip("192.0.2.1")).unwrap_err().retry_after;
        assert!((1..=2).contains(&retry), "{retry}");
        limiter.check(ip("192.0.2.2")).expect("another client has its own budget");
        // One IPv6 /64 counts as one client.
        for _ in 0..60 {
            limiter.check(ip("2001:db8::1")).unwrap();
        }
        assert!(limiter.check(ip("2001:db8::ffff")).is_err());
        assert!(RateLimiter::new(0).check(ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn requests_let_through_elsewhere_count_here() {
        let here = RateLimiter::new(60);
        let there = RateLimiter::new(60);
        there.share();
        for _ in 0..59 {
            there.check(ip("192.0.2.1")).unwrap();
        }
        for (client, n) in there.take_counts() {
            here.charge(client, n);
        }
        assert!(there.take_counts().is_empty(), "counts are told once");
        here.check(ip("192.0.2.1")).expect("one request left");
        assert!(here.check(ip("192.0.2.1")).is_err());
        let cap = DailyCap::new(2);
        cap.charge(ip("192.0.2.1"), 2, 0);
        assert!(!cap.take(ip("192.0.2.1"), 1), "registrations elsewhere count against the day's cap");
    }

    /// Drains `ip`'s budget at `now`: the refusal that says it is spent.
    fn drain(limiter: &RateLimiter, ip: IpAddr, now: Instant) -> Refused {
        loop {
            if let Err(refused) = limiter.check_at(ip, now) {
                return refused;
            }
        }
    }

    #[test]
    fn a_client_that_ignores_retry_after_waits_longer_for_each_answer() {
        let limiter = RateLimiter::new(60);
        let (flood, other) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let now = Instant::now();
        assert_eq!(drain(&limiter, flood, now).delay, Duration::ZERO, "the first refusal comes at once");
        // Each early retry waits more, up to the most.
        let delays: Vec<Duration> = (0..10).map(|_| limiter.check_at(flood, now).unwrap_err().delay).collect();
        assert_eq!(delays[0], PENALTY_BASE);
        assert!(delays.windows(2).all(|w| w[0] < w[1] || w[1] == PENALTY_MAX), "{delays:?}");
        assert_eq!(delays[9], PENALTY_MAX);
        // Another address: its own budget, answered at once.
        assert_eq!(limiter.check_at(other, now), Ok(()));
        assert_eq!(drain(&limiter, other, now).delay, Duration::ZERO);
        assert_eq!(limiter.check_at(other, now).unwrap_err().delay, PENALTY_BASE);
    }

    #[test]
    fn the_penalty_ends_when_the_client_waits_as_told() {
        let limiter = RateLimiter::new(60);
        let flood = ip("192.0.2.1");
        let now = Instant::now();
        drain(&limiter, flood, now);
        let refused = (0..5).map(|_| limiter.check_at(flood, now).unwrap_err()).last().unwrap();
        assert!(refused.delay > Duration::ZERO);
        // Waited out the delay and its Retry-After: let through, and its next refusal is not delayed.
        let later = now + refused.delay + Duration::from_secs(refused.retry_after);
        assert_eq!(limiter.check_at(flood, later), Ok(()));
        assert_eq!(drain(&limiter, flood, later).delay, Duration::ZERO);
    }

    #[test]
    fn a_request_let_through_early_does_not_end_the_penalty() {
        let limiter = RateLimiter::new(60);
        let flood = ip("192.0.2.1");
        let now = Instant::now();
        drain(&limiter, flood, now);
        let early = limiter.check_at(flood, now).unwrap_err();
        // A token came back before its Retry-After ended: spent, and the next early one waits longer.
        let refilled = now + Duration::from_millis(1010);
        assert_eq!(limiter.check_at(flood, refilled), Ok(()));
        assert!(limiter.check_at(flood, refilled).unwrap_err().delay > early.delay);
    }

    #[test]
    fn the_penalty_table_is_bounded() {
        let mut limiter = RateLimiter::new(1);
        limiter.max_penalised = 3;
        let now = Instant::now();
        let addrs: Vec<IpAddr> = (1..=4).map(|i| ip(&format!("192.0.2.{i}"))).collect();
        for &a in &addrs {
            drain(&limiter, a, now);
            limiter.check_at(a, now).unwrap_err();
        }
        assert_eq!(limiter.table.lock().unwrap().penalties.len(), 3);
        // The fourth got plain refusals; once the others calm down, it takes a place.
        assert_eq!(limiter.check_at(addrs[3], now).unwrap_err().delay, Duration::ZERO);
        let calm = now + Duration::from_secs(3600);
        drain(&limiter, addrs[3], calm);
        assert_eq!(limiter.table.lock().unwrap().penalties.len(), 1);
    }
}

//! What each request asks for: which key (uniform or Zipf over `keys`), whether it
//! reads or writes, and the value a write carries.
//!
//! Keys are substituted for `{key}` in the URL path (`/kv/{key}` becomes `/kv/k17`);
//! a path without `{key}` always asks for the same URL. Writes are `PUT`s with a body
//! of `value_size` bytes, as the KV API takes them.

use bytes::Bytes;
use http::{Method, Request};

/// Draws key indices, uniform or Zipf-distributed.
#[derive(Debug, Clone)]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// P(rank k) proportional to 1/k^s: the cumulative distribution, one entry per key.
    Zipf(std::sync::Arc<Vec<f64>>),
}

impl KeyDistribution {
    /// Zipf with exponent `s` over `keys` keys (`s` = 0 is uniform).
    pub fn zipf(keys: u64, s: f64) -> Self {
        if s == 0.0 {
            return KeyDistribution::Uniform;
        }
        let mut cdf = Vec::with_capacity(keys as usize);
        let mut total = 0.0;
        for k in 1..=keys {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        KeyDistribution::Zipf(std::sync::Arc::new(cdf))
    }

    /// A key index in `0..keys` from a uniform `u` in [0, 1).
    pub fn pick(&self, keys: u64, u: f64) -> u64 {
        match self {
            KeyDistribution::Uniform => ((u * keys as f64) as u64).min(keys - 1),
            KeyDistribution::Zipf(cdf) => cdf.partition_point(|&c| c < u).min(cdf.len() - 1) as u64,
        }
    }
}

/// The mix of requests a run sends.
#[derive(Debug, Clone)]
pub struct Workload {
    /// URL path, with `{key}` where the key goes.
    pub path: String,
    /// How many distinct keys.
    pub keys: u64,
    /// How keys are drawn.
    pub distribution: KeyDistribution,
    /// Fraction of requests that are writes (PUT), 0 to 1.
    pub writes: f64,
    /// Body of a write.
    pub value: Bytes,
    /// Keys in order (0, 1, 2, ... shared by every connection, wrapping at `keys`)
    /// instead of drawn: a fill that writes every key once.
    pub sequential: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Fraction of reads that carry random `utm_source`/`utm_campaign` parameters,
    /// as links shared from newsletters and ads do: without query normalisation
    /// each one is a key of its own.
    pub tracking: f64,
}

impl Workload {
    /// One fixed URL, reads only.
    pub fn fixed(path: &str) -> Self {
        Self {
            path: path.to_string(),
            keys: 1,
            distribution: KeyDistribution::Uniform,
            writes: 0.0,
            value: Bytes::new(),
            sequential: None,
            tracking: 0.0,
        }
    }

    /// The next request, drawn with `rng`.
    pub fn next(&self, rng: &mut Rng) -> Request<Bytes> {
        let path = if self.path.contains("{key}") {
            let k = match &self.sequential {
                Some(next) => next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.keys,
                None => self.distribution.pick(self.keys, rng.unit()),
            };
            self.path.replace("{key}", &format!("k{k}"))
        } else {
            self.path.clone()
        };
        let write = self.writes > 0.0 && rng.unit() < self.writes;
        let path = if !write && self.tracking > 0.0 && rng.unit() < self.tracking {
            let (source, campaign) = (rng.next_u64() % 1_000_000, rng.next_u64() % 1_000_000);
            let joint = if path.contains('?') { '&' } else { '?' };
            format!("{path}{joint}utm_source=s{source}&utm_campaign=c{campaign}")
        } else {
            path
        };
        let (method, body) = if write {
            (Method::PUT, self.value.clone())
        } else {
            (Method::GET, Bytes::new())
        };
        Request::builder()
            .method(method)
            .uri(path)
            .body(body)
            .expect("a path and a method make a request")
    }
}

/// A small, fast, seedable generator (xorshift64*): each connection has its own, so
/// a run's request sequence is reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_one_puts_the_harmonic_share_on_the_first_key() {
        let keys = 1000;
        let d = KeyDistribution::zipf(keys, 1.0);
        let mut rng = Rng::new(1);
        let mut counts = vec![0u32; keys as usize];
        let n = 200_000;
        for _ in 0..n {
            counts[d.pick(keys, rng.unit()) as usize] += 1;
        }
        // P(first) = 1 / H(1000) ~= 0.1336; P(second) half of it.
        let first = f64::from(counts[0]) / f64::from(n);
        assert!((first - 0.1336).abs() < 0.01, "{first}");
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!((ratio - 2.0).abs() < 0.15, "{ratio}");
        assert!(counts[999] < counts[9]);
    }

    #[test]
    fn uniform_covers_every_key_evenly() {
        let keys = 10;
        let d = KeyDistribution::zipf(keys, 0.0);
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[d.pick(keys, rng.unit()) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn the_mix_has_the_asked_share_of_writes_and_substitutes_keys() {
        let w = Workload {
            path: "/kv/{key}".into(),
            keys: 100,
            distribution: KeyDistribution::Uniform,
            writes: 0.25,
            value: Bytes::from_static(b"value"),
            sequential: None,
            tracking: 0.0,
        };
        let mut rng = Rng::new(3);
        let mut puts = 0;
        for _ in 0..10_000 {
            let r = w.next(&mut rng);
            assert!(r.uri().path().starts_with("/kv/k"));
            if r.method() == Method::PUT {
                puts += 1;
                assert_eq!(&r.body()[..], b"value");
            }
        }
        assert!((2_300..2_700).contains(&puts), "{puts}");
        assert_eq!(Workload::fixed("/x").next(&mut rng).uri(), "/x");
    }

    #[test]
    fn sequential_keys_cover_every_key_once_per_round() {
        let w = Workload {
            path: "/kv/{key}".into(),
            keys: 5,
            distribution: KeyDistribution::Uniform,
            writes: 1.0,
            value: Bytes::from_static(b"v"),
            sequential: Some(Default::default()),
            tracking: 0.0,
        };
        let mut rng = Rng::new(1);
        let paths: Vec<String> = (0..6).map(|_| w.next(&mut rng).uri().to_string()).collect();
        assert_eq!(
            paths,
            ["/kv/k0", "/kv/k1", "/kv/k2", "/kv/k3", "/kv/k4", "/kv/k0"]
        );
    }

    #[test]
    fn tracking_parameters_go_on_the_asked_share_of_reads_each_one_new() {
        let w = Workload {
            tracking: 0.3,
            ..Workload::fixed("/obj/x")
        };
        let mut rng = Rng::new(7);
        let tracked: Vec<String> = (0..10_000)
            .map(|_| w.next(&mut rng).uri().to_string())
            .filter(|u| u.contains("?utm_source=s"))
            .collect();
        assert!((2_800..3_200).contains(&tracked.len()), "{}", tracked.len());
        assert!(tracked
            .iter()
            .all(|u| u.starts_with("/obj/x?") && u.contains("&utm_campaign=c")));
        let distinct: std::collections::HashSet<_> = tracked.iter().collect();
        assert!(
            distinct.len() > tracked.len() * 99 / 100,
            "random, not repeated"
        );
    }
}

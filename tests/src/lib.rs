//! Flyt's cross-crate harness. Today it holds the statistics helpers of `flyt-bench` and the
//! light receivers of its relay benchmark ([`fanout`]); the
//! P2P and relay issues add the harness that starts real relays, real peers and a real
//! Postgres and checks them end to end.
#![deny(missing_docs)]

use std::time::Duration;

pub mod fanout;

/// Median and tail of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// 50th percentile.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

/// Summarises samples (any unit); nearest-rank percentiles.
pub fn summarize(samples: &[f64]) -> Summary {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[i.clamp(1, v.len()) - 1]
    };
    Summary {
        n: v.len(),
        p50: rank(50.0),
        p99: rank(99.0),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

/// Microseconds in a duration, as a float.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Milliseconds in a duration, as a float.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A small deterministic PRNG (xorshift64*) so benchmark data is the same on every run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeds the generator (0 is replaced by a fixed constant).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "deploy",
    "review",
    "merge",
    "lunch",
    "standup",
    "release",
    "bug",
    "fix",
    "ship",
    "design",
    "meeting",
    "today",
    "tomorrow",
    "please",
    "thanks",
    "customer",
    "latency",
    "database",
    "backup",
    "incident",
    "roadmap",
    "sprint",
    "ticket",
    "build",
    "test",
    "green",
    "red",
    "coffee",
    "offsite",
    "budget",
    "hiring",
    "launch",
    "metrics",
    "dashboard",
    "alert",
    "rollback",
    "staging",
    "production",
    "feature",
    "flag",
    "docs",
    "api",
    "client",
    "server",
];

/// A plausible chat line of 4 to 16 words; about one in 1,000 contains "zanzibar" (a rare word
/// for search benchmarks).
pub fn chat_line(rng: &mut Rng) -> String {
    let n = 4 + rng.below(13) as usize;
    let mut words: Vec<&str> = (0..n)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
        .collect();
    if rng.below(1000) == 0 {
        words.push("zanzibar");
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&v);
        assert_eq!((s.p50, s.p99, s.max), (50.0, 99.0, 100.0));
        assert!(summarize(&[]).p50.is_nan());
    }

    #[test]
    fn rng_is_deterministic() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(chat_line(&mut a), chat_line(&mut b));
    }
}

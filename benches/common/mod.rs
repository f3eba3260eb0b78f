//! Shared by the benchmarks: deterministic text, no external randomness.
#![allow(dead_code)]

/// A small deterministic PRNG (xorshift64*), so runs are comparable.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A vocabulary of pronounceable pseudo-words.
pub fn vocabulary(n: usize) -> Vec<String> {
    const SYL: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "qua", "ri", "do", "fe", "gu",
        "ha", "ji", "ko", "lu", "ma", "no", "pe", "si", "tu",
    ];
    let mut rng = Rng::new(7);
    (0..n)
        .map(|_| {
            let len = 2 + rng.below(3);
            (0..len).map(|_| SYL[rng.below(SYL.len())]).collect()
        })
        .collect()
}

/// A memory-like sentence of `words` words (about 6-7 bytes each).
pub fn sentence(rng: &mut Rng, vocab: &[String], words: usize) -> String {
    let mut s = String::with_capacity(words * 7);
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&vocab[rng.below(vocab.len())]);
    }
    s
}

/// Seconds the machine's CPUs have spent busy so far (not idle, not waiting on I/O), every
/// process counted, from /proc/stat: over a run, what it kept busy, the database's backends
/// included.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks.iter().sum::<u64>() - idle) as f64 / hz
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// One tool call through rmcp's client; a tool error fails the benchmark.
pub async fn call_tool(
    client: &rmcp::service::RunningService<rmcp::service::RoleClient, ()>,
    tool: &str,
    args: serde_json::Value,
) -> rmcp::model::CallToolResult {
    let serde_json::Value::Object(map) = args else {
        unreachable!()
    };
    let r = client
        .call_tool(rmcp::model::CallToolRequestParams::new(tool.to_string()).with_arguments(map))
        .await
        .expect("call");
    assert_ne!(
        r.is_error,
        Some(true),
        "{tool} failed: {:?}",
        r.structured_content
    );
    r
}

//! What the micro-benchmark files share.

use std::time::Duration;

use criterion::Criterion;

/// criterion's settings for fdloop's micro-benchmarks: `samples` samples, after 1 s of warm-up,
/// over 3 s of measurement.
pub fn config(samples: usize) -> Criterion {
    Criterion::default()
        .sample_size(samples)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

//! `response_latency_ms`: Linkerd's buckets, observed without a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};

use super::labels::LatencyKey;

/// Linkerd's latency buckets, in milliseconds (`+Inf` is implied).
const LATENCY_BOUNDS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1_000.0, 2_000.0, 3_000.0, 4_000.0, 5_000.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 50_000.0,
];

/// A histogram of milliseconds that every request observes without a
/// lock: one atomic add for its bucket, its count and its sum (kept in
/// microseconds). prometheus-client's own histogram takes a write lock
/// per observation, which connections on different threads sharing one
/// series contend for. A scrape reads each atomic once; it may see an
/// observation in the count but not yet in its bucket, as any lock-free
/// histogram (Linkerd's included) may.
#[derive(Debug, Clone, Default)]
pub(crate) struct LatencyHistogram {
    inner: Arc<LatencyCells>,
}

#[derive(Debug, Default)]
struct LatencyCells {
    /// Per bucket (not cumulative), the last one `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub(super) fn observe(&self, elapsed: std::time::Duration) {
        let ms = elapsed.as_secs_f64() * 1_000.0;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        let cells = &*self.inner;
        cells.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        cells.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        cells.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let cells = &*self.inner;
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_MS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&cells.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        let sum_ms = cells.sum_us.load(Ordering::Relaxed) as f64 / 1_000.0;
        encoder.encode_histogram::<NoLabelSet>(
            sum_ms,
            cells.count.load(Ordering::Relaxed),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

pub(super) type Latencies = Family<LatencyKey, LatencyHistogram>;

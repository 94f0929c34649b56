//! The server's Prometheus metrics (`GET /metrics`, text format 0.0.4), with the `prometheus`
//! crate: requests by endpoint and status, request latency, forward-pass batch sizes, queue
//! depth, readiness.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    /// `exp_requests_total{endpoint, status}`.
    pub requests: IntCounterVec,
    /// `exp_request_duration_seconds{endpoint}`.
    pub latency: HistogramVec,
    /// `exp_batch_size`: images per forward pass.
    pub batch_size: Histogram,
    /// `exp_queue_depth`: requests waiting for a worker.
    pub queue_depth: IntGauge,
    /// `exp_ready`: 1 once the model answers.
    pub ready: IntGauge,
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("exp_requests_total", "HTTP requests answered"),
            &["endpoint", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "exp_request_duration_seconds",
                "Time from request to response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["endpoint"],
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("exp_batch_size", "Images per forward pass")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        let queue_depth = IntGauge::new("exp_queue_depth", "Requests waiting for a worker")?;
        let ready = IntGauge::new("exp_ready", "1 once the model is loaded and warmed up")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            batch_size,
            queue_depth,
            ready,
        })
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on an invalid metric family, which the fixed set
        // above cannot produce.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

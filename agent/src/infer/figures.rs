//! C1 and C2 on the worker that ran the queries: per-model counters of
//! completed queries and images, and a latency histogram. Every agent keeps
//! its own, so they survive leader changes and add up across agents
//! (`sum(rate(dml_infer_queries_total[1m])) by (model)`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets: a query of a small model
/// on a few images takes milliseconds, a large batch on a loaded host tens
/// of seconds; roughly 2.5x apart, 13 buckets and `+Inf`.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

type LatencyFamily = Family<ModelLabel, Histogram, fn() -> Histogram>;

/// The inference figures of one worker; clones share the same series.
#[derive(Clone, Debug)]
pub struct InferMetrics {
    queries: Family<ModelLabel, Counter>,
    images: Family<ModelLabel, Counter>,
    latency: LatencyFamily,
}

impl Default for InferMetrics {
    fn default() -> Self {
        Self {
            queries: Family::default(),
            images: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
        }
    }
}

impl InferMetrics {
    /// Records a query of `model` whose `images` results the leader accepted,
    /// processed in `elapsed` (fetch, preprocessing and inference).
    pub fn record(&self, model: &str, images: usize, elapsed: Duration) {
        let label = ModelLabel {
            model: model.to_string(),
        };
        self.queries.get_or_create(&label).inc();
        self.images.get_or_create(&label).inc_by(images as u64);
        self.latency
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }

    /// Adds the three families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "dml_infer_queries",
            "C1: queries this agent's worker completed, by model.",
            self.queries.clone(),
        );
        registry.register(
            "dml_infer_images",
            "C1: images in the queries this agent's worker completed, by model.",
            self.images.clone(),
        );
        registry.register(
            "dml_infer_query_latency_seconds",
            "C2: processing time of the queries this agent's worker completed (fetch, preprocessing, inference), by model.",
            self.latency.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::prometheus_text::encode;

    #[test]
    fn a_recorded_query_counts_and_lands_in_its_latency_bucket() {
        let m = InferMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.record("resnet50", 4, Duration::from_millis(300));
        m.record("resnet50", 2, Duration::from_millis(40));
        let mut text = String::new();
        encode(&mut text, &r).unwrap();
        for line in [
            "# TYPE dml_infer_queries_total counter\n",
            "dml_infer_queries_total{model=\"resnet50\"} 2\n",
            "dml_infer_images_total{model=\"resnet50\"} 6\n",
            "# TYPE dml_infer_query_latency_seconds histogram\n",
            "dml_infer_query_latency_seconds_bucket{model=\"resnet50\",le=\"0.025\"} 0\n",
            "dml_infer_query_latency_seconds_bucket{model=\"resnet50\",le=\"0.05\"} 1\n",
            "dml_infer_query_latency_seconds_bucket{model=\"resnet50\",le=\"0.25\"} 1\n",
            "dml_infer_query_latency_seconds_bucket{model=\"resnet50\",le=\"0.5\"} 2\n",
            "dml_infer_query_latency_seconds_bucket{model=\"resnet50\",le=\"+Inf\"} 2\n",
            "dml_infer_query_latency_seconds_count{model=\"resnet50\"} 2\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("dml_infer_query_latency_seconds_sum{model=\"resnet50\"} ")
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sum in\n{text}"));
        assert!((sum - 0.34).abs() < 1e-9, "{sum}");
    }
}

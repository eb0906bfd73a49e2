//! The sweep as an SVG chart: query time against throughput, one line per
//! number of concurrent jobs for the median and one for p99, each point
//! labelled with its batch size. Series lines are 2 px wide (axes 1 px). plotters' SVG backend writes text as
//! `<text>` elements, so no font is needed on this machine.

use super::stats::Row;
use plotters::prelude::*;
use std::collections::BTreeMap;

const SIZE: (u32, u32) = (800, 500);

/// Which figure of a row a line plots.
type Figure = fn(&Row) -> f64;

/// Why the chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("draw the chart: {0}")]
pub struct ChartError(String);

fn err(e: impl std::fmt::Display) -> ChartError {
    ChartError(e.to_string())
}

/// The SVG text of `rows` of `model`'s sweep, under `title`.
pub fn svg(model: &str, title: &str, rows: &[Row]) -> Result<String, ChartError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let x_max = rows.iter().map(|r| r.images_per_s).fold(0.0, f64::max);
        let y_max = rows.iter().map(|r| r.latency.p99_ms).fold(0.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..(x_max * 1.15).max(1.0), 0.0..(y_max * 1.15).max(1.0))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(format!("{model}: images/s"))
            .y_desc("query time, ms (queue + compute)")
            .draw()
            .map_err(err)?;
        let mut by_jobs: BTreeMap<u32, Vec<&Row>> = BTreeMap::new();
        for r in rows {
            by_jobs.entry(r.setting.concurrency).or_default().push(r);
        }
        for (k, (jobs, mut rs)) in by_jobs.into_iter().enumerate() {
            rs.sort_by_key(|r| r.setting.batch);
            let color = Palette99::pick(k).to_rgba();
            let lines: [(&str, Figure, ShapeStyle); 2] = [
                ("p50", |r| r.latency.p50_ms, color.stroke_width(2)),
                ("p99", |r| r.latency.p99_ms, color.mix(0.5).stroke_width(2)),
            ];
            for (name, y, style) in lines {
                let points: Vec<(f64, f64)> = rs.iter().map(|r| (r.images_per_s, y(r))).collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), style))
                    .map_err(err)?
                    .label(format!("{name}, {jobs} concurrent job(s)"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                let labels = rs.iter().zip(points).map(|(r, p)| {
                    EmptyElement::at(p)
                        + Circle::new((0, 0), 3, style.filled())
                        + Text::new(
                            format!("b={}", r.setting.batch),
                            (5, -12),
                            ("sans-serif", 12),
                        )
                });
                chart.draw_series(labels).map_err(err)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::stats::{Pcts, Row, Setting};
    use super::*;

    fn row(batch: u32, concurrency: u32, rate: f64, p99: f64) -> Row {
        let p = Pcts {
            mean_ms: p99 / 2.0,
            p50_ms: p99 / 2.0,
            p95_ms: p99 * 0.9,
            p99_ms: p99,
            max_ms: p99,
        };
        Row {
            setting: Setting { batch, concurrency },
            jobs: 1,
            images: 10,
            queries: 10,
            seconds: 1.0,
            images_per_s: rate,
            latency: p,
            queue: p,
            compute: p,
            held: p,
        }
    }

    #[test]
    fn the_chart_is_svg_with_a_line_and_labels_per_series() {
        let rows = [
            row(1, 1, 5.0, 40.0),
            row(4, 1, 9.0, 120.0),
            row(1, 2, 6.0, 80.0),
        ];
        let s = svg("tiny", "tiny on a test machine", &rows).unwrap();
        assert!(
            s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
            "{s}"
        );
        // Four series (p50 and p99 at two concurrencies): each line, and its legend sample.
        let series = s.matches(r#"stroke-width="2" points="#).count();
        assert_eq!(series, 8, "{s}");
        for label in [
            "p50, 1 concurrent job(s)",
            "p99, 2 concurrent job(s)",
            "b=4",
            "tiny on a test machine",
        ] {
            assert!(s.contains(label), "no {label:?} in {s}");
        }
    }
}

//! `throughput-latency.svg`: stage 1's points, records/s against produce p99 (log scale),
//! one series (colour and marker) per flush policy, filled markers for direct I/O and
//! hollow ones for buffered, the p99 budget as a red line and the recommended point
//! ringed.

use std::path::Path;

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;
use ringlog_engine::topic::IoMode;

use super::grid::Flush;
use super::Outcome;

const WIDTH_PX: u32 = 1000;
const HEIGHT_PX: u32 = 640;
/// Distinct colours for up to this many series (they repeat beyond it).
const PALETTE: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
];

/// Draws the chart of `outcomes` (failed ones left out) to `path`.
pub fn draw(
    path: &Path,
    outcomes: &[Outcome],
    p99_budget_ms: f64,
    recommended: Option<usize>,
) -> Result<(), String> {
    let measured: Vec<Measured> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(index, outcome)| {
            let result = outcome.result.as_ref().ok()?;
            Some((index, outcome, result.records_per_s / 1e6, result.p99_ms))
        })
        .collect();
    let x_max = measured
        .iter()
        .map(|point| point.2)
        .fold(0.0_f64, f64::max)
        .max(0.01)
        * 1.1;
    let y_min = measured
        .iter()
        .map(|point| point.3)
        .fold(p99_budget_ms, f64::min)
        .max(0.01)
        / 1.5;
    let y_max = measured
        .iter()
        .map(|point| point.3)
        .fold(p99_budget_ms, f64::max)
        * 1.5;
    let root = SVGBackend::new(path, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    let error = |error: &dyn std::fmt::Display| format!("drawing {}: {error}", path.display());
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "ringlog-tune: produce throughput against p99 latency",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("throughput (million records/s)")
        .y_desc("produce p99 (ms, log scale)")
        .x_label_formatter(&|x| format!("{x:.2}"))
        .y_labels(24)
        .light_line_style(TRANSPARENT)
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(|e| error(&e))?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, p99_budget_ms), (x_max, p99_budget_ms)],
            ShapeStyle::from(&RED).stroke_width(2),
        ))
        .map_err(|e| error(&e))?
        .label(format!("p99 budget {p99_budget_ms} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
    draw_policies(&mut chart, &measured).map_err(|e| error(&e))?;
    draw_recommended(&mut chart, &measured, recommended).map_err(|e| error(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(&e))?;
    root.draw(&Text::new(
        "filled: direct I/O, hollow: buffered",
        (20, HEIGHT_PX as i32 - 20),
        ("sans-serif", 14),
    ))
    .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))
}

/// A measured point: its index among the outcomes, the outcome, million records/s, p99 ms.
type Measured<'a> = (usize, &'a Outcome, f64, f64);
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::combinators::LogCoord<f64>,
    >,
>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// One series per flush policy, in the order the policies first appear.
fn draw_policies(chart: &mut Chart<'_, '_>, measured: &[Measured<'_>]) -> DrawResult {
    let mut policies: Vec<Flush> = Vec::new();
    for (_, outcome, _, _) in measured {
        if !policies.contains(&outcome.point.flush) {
            policies.push(outcome.point.flush);
        }
    }
    for (series, policy) in policies.iter().enumerate() {
        let colour = PALETTE[series % PALETTE.len()];
        let points: Vec<_> = measured
            .iter()
            .filter(|point| point.1.point.flush == *policy)
            .map(|point| (point.2, point.3, point.1.point.io_mode == IoMode::Direct))
            .collect();
        chart
            .draw_series(points.iter().map(|&(x, y, direct)| {
                let style = if direct {
                    colour.filled()
                } else {
                    colour.stroke_width(2)
                };
                Circle::new((x, y), 5, style)
            }))?
            .label(format!("flush {policy}"))
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, colour.filled()));
    }
    Ok(())
}

/// A ring around the recommended point.
fn draw_recommended(
    chart: &mut Chart<'_, '_>,
    measured: &[Measured<'_>],
    recommended: Option<usize>,
) -> DrawResult {
    let Some(&(_, _, x, y)) =
        recommended.and_then(|index| measured.iter().find(|point| point.0 == index))
    else {
        return Ok(());
    };
    chart
        .draw_series(std::iter::once(Circle::new(
            (x, y),
            11,
            BLACK.stroke_width(2),
        )))?
        .label("recommended")
        .legend(|(x, y)| Circle::new((x + 8, y), 7, BLACK.stroke_width(2)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::grid::Grid;
    use crate::sweep::point::Measurement;

    /// Stage-1 outcomes with p99s from 1.3 ms to 50 ms, one of them failed.
    fn outcomes() -> Vec<Outcome> {
        Grid::short()
            .stage1()
            .into_iter()
            .enumerate()
            .map(|(index, point)| Outcome {
                point,
                result: if index == 3 {
                    Err("broker: refused".into())
                } else {
                    Ok(Measurement {
                        records_per_s: 600_000.0 + 30_000.0 * index as f64,
                        mb_per_s: 1.0,
                        p50_ms: 1.0,
                        p99_ms: 1.3 * 1.14_f64.powi(index as i32),
                        p999_ms: 1.0,
                        fdatasyncs_per_s: 0.0,
                        fdatasync_mean_ms: 0.0,
                        fdatasync_p99_bound_ms: 0.0,
                        group_bytes: 1.0,
                        limit_mb_per_s: 1.0,
                        ratio_to_limit: 1.0,
                        at_risk_ms: None,
                    })
                },
            })
            .collect()
    }

    #[test]
    fn the_chart_labels_the_log_axis_below_and_above_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        let outcomes = outcomes();
        draw(&path, &outcomes, 10.0, Some(5)).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let document = roxmltree::Document::parse(&svg).unwrap();
        let labels: Vec<f64> = document
            .descendants()
            .filter(|node| node.has_tag_name("text"))
            .filter_map(|node| node.text()?.trim().parse().ok())
            .collect();
        assert!(labels.iter().any(|&ms| ms > 1.0 && ms < 10.0), "{labels:?}");
        assert!(labels.iter().any(|&ms| ms > 10.0), "{labels:?}");
        // One marker per measured point, one per series in the legend, and the ring with
        // its legend marker: the failed point is left out.
        let circles = document
            .descendants()
            .filter(|node| node.has_tag_name("circle"))
            .count();
        assert_eq!(circles, (outcomes.len() - 1) + 5 + 2);
        if let Some(keep) = std::env::var_os("RINGLOG_TUNE_CHART_SAMPLE") {
            std::fs::copy(&path, keep).unwrap();
        }
    }
}

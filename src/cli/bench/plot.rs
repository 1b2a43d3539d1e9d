//! The SVG plot: routing cost against binding count, both axes logarithmic.
//!
//! Drawn with plotters' SVG backend and without its `ttf`/`ab_glyph`
//! features, so no system font libraries are needed: text is emitted as SVG
//! `<text>` elements (font `sans-serif`) and the viewer renders it; plotters
//! only estimates text extents for layout.

use plotters::prelude::*;

use crate::cli::{CliError, CliResult};

/// Plot size in pixels.
const SIZE: (u32, u32) = (960, 600);
const WARREN_COLOUR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const LINEAR_COLOUR: RGBColor = RGBColor(0xd6, 0x27, 0x28);

/// A `(binding count, ns per route)` point.
type Point = (f64, f64);

/// Legend label of the trie series.
pub const WARREN_LABEL: &str = "warren trie (TopicTrie)";
/// Legend label of the linear-scan series.
pub const LINEAR_LABEL: &str = "linear scan (topic_matches)";

/// Renders the plot as an SVG document. `warren` and `linear` are
/// `(binding count, ns per route)` points, in increasing count order;
/// `linear` may be empty.
pub fn render_svg(warren: &[(f64, f64)], linear: &[(f64, f64)]) -> CliResult<String> {
    let mut svg = String::new();
    draw(&mut svg, warren, linear)
        .map_err(|err| CliError::new(format!("cannot draw the plot: {err}")))?;
    Ok(svg)
}

fn draw(
    svg: &mut String,
    warren: &[(f64, f64)],
    linear: &[(f64, f64)],
) -> Result<(), Box<dyn std::error::Error>> {
    let all = || warren.iter().chain(linear);
    let (x_lo, x_hi) = bounds(all().map(|p| p.0));
    let (y_lo, y_hi) = bounds(all().map(|p| p.1));

    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "warren topic routing: cost per key vs binding count",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(85)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;

    chart
        .configure_mesh()
        .x_desc("bindings (log scale)")
        .y_desc("time per routed key (log scale)")
        .x_label_formatter(&|v| short_number(*v))
        .y_label_formatter(&|v| duration(*v))
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;

    let series: [(&[Point], &str, RGBColor, bool); 2] = [
        (warren, WARREN_LABEL, WARREN_COLOUR, true),
        (linear, LINEAR_LABEL, LINEAR_COLOUR, false),
    ];
    for (points, label, colour, circles) in series {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
            });
        if circles {
            chart.draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, 5, colour.filled()).into_dyn()),
            )?;
        } else {
            chart.draw_series(
                points
                    .iter()
                    .map(|&p| TriangleMarker::new(p, 6, colour.filled()).into_dyn()),
            )?;
        }
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

/// A log-axis range around `values`, widened so that a single point (or
/// equal values) still gives a non-empty range and no point sits on an edge.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if hi == 0.0 {
        return (1.0, 10.0);
    }
    (lo / 2.0, hi * 2.0)
}

/// `1500` -> `1.5k`, `100000` -> `100k`, `2e6` -> `2M`.
fn short_number(v: f64) -> String {
    let (scaled, suffix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    format!("{}{suffix}", trim(scaled))
}

/// Nanoseconds as `50 ns`, `1.2 µs`, `3 ms`, `1.5 s`.
fn duration(ns: f64) -> String {
    let (scaled, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    format!("{} {unit}", trim(scaled))
}

/// At most three significant digits, without trailing zeros.
fn trim(v: f64) -> String {
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_short() {
        assert_eq!(short_number(10.0), "10");
        assert_eq!(short_number(1000.0), "1k");
        assert_eq!(short_number(1500.0), "1.5k");
        assert_eq!(short_number(100_000.0), "100k");
        assert_eq!(duration(50.0), "50 ns");
        assert_eq!(duration(1234.0), "1.23 µs");
        assert_eq!(duration(3e6), "3 ms");
    }

    #[test]
    fn renders_both_series_and_a_single_point() {
        let svg = render_svg(
            &[(10.0, 50.0), (100.0, 80.0)],
            &[(10.0, 60.0), (100.0, 700.0)],
        )
        .unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.contains(WARREN_LABEL));
        assert!(svg.contains(LINEAR_LABEL));
        let svg = render_svg(&[(7.0, 40.0)], &[]).unwrap();
        assert!(svg.contains(WARREN_LABEL));
        assert!(!svg.contains(LINEAR_LABEL));
    }
}

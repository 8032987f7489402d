//! Loss and latency curves as PNG files (training logs, the family comparison, `tttc bench`),
//! drawn with plotters and an embedded font, so no system font libraries are needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{ensure, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// One curve: a label and its (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// Curves from labelled points, one per label in order of first appearance.
    pub fn group(points: impl Iterator<Item = (String, (f64, f64))>) -> Vec<Series> {
        let mut series: Vec<Series> = Vec::new();
        for (label, point) in points {
            match series.iter_mut().find(|s| s.label == label) {
                Some(s) => s.points.push(point),
                None => series.push(Series { label, points: vec![point] }),
            }
        }
        series
    }
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in; registering it cannot fail for a valid font.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws `series` against the step axis into a PNG at `path` (a staged output: written directly).
pub fn loss_curves(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    let (x_max, y_min, y_max) = extent(series)?;
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    draw(path, title, ("step", "loss (nats/token)"), 0f64..x_max.max(1.0), (y_min - pad)..(y_max + pad), series, false)
}

/// Draws latency curves (milliseconds against a length, as `axes` name them) on log-log axes.
pub fn latency_curves(path: &Path, title: &str, axes: (&str, &str), series: &[Series]) -> Result<()> {
    let (x_max, y_min, y_max) = extent(series)?;
    let x_min = series.iter().flat_map(|s| s.points.iter()).map(|p| p.0).fold(f64::INFINITY, f64::min);
    draw(path, title, axes, (x_min / 1.5..x_max * 1.5).log_scale(), (y_min / 1.5..y_max * 1.5).log_scale(), series, true)
}

/// The largest x and the smallest and largest finite y over all points.
fn extent(series: &[Series]) -> Result<(f64, f64, f64)> {
    let (mut x_max, mut y_min, mut y_max) = (f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in series.iter().flat_map(|s| s.points.iter()) {
        x_max = x_max.max(x);
        if y.is_finite() {
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    ensure!(y_min.is_finite(), "no finite values to plot");
    Ok((x_max, y_min, y_max))
}

/// `log`: axes labelled in whole numbers, every point marked (a curve may have one point) and
/// the legend at the upper left, where latency curves leave room.
fn draw<X, Y>(path: &Path, title: &str, (x_desc, y_desc): (&str, &str), x: X, y: Y, series: &[Series], log: bool) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    register_font();
    {
        let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart =
            ChartBuilder::on(&root).caption(title, ("sans-serif", 24)).margin(16).x_label_area_size(40).y_label_area_size(60).build_cartesian_2d(x, y)?;
        // Two significant figures at least: 0.25, 2.5, 25, 250.
        let whole = |v: &f64| if *v >= 10.0 { format!("{v:.0}") } else { format!("{v:.*}", (1.0 - v.log10().floor()).max(1.0) as usize) };
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_desc).y_desc(y_desc).label_style(("sans-serif", 15));
        if log {
            mesh.x_label_formatter(&whole).y_label_formatter(&whole).x_labels(8);
        }
        mesh.draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points = || s.points.iter().copied().filter(|p| p.1.is_finite());
            chart
                .draw_series(LineSeries::new(points(), color.stroke_width(2)))?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            if log {
                chart.draw_series(points().map(|p| Circle::new(p, 4, color.filled())))?;
            }
        }
        let position = if log { SeriesLabelPosition::UpperLeft } else { SeriesLabelPosition::UpperRight };
        chart.configure_series_labels().position(position).background_style(WHITE.mix(0.8)).border_style(BLACK).label_font(("sans-serif", 15)).draw()?;
        root.present().context("cannot draw the plot")?;
    }
    Ok(())
}

//! Loss curves as PNG files (training logs, the family comparison), drawn with plotters and an
//! embedded font, so no system font libraries are needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{ensure, Context, Result};
use plotters::prelude::*;

/// One curve: a label and its (step, loss) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in; registering it cannot fail for a valid font.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws `series` against the step axis into a PNG at `path` (written to a temporary file, then
/// renamed).
pub fn loss_curves(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    register_font();
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x_max = x_max.max(x);
        if y.is_finite() {
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    ensure!(y_min.is_finite(), "no finite losses to plot");
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let tmp = path.with_extension(format!("tmp{}.png", std::process::id()));
    {
        let root = BitMapBackend::new(&tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad))?;
        chart.configure_mesh().x_desc("step").y_desc("loss (nats/token)").label_style(("sans-serif", 15)).draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(s.points.iter().copied().filter(|p| p.1.is_finite()), color.stroke_width(2)))?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).label_font(("sans-serif", 15)).draw()?;
        root.present().context("cannot draw the plot")?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

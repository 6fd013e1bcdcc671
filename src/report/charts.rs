//! The report's PNG charts, drawn with plotters. Text uses DejaVu Sans compiled into the
//! binary (through ab_glyph), so charts render the same on a machine without fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::{Point, Run};

/// A chart drawer.
pub type Draw = fn(&[Run], &Path) -> anyhow::Result<()>;

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 600);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans font is valid"));
    });
}

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    COLORS[i % COLORS.len()]
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Draws the legend in the upper right corner and writes the file.
fn finish<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    root: &DrawingArea<DB, plotters::coord::Shift>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Loss curves of every run against `x` (seconds or cost) on the axis `x_axis` makes from
/// the largest x.
fn loss_against<XR>(
    runs: &[Run],
    path: &Path,
    caption: &str,
    x_desc: &str,
    x: fn(&Point) -> f64,
    x_axis: impl Fn(f64, f64) -> XR,
) -> anyhow::Result<()>
where
    XR: AsRangedCoord<Value = f64>,
    XR::CoordDescType: ValueFormatter<f64>,
{
    register_font();
    let curves: Vec<Vec<Point>> = runs.iter().map(Run::curve).collect();
    let all = curves.iter().flatten();
    let x_max = all.clone().map(x).fold(0.0, f64::max).max(1e-12);
    let x_min = all
        .clone()
        .map(x)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(x_max);
    let finite = all.map(|p| p.loss).filter(|l| l.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), l| {
        (a.min(l), b.max(l))
    });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.1).max(1e-6);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, (FONT, 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x_axis(x_min, x_max), (lo - pad)..(hi + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("training loss")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(err)?;
    for (i, (run, curve)) in runs.iter().zip(&curves).enumerate() {
        let c = color(i);
        let pts: Vec<(f64, f64)> = curve.iter().map(|p| (x(p), p.loss)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(format!("{} {}", i + 1, run.label()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    finish(&mut chart, &root)
}

/// Training loss against wall time.
pub fn loss_vs_time(runs: &[Run], path: &Path) -> anyhow::Result<()> {
    loss_against(
        runs,
        path,
        "Training loss against time",
        "seconds (slowest worker, loading included)",
        |p| p.seconds,
        |_, max| 0.0..max * 1.05,
    )
}

/// Training loss against estimated cost.
pub fn loss_vs_cost(runs: &[Run], path: &Path) -> anyhow::Result<()> {
    loss_against(
        runs,
        path,
        "Training loss against estimated AWS cost",
        "USD (estimate, log scale: runs differ by orders of magnitude)",
        |p| p.cost,
        |min, max| (min / 1.5..max * 1.5).log_scale(),
    )
}

/// One stacked bar per worker of every run: load, compute, transfer, waiting, other.
pub fn time_breakdown(runs: &[Run], path: &Path) -> anyhow::Result<()> {
    register_font();
    let mut bars: Vec<(String, [f64; 5])> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        for (w, t) in run.time_per_worker().iter().enumerate() {
            bars.push((
                format!("{} w{w}", i + 1),
                [t.load_s, t.compute_s, t.transfer_s, t.wait_s, t.other_s],
            ));
        }
    }
    let x_max = bars
        .iter()
        .map(|(_, v)| v.iter().sum::<f64>())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.45; // room on the right for the totals and the legend
    let n = bars.len().max(1) as f64;
    let height = (120 + 28 * bars.len() as u32).clamp(300, 2400);
    let root = BitMapBackend::new(path, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Where each worker's time went", (FONT, 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(10)
        .build_cartesian_2d(0.0..x_max, 0.0..n)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc("seconds (run number, worker)")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(err)?;
    let parts = ["load", "compute", "transfer", "waiting", "other"];
    let palette = [
        RGBColor(148, 103, 189),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(190, 190, 190),
    ];
    for (k, name) in parts.iter().enumerate() {
        let c = palette[k];
        let rects = bars.iter().enumerate().map(move |(i, (_, v))| {
            let start: f64 = v[..k].iter().sum();
            let y = n - 1.0 - i as f64;
            Rectangle::new([(start, y + 0.15), (start + v[k], y + 0.85)], c.filled())
        });
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
    }
    let labels = bars.iter().enumerate().map(|(i, (label, v))| {
        let total: f64 = v.iter().sum();
        let y = n - 1.0 - i as f64;
        Text::new(
            format!("{label}  {total:.2} s"),
            (total + x_max * 0.005, y + 0.75),
            (FONT, 13).into_font(),
        )
    });
    chart.draw_series(labels).map_err(err)?;
    finish(&mut chart, &root)
}

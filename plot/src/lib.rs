//! `baichuan-plot`: charts of training runs and of scaling experiments, as PNG images.
//!
//! Drawing is done by the `plotters` crate on an in-memory RGB bitmap: panels in a grid, each with
//! linear or logarithmic axes (`log_x`, `log_y`), lines (solid or dashed), dots and crosses, a
//! legend in the corner that covers the fewest data points, and, when a panel has a
//! [`ColorScale`], points coloured by a value (viridis) with a colour bar. [`runs`] reads runs'
//! `metrics.jsonl` and overlays their curves (what `baichuan plot` draws); the scaling fit draws
//! its IsoFLOP curves through [`render_png`] too.
//!
//! Text is set in DejaVu Sans, a subset of which (Latin-1, Greek, sub- and superscripts, a few
//! arrows and math signs; `fonts/README.md`) is compiled into the binary and registered with
//! plotters' `ab_glyph` backend: an image reads the same on a machine without any installed font.
//! The PNG file itself is written here (signature, IHDR for 8-bit RGB, one IDAT holding a zlib
//! stream via `flate2` with filter type 0 on every scanline, IEND, each chunk followed by its
//! CRC-32 via `crc32fast`, per the PNG specification), which spares plotters' `image` crate.

use std::io::Write;
use std::sync::Once;

use flate2::{write::ZlibEncoder, Compression};
use plotters::chart::SeriesAnno;
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub mod runs;
pub use runs::plot_runs;

/// Why a chart could not be made; each names the file or the drawing step.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Metrics(String),
    #[error("drawing the chart: {0}")]
    Draw(String),
}

/// The bundled font (see `fonts/README.md` for its origin and licence).
const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans-subset.ttf");
/// The family name every text of these charts asks for.
const FAMILY: &str = "sans-serif";

/// Series colours (`Paint::Palette` indexes this, wrapping around).
#[rustfmt::skip]
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40),
    RGBColor(148, 103, 189), RGBColor(140, 86, 75), RGBColor(227, 119, 194), RGBColor(127, 127, 127),
    RGBColor(188, 189, 34), RGBColor(23, 190, 207),
];
const INK: RGBColor = RGBColor(30, 30, 30);
const MUTED: RGBColor = RGBColor(90, 90, 90);
const GRID: RGBColor = RGBColor(226, 226, 226);
const FINE_GRID: RGBColor = RGBColor(243, 243, 243);
/// The part of viridis used for values: its last tenth is too pale a yellow on white.
const VIRIDIS_TOP: f64 = 0.9;

/// How a series is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mark {
    /// Points joined in order; a non-finite point breaks the line.
    #[default]
    Line,
    Dashed,
    /// A filled circle per point.
    Dots,
    /// A cross per point.
    Crosses,
}

/// The colour of a series.
#[derive(Clone, Debug, PartialEq)]
pub enum Paint {
    /// `PALETTE[i % 10]`.
    Palette(usize),
    /// Near-black, for reference lines (a fitted frontier).
    Ink,
    /// One value on the panel's [`ColorScale`].
    Value(f64),
    /// A value per point on the panel's [`ColorScale`] (as many as the points).
    Values(Vec<f64>),
}

impl Default for Paint {
    fn default() -> Self {
        Paint::Palette(0)
    }
}

/// One series: `points` are (x, y) pairs; an empty `label` leaves it out of the legend.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub paint: Paint,
    pub mark: Mark,
}

/// Maps values to colours (viridis, dark blue for `min` to yellow-green for `max`) and labels
/// the panel's colour bar; `log` spaces the colours by the logarithm of the value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ColorScale {
    pub label: String,
    pub min: f64,
    pub max: f64,
    pub log: bool,
}

impl ColorScale {
    /// A scale spanning the finite (and, when `log`, positive) `values`.
    pub fn spanning(label: &str, values: impl IntoIterator<Item = f64>, log: bool) -> ColorScale {
        let (min, max) = values
            .into_iter()
            .filter(|v| v.is_finite() && (*v > 0.0 || !log))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        let (min, max) = if min.is_finite() { (min, max) } else { (1.0, 1.0) };
        ColorScale {
            label: label.into(),
            min,
            max,
            log,
        }
    }

    /// Where `v` sits on the scale, from 0 (`min`) to 1 (`max`), clamped.
    pub fn position(&self, v: f64) -> f64 {
        let f = |x: f64| if self.log { x.max(f64::MIN_POSITIVE).ln() } else { x };
        let (lo, hi) = (f(self.min), f(self.max));
        if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) || !v.is_finite() {
            return 0.5;
        }
        ((f(v) - lo) / (hi - lo)).clamp(0.0, 1.0)
    }

    /// The colour of `v`.
    pub fn color(&self, v: f64) -> RGBColor {
        ViridisRGB::get_color(self.position(v) * VIRIDIS_TOP)
    }
}

/// One chart with its own axes; `log_x` and `log_y` make an axis logarithmic (base 10).
#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
    /// The colours of [`Paint::Value`] and [`Paint::Values`], drawn as a colour bar.
    pub scale: Option<ColorScale>,
}

/// Renders the panels in a grid of `cols` columns into a PNG image of width x height pixels.
pub fn render_png(panels: &[Panel], cols: usize, width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    let px = render_rgb(panels, cols, width, height)?;
    Ok(encode_png(width, height, &px))
}

/// Writes `bytes` to `path` through a temporary file renamed into place, so a reader never sees
/// half an image.
pub fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), PlotError> {
    let tmp = path.with_extension("png.tmp");
    let io = |p: &std::path::Path| {
        let what = format!("writing {}", p.display());
        move |source| PlotError::Io { what, source }
    };
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Registers the bundled font with plotters, once per process.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            // the font is compiled in and checked by a unit test: this cannot happen at run time
            panic!("the bundled font fonts/DejaVuSans-subset.ttf does not parse");
        }
    });
}

/// The panels as RGB pixels, row by row.
fn render_rgb(panels: &[Panel], cols: usize, width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    register_font();
    let mut px = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut px, (width, height)).into_drawing_area();
        let cols = cols.clamp(1, panels.len().max(1));
        let rows = panels.len().div_ceil(cols).max(1);
        for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
            draw_panel(area, panel).map_err(PlotError::Draw)?;
        }
        root.present().map_err(|e| PlotError::Draw(e.to_string()))?;
    }
    Ok(px)
}

/// The text sizes of a panel of `w` x `h` pixels: (title, axis label, tick label).
fn text_sizes(w: u32, h: u32) -> (u32, u32, u32) {
    let k = (w.min(h * 3 / 2) as f64 / 700.0).clamp(0.6, 1.6);
    let s = |v: f64| (v * k).round() as u32;
    (s(24.0), s(19.0), s(16.0))
}

/// The finite values of a series that an axis can show (positive ones on a log axis).
fn usable(v: f64, log: bool) -> bool {
    v.is_finite() && (v > 0.0 || !log)
}

/// The span of the usable values, padded by `frac` of it on each side (by a factor on a log
/// axis); a single value gets a span around it; no value gets (0, 1), or (1, 10) on a log axis.
fn span(values: impl Iterator<Item = f64>, log: bool, frac: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| usable(*v, log))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        let (l, h) = (lo.log10(), hi.log10());
        let pad = if h > l { (h - l) * frac } else { 0.5 };
        (10f64.powf(l - pad), 10f64.powf(h + pad))
    } else {
        let pad = if hi > lo {
            (hi - lo) * frac
        } else {
            lo.abs().max(1.0) * 0.1
        };
        (lo - pad, hi + pad)
    }
}

/// Compact tick labels: `0`, `0.25`, `3.5`, `250`, `2.5k`, `1.2M`, `3B`, `1.5T`, `3e-4`, `2e15`.
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    let sig3 = |x: f64| {
        let decimals = (2 - x.abs().log10().floor() as i64).clamp(0, 6) as usize;
        trim(format!("{x:.decimals$}"))
    };
    if !(1e-2..1e15).contains(&a) {
        let e = a.log10().floor() as i32;
        let m = v / 10f64.powi(e);
        let m = trim(format!("{m:.1}"));
        return format!("{m}e{e}");
    }
    for (scale, suffix) in [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")] {
        if a >= scale {
            return format!("{}{suffix}", sig3(v / scale));
        }
    }
    sig3(v)
}

/// Keeps at most four points (first, lowest, highest, last) per one of `buckets` equal slices
/// of the x range (equal in log x on a log axis), and the breaks (non-finite points) between
/// them: nearly the same line, much faster to draw for a long noisy series.
fn thin(points: &[(f64, f64)], buckets: usize, log_x: bool) -> Vec<(f64, f64)> {
    if points.len() <= 4 * buckets {
        return points.to_vec();
    }
    let x = |v: f64| if log_x { v.log10() } else { v };
    let (lo, hi) = points
        .iter()
        .filter(|p| usable(p.0, log_x))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(x(p.0)), b.max(x(p.0)))
        });
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return points.to_vec();
    }
    let bucket = |p: &(f64, f64)| {
        usable(p.0, log_x).then(|| (((x(p.0) - lo) / (hi - lo) * buckets as f64) as usize).min(buckets - 1))
    };
    let mut out = Vec::new();
    let mut run: Vec<(f64, f64)> = Vec::new();
    let flush = |run: &mut Vec<(f64, f64)>, out: &mut Vec<(f64, f64)>| {
        if run.is_empty() {
            return;
        }
        let by_y = |a: &&(f64, f64), b: &&(f64, f64)| a.1.total_cmp(&b.1);
        let lo = run.iter().min_by(by_y).copied();
        let hi = run.iter().max_by(by_y).copied();
        let mut keep = vec![run[0]];
        for p in [lo, hi, run.last().copied()].into_iter().flatten() {
            if !keep.contains(&p) {
                keep.push(p);
            }
        }
        keep.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.extend(keep);
        run.clear();
    };
    let mut current = None;
    for p in points {
        let b = if p.1.is_finite() { bucket(p) } else { None };
        if b.is_none() || b != current {
            flush(&mut run, &mut out);
        }
        match b {
            Some(_) => run.push(*p),
            None => out.push(*p),
        }
        current = b;
    }
    flush(&mut run, &mut out);
    out
}

/// The pieces of a line between its breaks: runs of points both axes can show.
fn segments(points: &[(f64, f64)], log_x: bool, log_y: bool) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for &(x, y) in points {
        if usable(x, log_x) && usable(y, log_y) {
            out.last_mut().expect("never empty").push((x, y));
        } else if !out.last().expect("never empty").is_empty() {
            out.push(Vec::new());
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The legend's corner: the one whose quarter of the plot holds the fewest points, preferring
/// top right, then top left, bottom right, bottom left.
fn legend_corner(p: &Panel, x: (f64, f64), y: (f64, f64)) -> SeriesLabelPosition {
    let unit = |v: f64, (lo, hi): (f64, f64), log: bool| {
        if log {
            (v.log10() - lo.log10()) / (hi.log10() - lo.log10())
        } else {
            (v - lo) / (hi - lo)
        }
    };
    let mut count = [0.0f64; 4];
    for s in &p.series {
        for &(px, py) in &s.points {
            if !(usable(px, p.log_x) && usable(py, p.log_y)) {
                continue;
            }
            let (u, v) = (unit(px, x, p.log_x), unit(py, y, p.log_y));
            let (right, top) = (u > 0.55, v > 0.55);
            let (left, bottom) = (u < 0.45, v < 0.45);
            for (i, inside) in [right && top, left && top, right && bottom, left && bottom]
                .into_iter()
                .enumerate()
            {
                if inside {
                    count[i] += 1.0;
                }
            }
        }
    }
    let cost = |i: usize| count[i] * (1.0 + 0.25 * i as f64) + 0.01 * i as f64;
    let best = (0..4).min_by(|&a, &b| cost(a).total_cmp(&cost(b))).unwrap_or(0);
    [
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::LowerLeft,
    ][best]
        .clone()
}

fn draw_panel(area: &DrawingArea<BitMapBackend, Shift>, p: &Panel) -> Result<(), String> {
    let (w, h) = area.dim_in_pixel();
    let (_, _, tick) = text_sizes(w, h);
    let (plot, bar) = match &p.scale {
        Some(_) => {
            let bar_w = (tick * 6).min(w / 4);
            let (a, b) = area.split_horizontally(w - bar_w);
            (a, Some(b))
        }
        None => (area.clone(), None),
    };
    let xs = || p.series.iter().flat_map(|s| s.points.iter().map(|q| q.0));
    let ys = || p.series.iter().flat_map(|s| s.points.iter().map(|q| q.1));
    let x = span(xs(), p.log_x, 0.05);
    let y = span(ys(), p.log_y, 0.06);
    match (p.log_x, p.log_y) {
        (false, false) => chart(&plot, p, x.0..x.1, y.0..y.1, x, y)?,
        (true, false) => chart(&plot, p, (x.0..x.1).log_scale(), y.0..y.1, x, y)?,
        (false, true) => chart(&plot, p, x.0..x.1, (y.0..y.1).log_scale(), x, y)?,
        (true, true) => chart(&plot, p, (x.0..x.1).log_scale(), (y.0..y.1).log_scale(), x, y)?,
    }
    if let (Some(bar), Some(scale)) = (bar, &p.scale) {
        color_bar(&bar, scale, tick)?;
    }
    Ok(())
}

/// The colour of `s`'s `i`-th point.
fn point_color(p: &Panel, s: &Series, i: usize) -> RGBColor {
    let scale = p.scale.clone().unwrap_or_default();
    match &s.paint {
        Paint::Palette(c) => PALETTE[c % PALETTE.len()],
        Paint::Ink => INK,
        Paint::Value(v) => scale.color(*v),
        Paint::Values(v) => scale.color(v.get(i).copied().unwrap_or(f64::NAN)),
    }
}

fn chart<X, Y>(
    area: &DrawingArea<BitMapBackend, Shift>,
    p: &Panel,
    x_spec: X,
    y_spec: Y,
    x: (f64, f64),
    y: (f64, f64),
) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let (w, h) = area.dim_in_pixel();
    let (title, label, tick) = text_sizes(w, h);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, title).into_font().color(&INK))
        .margin(title / 2)
        .x_label_area_size(tick * 2 + label + 6)
        .y_label_area_size(tick * 4 + label + 4)
        .build_cartesian_2d(x_spec, y_spec)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .axis_desc_style((FAMILY, label).into_font().color(&INK))
        .label_style((FAMILY, tick).into_font().color(&MUTED))
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .x_labels(8)
        .y_labels(8)
        .bold_line_style(GRID)
        .light_line_style(FINE_GRID)
        .max_light_lines(4)
        .axis_style(MUTED)
        .draw()
        .map_err(err)?;
    let points = p.series.iter().map(|s| s.points.len()).sum::<usize>();
    if points == 0
        || p.series
            .iter()
            .all(|s| segments(&s.points, p.log_x, p.log_y).is_empty())
    {
        let (cx, cy) = (((x.0 + x.1) / 2.0), ((y.0 + y.1) / 2.0));
        let mid = |(lo, hi): (f64, f64), log: bool, lin: f64| if log { (lo * hi).sqrt() } else { lin };
        let at = (mid(x, p.log_x, cx), mid(y, p.log_y, cy));
        let style = (FAMILY, label)
            .into_font()
            .color(&MUTED)
            .pos(Pos::new(HPos::Center, VPos::Center));
        chart
            .draw_series(std::iter::once(Text::new("no data", at, style)))
            .map_err(err)?;
        return Ok(());
    }
    let line_w = (tick / 7).max(2);
    let dot = (tick as i32 / 3).max(4);
    // plotters spaces dashes start to start: the gap is the spacing less the dash
    let (dash, gap) = (tick * 3 / 4, tick * 3 / 4 + tick / 2);
    let mut legend = false;
    for s in &p.series {
        let color = point_color(p, s, 0);
        let style = color.stroke_width(line_w);
        let swatch = if matches!(s.paint, Paint::Values(_)) {
            MUTED
        } else {
            color
        };
        match s.mark {
            Mark::Line | Mark::Dashed => {
                let pieces = segments(&thin(&s.points, w as usize, p.log_x), p.log_x, p.log_y);
                for (k, piece) in pieces.into_iter().enumerate() {
                    let anno = if s.mark == Mark::Line {
                        chart.draw_series(LineSeries::new(piece, style))
                    } else {
                        chart.draw_series(DashedLineSeries::new(piece, dash, gap, style))
                    }
                    .map_err(err)?;
                    if k == 0 && !s.label.is_empty() {
                        add_key(anno, s, swatch, line_w, dot);
                        legend = true;
                    }
                }
            }
            Mark::Dots | Mark::Crosses => {
                let shown: Vec<(usize, (f64, f64))> = s
                    .points
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|(_, (px, py))| usable(*px, p.log_x) && usable(*py, p.log_y))
                    .collect();
                let any = !shown.is_empty();
                let dots = s.mark == Mark::Dots;
                let anno = chart
                    .draw_series(shown.into_iter().map(|(i, at)| {
                        let c = point_color(p, s, i);
                        if dots {
                            Circle::new(at, dot, c.filled()).into_dyn()
                        } else {
                            Cross::new(at, dot + 1, c.stroke_width(line_w)).into_dyn()
                        }
                    }))
                    .map_err(err)?;
                if any && !s.label.is_empty() {
                    add_key(anno, s, swatch, line_w, dot);
                    legend = true;
                }
            }
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .position(legend_corner(p, x, y))
            .label_font((FAMILY, tick).into_font().color(&INK))
            .background_style(WHITE.mix(0.85))
            .border_style(MUTED)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Puts `s` in the legend, with a sample of its mark in `swatch`: one element type for every
/// mark (two strokes, a dot and a cross, the unused ones transparent), as plotters' legend
/// wants a concrete element.
fn add_key<'a, DB: DrawingBackend + 'a>(
    anno: &mut SeriesAnno<'a, DB>,
    s: &Series,
    swatch: RGBColor,
    line_w: u32,
    dot: i32,
) {
    let mark = s.mark;
    anno.label(s.label.as_str()).legend(move |(x, y)| {
        let (on, off) = (swatch.stroke_width(line_w), TRANSPARENT.stroke_width(line_w));
        let (a, b, stroke) = match mark {
            Mark::Line => (10, 10, on),
            Mark::Dashed => (8, 12, on),
            Mark::Dots | Mark::Crosses => (10, 10, off),
        };
        let round = if mark == Mark::Dots {
            swatch.filled()
        } else {
            TRANSPARENT.filled()
        };
        let cross = if mark == Mark::Crosses { on } else { off };
        EmptyElement::at((x, y))
            + PathElement::new(vec![(0, 0), (a, 0)], stroke)
            + PathElement::new(vec![(b, 0), (20, 0)], stroke)
            + Circle::new((10, 0), dot, round)
            + Cross::new((10, 0), dot + 1, cross)
    });
}

/// A vertical colour bar of `scale` with its label above and three values beside it.
fn color_bar(area: &DrawingArea<BitMapBackend, Shift>, scale: &ColorScale, tick: u32) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let (_, h) = area.dim_in_pixel();
    let (top, bottom) = ((tick * 4) as i32, h as i32 - (tick * 4) as i32);
    let (x0, x1) = (2, 2 + (tick as i32).max(8));
    if bottom <= top + 10 {
        return Ok(());
    }
    let steps = (bottom - top).max(1);
    for i in 0..steps {
        let t = 1.0 - i as f64 / (steps - 1).max(1) as f64;
        let c = ViridisRGB::get_color(t * VIRIDIS_TOP);
        area.draw(&Rectangle::new([(x0, top + i), (x1, top + i + 1)], c.filled()))
            .map_err(err)?;
    }
    area.draw(&Rectangle::new(
        [(x0 - 1, top - 1), (x1 + 1, bottom + 1)],
        MUTED.stroke_width(1),
    ))
    .map_err(err)?;
    let font = (FAMILY, tick).into_font().color(&INK);
    let value_at = |t: f64| {
        if scale.log {
            (scale.min.ln() + t * (scale.max.ln() - scale.min.ln())).exp()
        } else {
            scale.min + t * (scale.max - scale.min)
        }
    };
    for t in [0.0, 0.5, 1.0] {
        let yy = bottom - (t * (bottom - top) as f64) as i32;
        let style = font.clone().pos(Pos::new(HPos::Left, VPos::Center));
        area.draw(&Text::new(tick_label(value_at(t)), (x1 + 4, yy), style))
            .map_err(err)?;
    }
    let style = font.pos(Pos::new(HPos::Left, VPos::Bottom));
    area.draw(&Text::new(scale.label.clone(), (x0, top - (tick as i32) / 2), style))
        .map_err(err)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// PNG encoding.

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// An 8-bit RGB PNG of `px` (width x height pixels, row by row).
fn encode_png(width: u32, height: u32, px: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive filtering, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    let mut raw = Vec::with_capacity(px.len() + height as usize);
    for row in px.chunks(width as usize * 3) {
        raw.push(0); // filter type None
        raw.extend_from_slice(row);
    }
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    z.write_all(&raw).expect("writing to a Vec cannot fail");
    png_chunk(&mut out, b"IDAT", &z.finish().expect("writing to a Vec cannot fail"));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::ZlibDecoder;
    use std::io::Read;

    /// Minimal PNG reader: checks the structure and every CRC, returns (width, height, pixels).
    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let (mut pos, mut kinds, mut ihdr, mut idat) = (8, vec![], vec![], vec![]);
        while pos < png.len() {
            let len = be(&png[pos..]) as usize;
            let (kind, data) = (&png[pos + 4..pos + 8], &png[pos + 8..pos + 8 + len]);
            let mut crc = crc32fast::Hasher::new();
            crc.update(&png[pos + 4..pos + 8 + len]);
            assert_eq!(
                crc.finalize(),
                be(&png[pos + 8 + len..]),
                "bad CRC in {}",
                String::from_utf8_lossy(kind)
            );
            match kind {
                b"IHDR" => ihdr = data.to_vec(),
                b"IDAT" => idat.extend_from_slice(data),
                _ => {}
            }
            kinds.push(String::from_utf8_lossy(kind).to_string());
            pos += 12 + len;
        }
        assert_eq!(pos, png.len());
        assert_eq!(kinds.first().map(|k| k.as_str()), Some("IHDR"));
        assert_eq!(kinds.last().map(|k| k.as_str()), Some("IEND"));
        // IEND's CRC is a well-known constant, which checks the CRC computation itself
        assert_eq!(&png[png.len() - 12..], b"\0\0\0\0IEND\xae\x42\x60\x82");
        assert_eq!(&ihdr[8..], &[8, 2, 0, 0, 0]);
        let (w, h) = (be(&ihdr[0..]), be(&ihdr[4..]));
        let mut raw = vec![];
        ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .expect("valid zlib stream");
        let stride = 1 + 3 * w as usize;
        assert_eq!(raw.len(), h as usize * stride);
        let px = raw.chunks(stride).flat_map(|line| line[1..].to_vec()).collect();
        (w, h, px)
    }

    fn line(points: Vec<(f64, f64)>, color: usize, mark: Mark) -> Series {
        Series {
            label: String::new(),
            points,
            paint: Paint::Palette(color),
            mark,
        }
    }

    fn panel(log_x: bool, log_y: bool, series: Vec<Series>) -> Panel {
        Panel {
            title: "title".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x,
            log_y,
            series,
            scale: None,
        }
    }

    /// Pixels of exactly `c`, as (x, y), in the region x < `x_max`.
    fn pixels_of(px: &[u8], w: u32, c: RGBColor, x_max: u32) -> Vec<(u32, u32)> {
        px.chunks(3)
            .enumerate()
            .map(|(i, p)| ((i as u32 % w, i as u32 / w), p))
            .filter(|((x, _), p)| *x < x_max && p[..] == [c.0, c.1, c.2])
            .map(|(at, _)| at)
            .collect()
    }

    #[test]
    fn png_round_trip() {
        let p = panel(false, false, vec![line(vec![(0.0, 1.0), (1.0, 3.0)], 0, Mark::Line)]);
        let png = render_png(std::slice::from_ref(&p), 1, 321, 203).unwrap();
        let (w, h, px) = decode(&png);
        assert_eq!((w, h), (321, 203));
        assert_eq!(px, render_rgb(&[p], 1, 321, 203).unwrap());
    }

    #[test]
    fn the_bundled_font_sets_text_without_any_installed_font() {
        // the title alone differs between these two: its pixels must be dark ink at the top
        let mut a = panel(false, false, vec![]);
        let b = a.clone();
        a.title = "IsoFLOP profiles: N_opt = 1.2e3 C^0.5 (αβ ≈ ±)".into();
        let (pa, pb) = (
            render_rgb(&[a], 1, 600, 400).unwrap(),
            render_rgb(&[b], 1, 600, 400).unwrap(),
        );
        let changed: Vec<usize> = (0..pa.len() / 3)
            .filter(|&i| pa[3 * i..3 * i + 3] != pb[3 * i..3 * i + 3])
            .collect();
        assert!(changed.len() > 400, "only {} pixels of title", changed.len());
        assert!(changed.iter().all(|&i| i / 600 < 60), "title pixels below the top band");
        let dark = changed
            .iter()
            .filter(|&&i| pa[3 * i..3 * i + 3].iter().all(|&v| v < 100))
            .count();
        assert!(dark > 100, "{dark} dark title pixels");
    }

    /// y = 3 x^-0.5 is a straight line on log-log axes and a curve on linear ones: the centres of
    /// the line's pixels per column lie within 1.5 pixels of their least-squares line only in the
    /// first case.
    #[test]
    fn a_power_law_is_straight_on_log_log_axes() {
        let pts: Vec<(f64, f64)> = (0..=60)
            .map(|i| 10f64.powf(3.0 + i as f64 * 0.1))
            .map(|x| (x, 3.0 * x.powf(-0.5)))
            .collect();
        let deviation = |log: bool| {
            let p = panel(log, log, vec![line(pts.clone(), 3, Mark::Line)]);
            let (w, h) = (800, 600);
            let px = render_rgb(&[p], 1, w, h).unwrap();
            let hits = pixels_of(&px, w, PALETTE[3], w);
            assert!(hits.len() > 300, "{} pixels", hits.len());
            let mut cols: std::collections::BTreeMap<u32, (f64, f64)> = Default::default();
            for (x, y) in hits {
                let e = cols.entry(x).or_default();
                e.0 += y as f64;
                e.1 += 1.0;
            }
            let c: Vec<(f64, f64)> = cols.iter().map(|(&x, &(s, n))| (x as f64, s / n)).collect();
            let n = c.len() as f64;
            let (mx, my) = (
                c.iter().map(|p| p.0).sum::<f64>() / n,
                c.iter().map(|p| p.1).sum::<f64>() / n,
            );
            let b = c.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>()
                / c.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
            c.iter().map(|p| (p.1 - my - b * (p.0 - mx)).abs()).fold(0.0, f64::max)
        };
        let straight = deviation(true);
        assert!(straight < 2.5, "log-log: {straight} px off a line");
        let curved = deviation(false);
        assert!(curved > 20.0, "linear axes: only {curved} px off a line");
    }

    #[test]
    fn points_take_the_colour_of_their_value() {
        let scale = ColorScale::spanning("C", [1.0, 100.0], true);
        assert!((scale.position(10.0) - 0.5).abs() < 1e-12);
        let render = |values: Vec<f64>| {
            let pts: Vec<(f64, f64)> = (0..values.len()).map(|i| (i as f64, i as f64)).collect();
            let mut p = panel(false, false, vec![]);
            p.series.push(Series {
                label: "runs".into(),
                points: pts,
                paint: Paint::Values(values),
                mark: Mark::Dots,
            });
            p.scale = Some(scale.clone());
            render_rgb(&[p], 1, 800, 500).unwrap()
        };
        // left of the colour bar, each value's colour is there only
        // when a point has that value
        let (ends, all) = (render(vec![1.0, 100.0]), render(vec![1.0, 10.0, 100.0]));
        let plot_w = 800 - text_sizes(800, 500).2 * 6;
        let count = |px: &[u8], v: f64| pixels_of(px, 800, scale.color(v), plot_w).len();
        assert!(
            count(&ends, 1.0) > 20 && count(&ends, 100.0) > 20,
            "{} {} {:?}",
            count(&ends, 1.0),
            count(&ends, 100.0),
            scale.color(1.0)
        );
        assert_eq!(count(&ends, 10.0), 0);
        assert!(count(&all, 10.0) > 20);
        // and the colour bar runs from one end of the scale to the other
        let bar = |v: f64| pixels_of(&ends, 800, scale.color(v), 800).len() - count(&ends, v);
        assert!(bar(1.0) > 0 && bar(100.0) > 0);
    }

    #[test]
    fn breaks_dashes_and_empty_panels() {
        let pts = |gap: bool| -> Vec<(f64, f64)> {
            (0..=100)
                .map(|i| {
                    (
                        i as f64,
                        if gap && (40..60).contains(&i) {
                            f64::NAN
                        } else {
                            i as f64
                        },
                    )
                })
                .collect()
        };
        let count = |s: Series| {
            let px = render_rgb(&[panel(false, false, vec![s])], 1, 500, 400).unwrap();
            pixels_of(&px, 500, PALETTE[5], 500).len()
        };
        let solid = count(line(pts(false), 5, Mark::Line));
        let dashed = count(line(pts(false), 5, Mark::Dashed));
        let broken = count(line(pts(true), 5, Mark::Line));
        assert!(
            dashed * 10 > solid * 3 && dashed * 10 < solid * 8,
            "dashed {dashed} vs solid {solid}"
        );
        assert!(
            broken * 10 > solid * 6 && broken * 10 < solid * 9,
            "broken {broken} vs solid {solid}"
        );
        // on a log axis, y <= 0 is skipped and the rest drawn
        let log: Vec<(f64, f64)> = (1..=100)
            .map(|i| (i as f64, if i < 50 { -1.0 } else { i as f64 }))
            .collect();
        let px = render_rgb(&[panel(false, true, vec![line(log, 5, Mark::Line)])], 1, 500, 400).unwrap();
        assert!(pixels_of(&px, 500, PALETTE[5], 500).len() > 100);
        // nothing to show: "no data", no series colour, no error
        let nan = line(vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)], 5, Mark::Line);
        assert_eq!(count(nan), 0);
    }

    #[test]
    fn tick_labels_are_compact() {
        let cases = [
            (0.0, "0"),
            (0.25, "0.25"),
            (3.5, "3.5"),
            (11.0, "11"),
            (250.0, "250"),
            (2500.0, "2.5k"),
            (1.2e6, "1.2M"),
            (3e9, "3B"),
            (1.5e12, "1.5T"),
            (3e-4, "3e-4"),
            (2e15, "2e15"),
            (-0.5, "-0.5"),
        ];
        for (v, want) in cases {
            assert_eq!(tick_label(v), want, "{v}");
        }
    }

    #[test]
    fn thinning_keeps_ends_extremes_and_breaks() {
        let mut pts: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, ((i * 7919) % 1000) as f64)).collect();
        pts[50_000].1 = f64::NAN;
        pts[70_123].1 = -5.0;
        let out = thin(&pts, 100, false);
        assert!(out.len() <= 4 * 101 + 1, "{}", out.len());
        assert_eq!(out.first(), pts.first());
        assert_eq!(out.last(), pts.last());
        assert!(out.contains(&(70_123.0, -5.0)));
        assert_eq!(out.iter().filter(|p| p.1.is_nan()).count(), 1);
        assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn the_legend_goes_where_the_data_is_not() {
        // data fills the top right and bottom left: the legend goes top left
        let mut pts: Vec<(f64, f64)> = (0..20).map(|i| (0.8 + i as f64 * 0.01, 0.9)).collect();
        pts.extend((0..20).map(|i| (0.1 + i as f64 * 0.01, 0.1)));
        let p = panel(false, false, vec![line(pts, 0, Mark::Dots)]);
        assert_eq!(
            legend_corner(&p, (0.0, 1.0), (0.0, 1.0)),
            SeriesLabelPosition::UpperLeft
        );
    }
}

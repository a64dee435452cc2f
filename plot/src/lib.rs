//! `baichuan-plot`: line charts of training runs, rendered to an RGB PNG without font files or
//! plotting crates. [`runs`] reads runs' `metrics.jsonl` and overlays their curves (what
//! `baichuan plot` draws); [`render_png`] draws any panels of series.
//!
//! Text is drawn with a built-in 5x9 bitmap font (printable ASCII, cap height 7 pixels plus a
//! 2-pixel descender), scaled by an integer factor, so no system fonts are needed. Each panel gets
//! a title, a frame, "nice" ticks (1, 2, 5 x 10^k steps, or powers of ten on a logarithmic y
//! axis) with grid lines and compact labels (`2.5k`, `1.2M`, `3B`, `3e-4`), axis labels,
//! anti-aliased lines about 2 pixels thick (solid or dashed; long series are reduced to at most
//! four points per pixel column), and a legend placed in the corner that hides the least data.
//! Unknown characters are drawn as a small box.
//!
//! The image is written per the PNG specification: signature, IHDR (8-bit RGB), one IDAT (zlib
//! stream via `flate2`, filter type 0 on every scanline) and IEND, each chunk followed by its
//! CRC-32 (via `crc32fast`).

use std::io::Write;

use flate2::{write::ZlibEncoder, Compression};

pub mod runs;
pub use runs::{plot_runs, PlotError};

type Rgb = [u8; 3];
/// Text scale and color.
type Style = (i64, Rgb);

/// Series colors (`Series::color` indexes this, wrapping around).
#[rustfmt::skip]
const PALETTE: [Rgb; 10] = [
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
];
const BG: Rgb = [255, 255, 255];
const INK: Rgb = [30, 30, 30];
const MUTED: Rgb = [90, 90, 90];
const GRID: Rgb = [228, 228, 228];
const FRAME: Rgb = [120, 120, 120];

/// One curve: `points` are (x, y) pairs joined in order; `color` indexes the palette.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: usize,
    pub dashed: bool,
}

/// One chart with its own axes; `log_y` makes the y axis logarithmic (base 10).
#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
}

/// Renders the panels in a grid of `cols` columns into a PNG image of width x height pixels.
pub fn render_png(panels: &[Panel], cols: usize, width: u32, height: u32) -> Vec<u8> {
    let (canvas, _) = render(panels, cols, width, height);
    encode_png(&canvas)
}

// ---------------------------------------------------------------------------------------------
// Bitmap font: glyph for ASCII 32 + i is FONT[i]; bit (row * 5 + 4 - col) is set when the pixel
// at (col, row) is ink. Rows 0..7 are the cap height, rows 7..9 the descender.

const GLYPH_W: i64 = 5;
const GLYPH_H: i64 = 9;
const ADVANCE: i64 = 6;
const LINE_H: i64 = 11;
const CAP_H: i64 = 7;
const BOX_GLYPH: u64 = 0x7e318c7e0;
#[rustfmt::skip]
const FONT: [u64; 95] = [
    0x0, 0x100421084, 0x294a, 0x295f57d4a, 0x13c5751e4, 0xe6820b38, 0x36554524c, 0x2084, 0x88842082, 0x208210888,
    0x9575480, 0x84f9080, 0x82318000000, 0xf8000, 0x318000000, 0x420820821, 0x3a39ace2e, 0x388421184, 0x7d041062e,
    0x3a211105f, 0x85f928c2, 0x3a210fa1f, 0x3a31f4106, 0x21082083f, 0x3a317462e, 0x30417c62e, 0x18c03180,
    0x4118c03180, 0x88882082, 0x1f07c00, 0x208208888, 0x10041062e, 0x3a17ade2e, 0x4631fc62e, 0x7a31f463e,
    0x3a308422e, 0x72518c65c, 0x7e10f421f, 0x4210f421f, 0x3e31bc22e, 0x4631fc631, 0x38842108e, 0x324210847,
    0x4654c5251, 0x7e1084210, 0x4631ad771, 0x4633ae631, 0x3a318c62e, 0x4210f463e, 0x36558c62e, 0x4654f463e,
    0x78217420f, 0x10842109f, 0x3a318c631, 0x11518c631, 0x2ab5ac631, 0x462a22a31, 0x108422a31, 0x7e082083f,
    0x39084210e, 0x42222210, 0x38421084e, 0x4544, 0xf800000000, 0x888, 0x3e2f0b800, 0x7a318fa10, 0x3a3083800,
    0x3e318bc21, 0x3a1f8b800, 0x2108e2126, 0xe0be318bc00, 0x4631cda10, 0x388423004, 0xc9084211802, 0x4a98a4a10,
    0x38842108c, 0x56b5ae800, 0x4631cd800, 0x3a318b800, 0x1087a318f800, 0x10be318bc00, 0x4210cd800, 0x782e83c00,
    0x192847108, 0x36718c400, 0x11518c400, 0x2ab58c400, 0x454454400, 0xe0be318c400, 0x7d0417c00, 0xc8441083,
    0x108421084, 0x608411098, 0x2aa000,
];

fn glyph(c: char) -> u64 {
    match c as u32 {
        32..=126 => FONT[c as usize - 32],
        _ => BOX_GLYPH,
    }
}

fn text_width(s: &str, scale: i64) -> i64 {
    let n = s.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * ADVANCE - 1) * scale
    }
}

/// Shortens `s` with a trailing ".." so that it fits in `max_w` pixels.
fn fit_text(s: &str, max_w: i64, scale: i64) -> String {
    if text_width(s, scale) <= max_w {
        return s.to_string();
    }
    let keep = (max_w / (ADVANCE * scale) - 2).max(0) as usize;
    s.chars().take(keep).collect::<String>() + ".."
}

// ---------------------------------------------------------------------------------------------
// Raster canvas and per-series coverage masks.

struct Canvas {
    w: i64,
    h: i64,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: u32, h: u32) -> Self {
        let (w, h) = (w.max(1) as i64, h.max(1) as i64);
        Canvas {
            w,
            h,
            px: vec![255; (w * h * 3) as usize],
        }
    }

    #[cfg(test)]
    fn get(&self, x: i64, y: i64) -> Rgb {
        let i = ((y * self.w + x) * 3) as usize;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    fn blend(&mut self, x: i64, y: i64, c: Rgb, a: f64) {
        if x < 0 || y < 0 || x >= self.w || y >= self.h || a <= 0.0 {
            return;
        }
        let i = ((y * self.w + x) * 3) as usize;
        let a = a.min(1.0);
        for (p, &c) in self.px[i..i + 3].iter_mut().zip(&c) {
            *p = (*p as f64 + (c as f64 - *p as f64) * a).round() as u8;
        }
    }

    fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb, a: f64) {
        for y in y0.max(0)..y1.min(self.h) {
            for x in x0.max(0)..x1.min(self.w) {
                self.blend(x, y, c, a);
            }
        }
    }

    /// 1-pixel outline of the pixels [x0, x1] x [y0, y1].
    fn outline(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        self.fill(x0, y0, x1 + 1, y0 + 1, c, 1.0);
        self.fill(x0, y1, x1 + 1, y1 + 1, c, 1.0);
        self.fill(x0, y0, x0 + 1, y1 + 1, c, 1.0);
        self.fill(x1, y0, x1 + 1, y1 + 1, c, 1.0);
    }

    /// Draws `s` with its top-left corner at (x, y) in the given (scale, color).
    fn text(&mut self, x: i64, y: i64, s: &str, st: Style) {
        self.glyphs(x, y, s, st, false);
    }

    /// Draws `s` rotated to run upwards from its bottom-left corner (x, y).
    fn vtext(&mut self, x: i64, y: i64, s: &str, st: Style) {
        self.glyphs(x, y, s, st, true);
    }

    fn glyphs(&mut self, x: i64, y: i64, s: &str, (k, c): Style, vertical: bool) {
        for (i, ch) in s.chars().enumerate() {
            let bits = glyph(ch);
            for (row, col) in (0..GLYPH_H).flat_map(|r| (0..GLYPH_W).map(move |c| (r, c))) {
                if (bits >> (row * GLYPH_W + GLYPH_W - 1 - col)) & 1 == 1 {
                    let (tx, ty) = ((i as i64 * ADVANCE + col) * k, row * k);
                    if vertical {
                        self.fill(x + ty, y - tx - k, x + ty + k, y - tx, c, 1.0);
                    } else {
                        self.fill(x + tx, y + ty, x + tx + k, y + ty + k, c, 1.0);
                    }
                }
            }
        }
    }

    fn composite(&mut self, m: &Mask, c: Rgb) {
        for y in 0..m.h {
            for x in 0..m.w {
                let a = m.cov[(y * m.w + x) as usize];
                if a > 0.0 {
                    self.blend(m.x0 + x, m.y0 + y, c, a as f64);
                }
            }
        }
    }
}

/// Dash pattern: (on length, off length) in pixels.
type Dash = Option<(f64, f64)>;

/// Anti-aliased coverage of one stroked polyline over a rectangle, combined with max so that
/// overlapping segments do not darken the edges.
struct Mask {
    x0: i64,
    y0: i64,
    w: i64,
    h: i64,
    cov: Vec<f32>,
}

impl Mask {
    fn new(x0: i64, y0: i64, x1: i64, y1: i64) -> Self {
        let (w, h) = ((x1 - x0).max(0), (y1 - y0).max(0));
        Mask {
            x0,
            y0,
            w,
            h,
            cov: vec![0.0; (w * h) as usize],
        }
    }

    /// Strokes the segment a-b (canvas coordinates, pixel centres at +0.5); `start` is the length
    /// of the path drawn before it, which keeps the dash pattern continuous.
    fn segment(&mut self, a: (f64, f64), b: (f64, f64), width: f64, dash: Dash, start: f64) {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        let len = len2.sqrt();
        let r = width / 2.0;
        let bx0 = ((a.0.min(b.0) - r - 1.0).floor() as i64).max(self.x0);
        let bx1 = ((a.0.max(b.0) + r + 1.0).ceil() as i64).min(self.x0 + self.w - 1);
        let by0 = ((a.1.min(b.1) - r - 1.0).floor() as i64).max(self.y0);
        let by1 = ((a.1.max(b.1) + r + 1.0).ceil() as i64).min(self.y0 + self.h - 1);
        for y in by0..=by1 {
            for x in bx0..=bx1 {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let t = if len2 > 0.0 {
                    (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let d = (px - a.0 - t * dx).hypot(py - a.1 - t * dy);
                let mut c = (r + 0.5 - d).clamp(0.0, 1.0);
                if let Some((on, off)) = dash {
                    if (start + t * len) % (on + off) > on {
                        c = 0.0;
                    }
                }
                let i = ((y - self.y0) * self.w + x - self.x0) as usize;
                self.cov[i] = self.cov[i].max(c as f32);
            }
        }
    }

    /// Total coverage inside the w x h rectangle at (x, y).
    fn sum(&self, x: i64, y: i64, w: i64, h: i64) -> f64 {
        let mut sum = 0.0;
        for yy in y.max(self.y0)..(y + h).min(self.y0 + self.h) {
            let base = (yy - self.y0) * self.w - self.x0;
            sum += (x.max(self.x0)..(x + w).min(self.x0 + self.w))
                .map(|xx| self.cov[(base + xx) as usize] as f64)
                .sum::<f64>();
        }
        sum
    }
}

// ---------------------------------------------------------------------------------------------
// Ranges, ticks and labels.

/// Pads a data range by `frac` of its span on both sides; a flat range gets `flat` on each side
/// (or 10% of its magnitude when `flat` is zero and the value is non-zero).
fn pad_range(lo: f64, hi: f64, frac: f64, flat: f64) -> (f64, f64) {
    let span = hi - lo;
    if span <= 1e-12 * lo.abs().max(hi.abs()) || span == 0.0 {
        let d = [flat, lo.abs() * 0.1, 1.0]
            .into_iter()
            .find(|&d| d > 0.0)
            .unwrap_or(1.0);
        return (lo - d, hi + d);
    }
    (lo - span * frac, hi + span * frac)
}

/// Ticks at multiples of a 1/2/5 x 10^k step inside [lo, hi], about `target` of them.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return (vec![], 0.0);
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = mag
        * [(1.5, 1.0), (3.0, 2.0), (7.0, 5.0)]
            .iter()
            .find(|l| norm < l.0)
            .map_or(10.0, |l| l.1);
    let k0 = (lo / step - 1e-9).ceil() as i64;
    let k1 = (hi / step + 1e-9).floor() as i64;
    ((k0..=k1).map(|k| k as f64 * step).collect(), step)
}

/// Tick values for a log axis spanning [lo, hi] in log10 units: powers of ten (every n-th when
/// there are many), or 1/2/5 x 10^k when the range holds at most two powers, else linear ticks.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (k0, k1) = ((lo - 1e-9).ceil() as i64, (hi + 1e-9).floor() as i64);
    let n = k1 - k0 + 1;
    if n >= 3 {
        let stride = (n + 5) / 6;
        return (k0..=k1)
            .filter(|k| k.rem_euclid(stride) == 0)
            .map(|k| 10f64.powi(k as i32))
            .collect();
    }
    let mut v = Vec::new();
    for k in (lo.floor() as i64)..=(hi.ceil() as i64) {
        for m in [1.0, 2.0, 5.0] {
            let t = m * 10f64.powi(k as i32);
            if (lo - 1e-9..=hi + 1e-9).contains(&t.log10()) {
                v.push(t);
            }
        }
    }
    if n == 2 || v.len() >= 2 {
        return v;
    }
    nice_ticks(10f64.powf(lo), 10f64.powf(hi), 3)
        .0
        .into_iter()
        .filter(|&t| t > 0.0)
        .collect()
}

/// "2.50" -> "2.5", "3.0" -> "3", "-0" -> "0".
fn trim_zeros(s: String) -> String {
    let t = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    if t == "-0" { "0" } else { t }.to_string()
}

/// Digits after the decimal point needed to show multiples of `step` exactly.
fn decimals_for(step: f64) -> usize {
    (0..12)
        .find(|&d| {
            let v = step * 10f64.powi(d as i32);
            (v - v.round()).abs() <= 1e-6 * v.max(1.0)
        })
        .unwrap_or(12)
}

/// Mantissa/exponent form such as `2.5e-4`, with enough mantissa digits for `step`.
fn sci(v: f64, step: f64) -> String {
    let mut e = v.abs().log10().floor() as i32;
    if (v.abs() / 10f64.powi(e)).round() >= 10.0 && (v.abs() / 10f64.powi(e) - 10.0).abs() < 1e-9 {
        e += 1;
    }
    let d = decimals_for(step / 10f64.powi(e)).min(6);
    format!("{}e{}", trim_zeros(format!("{:.*}", d, v / 10f64.powi(e))), e)
}

/// Labels for linear ticks spaced `step` apart, in one consistent style per axis: suffixes
/// (k, M, B, T) from 1000 up, plain decimals down to 0.001, mantissa/exponent below that.
fn tick_labels(ticks: &[f64], step: f64) -> Vec<String> {
    let max = ticks.iter().fold(0f64, |m, t| m.max(t.abs()));
    let units = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")];
    let suffix = units.iter().find(|(u, _)| max >= *u);
    ticks
        .iter()
        .map(|&v| {
            if v.abs() < step * 1e-6 {
                "0".to_string()
            } else if let Some(&(u, s)) = suffix {
                trim_zeros(format!("{:.*}", decimals_for(step / u), v / u)) + s
            } else if max >= 1e-3 {
                trim_zeros(format!("{:.*}", decimals_for(step), v))
            } else {
                sci(v, step)
            }
        })
        .collect()
}

/// Label for a log-axis tick: plain from 0.01 to 1000 (`0.1`, `10`), else `1e-3`, `2e5`.
fn log_label(v: f64) -> String {
    let e = v.log10().floor() as i32;
    if (-2..=3).contains(&e) {
        trim_zeros(format!("{:.*}", (2 - e).max(0) as usize + 1, v))
    } else {
        sci(v, 10f64.powi(e))
    }
}

// ---------------------------------------------------------------------------------------------
// Layout and drawing.

/// The plot area of a panel (pixels l..=r, t..=b) and the data range it shows (y in log10 units
/// when `log_y`).
#[derive(Clone, Copy, Debug)]
struct Axes {
    l: i64,
    t: i64,
    r: i64,
    b: i64,
    x: (f64, f64),
    y: (f64, f64),
    log_y: bool,
}

/// A y value in axis units (log10 on a log axis), or None when it cannot be shown.
fn axis_y(log_y: bool, y: f64) -> Option<f64> {
    let ok = y.is_finite() && (y > 0.0 || !log_y);
    ok.then(|| if log_y { y.log10() } else { y })
}

impl Axes {
    fn px(&self, x: f64) -> f64 {
        self.l as f64 + 0.5 + (x - self.x.0) / (self.x.1 - self.x.0) * (self.r - self.l) as f64
    }

    /// y in axis units (log10 already applied).
    fn py(&self, v: f64) -> f64 {
        self.b as f64 + 0.5 - (v - self.y.0) / (self.y.1 - self.y.0) * (self.b - self.t) as f64
    }

    fn map(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let v = axis_y(self.log_y, y)?;
        x.is_finite().then(|| (self.px(x), self.py(v)))
    }
}

fn render(panels: &[Panel], cols: usize, width: u32, height: u32) -> (Canvas, Vec<Axes>) {
    let mut cv = Canvas::new(width, height);
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let (cw, ch) = (cv.w / cols as i64, cv.h / rows as i64);
    let axes = panels
        .iter()
        .enumerate()
        .map(|(i, p)| draw_panel(&mut cv, p, (i % cols) as i64 * cw, (i / cols) as i64 * ch, cw, ch))
        .collect();
    (cv, axes)
}

/// Keeps at most four points (first, lowest, highest, last) of each run of points that fall in the
/// same pixel column, which draws nearly the same line much faster for long noisy series.
fn decimate(pts: impl Iterator<Item = Option<(f64, f64)>>) -> Vec<Option<(f64, f64)>> {
    let (mut out, mut run) = (vec![], Vec::<(f64, f64)>::new());
    let flush = |run: &mut Vec<(f64, f64)>, out: &mut Vec<Option<(f64, f64)>>| {
        let (lo, hi) = (0..run.len()).fold((0, 0), |(lo, hi), i| {
            (
                if run[i].1 < run[lo].1 { i } else { lo },
                if run[i].1 > run[hi].1 { i } else { hi },
            )
        });
        let mut keep = [0, lo, hi, run.len().saturating_sub(1)];
        keep.sort_unstable();
        let mut last = None;
        for i in keep.into_iter().filter(|&i| i < run.len()) {
            if last != Some(i) {
                out.push(Some(run[i]));
            }
            last = Some(i);
        }
        run.clear();
    };
    for p in pts {
        if run.last().is_some_and(|q| p.is_none_or(|p| p.0.floor() != q.0.floor())) {
            flush(&mut run, &mut out);
        }
        match p {
            Some(p) => run.push(p),
            None => out.push(None),
        }
    }
    flush(&mut run, &mut out);
    out
}

fn draw_panel(cv: &mut Canvas, p: &Panel, cx: i64, cy: i64, cw: i64, ch: i64) -> Axes {
    let s = if cw >= 480 && ch >= 300 { 2 } else { 1 };
    let (pad, lh, tick, ink, muted) = (5 * s, LINE_H * s, 3 * s, (s, INK), (s, MUTED));

    // Data in axis units, with None marking a break in the line.
    let at = |&(x, y): &(f64, f64)| axis_y(p.log_y, y).filter(|_| x.is_finite()).map(|v| (x, v));
    let data: Vec<Vec<_>> = p.series.iter().map(|se| se.points.iter().map(at).collect()).collect();
    let pts = || data.iter().flatten().flatten();
    let empty = pts().next().is_none();
    let (mut x, mut y) = ((0.0, 1.0), (0.0, 1.0));
    if !empty {
        let span = |f: fn(&(f64, f64)) -> f64| pts().map(f).fold((f64::MAX, f64::MIN), |r, v| (r.0.min(v), r.1.max(v)));
        let (xr, yr) = (span(|q| q.0), span(|q| q.1));
        x = pad_range(xr.0, xr.1, 0.02, 0.0);
        y = pad_range(yr.0, yr.1, 0.06, if p.log_y { 0.5 } else { 0.0 });
    }

    // Vertical layout, then y ticks (their labels set the left margin), then x ticks.
    let (t, b) = (
        cy + 2 * pad + lh,
        cy + ch - pad - if p.x_label.is_empty() { 0 } else { lh + s } - lh - tick,
    );
    let y_ticks: Vec<(f64, String)> = if empty {
        vec![]
    } else if p.log_y {
        log_ticks(y.0, y.1)
            .into_iter()
            .map(|v| (v.log10(), log_label(v)))
            .collect()
    } else {
        let (ticks, step) = nice_ticks(y.0, y.1, ((b - t) * 2 / (lh * 5)).clamp(3, 6) as usize);
        ticks.iter().copied().zip(tick_labels(&ticks, step)).collect()
    };
    let ylw = y_ticks.iter().map(|(_, l)| text_width(l, s)).max().unwrap_or(0);
    let l = cx + pad + if p.y_label.is_empty() { 0 } else { lh + pad } + ylw + tick + 2 * s;
    let r = cx + cw - pad - 2 * ADVANCE * s;
    let ax = Axes {
        l,
        t,
        r,
        b,
        x,
        y,
        log_y: p.log_y,
    };
    if r - l < 10 || b - t < 10 {
        return ax;
    }
    let mut x_ticks = vec![];
    for target in (2..=6).rev().take(if empty { 0 } else { 5 }) {
        let (ticks, step) = nice_ticks(x.0, x.1, target);
        let labels = tick_labels(&ticks, step);
        let need: i64 = labels.iter().map(|l| text_width(l, s) + 3 * ADVANCE * s).sum();
        x_ticks = ticks.into_iter().zip(labels).collect();
        if need <= r - l {
            break;
        }
    }

    // Grid, series, frame, tick labels.
    let grid_y = |v: f64| ax.py(v).floor() as i64;
    let grid_x = |v: f64| ax.px(v).floor() as i64;
    y_ticks
        .iter()
        .for_each(|(v, _)| cv.fill(l + 1, grid_y(*v), r, grid_y(*v) + 1, GRID, 1.0));
    x_ticks
        .iter()
        .for_each(|(v, _)| cv.fill(grid_x(*v), t + 1, grid_x(*v) + 1, b, GRID, 1.0));
    let (lw, dash) = (2.0 + 0.25 * s as f64, (6.0 * s as f64, 4.0 * s as f64));
    let mut occupied = Mask::new(l + 1, t + 1, r, b);
    for se in &p.series {
        let mut m = Mask::new(l + 1, t + 1, r, b);
        let (mut prev, mut dist) = (None, 0.0);
        for cur in decimate(se.points.iter().map(|&(x, y)| ax.map(x, y))) {
            match (prev, cur) {
                (Some(a), Some(c)) => {
                    m.segment(a, c, lw, se.dashed.then_some(dash), dist);
                    dist += (c.0 - a.0).hypot(c.1 - a.1);
                }
                (None, Some(c)) => m.segment(c, c, lw, None, 0.0),
                _ => {}
            }
            prev = cur;
        }
        cv.composite(&m, PALETTE[se.color % PALETTE.len()]);
        occupied.cov.iter_mut().zip(&m.cov).for_each(|(o, c)| *o = o.max(*c));
    }
    cv.outline(l, t, r, b, FRAME);
    for (v, label) in &y_ticks {
        let py = grid_y(*v);
        cv.fill(l - tick, py, l, py + 1, FRAME, 1.0);
        cv.text(
            l - tick - 2 * s - text_width(label, s),
            py - CAP_H * s / 2,
            label,
            muted,
        );
    }
    for (v, label) in &x_ticks {
        let (px, w) = (grid_x(*v), text_width(label, s));
        cv.fill(px, b + 1, px + 1, b + 1 + tick, FRAME, 1.0);
        cv.text((px - w / 2).clamp(cx, cx + cw - w), b + tick + 2 * s, label, muted);
    }

    // Title (bold by double striking), axis labels, "no data", legend.
    let title = fit_text(&p.title, cw - 2 * pad, s);
    let tx = cx + (cw - text_width(&title, s)) / 2;
    cv.text(tx, cy + pad, &title, ink);
    cv.text(tx + 1, cy + pad, &title, ink);
    let xl = fit_text(&p.x_label, r - l, s);
    cv.text((l + r - text_width(&xl, s)) / 2, cy + ch - pad - 9 * s, &xl, ink);
    let yl = fit_text(&p.y_label, b - t, s);
    cv.vtext(cx + pad, (t + b + text_width(&yl, s)) / 2, &yl, ink);
    if empty {
        cv.text(
            (l + r - text_width("no data", s)) / 2,
            (t + b - CAP_H * s) / 2,
            "no data",
            muted,
        );
    } else {
        draw_legend(cv, p, &ax, &occupied, s, lw, dash);
    }
    ax
}

/// Legend box in the corner of the plot area where it covers the fewest drawn line pixels
/// (`occupied`), preferring top right, then top left, bottom right, bottom left.
fn draw_legend(cv: &mut Canvas, p: &Panel, ax: &Axes, occupied: &Mask, s: i64, lw: f64, dash: (f64, f64)) {
    let entries: Vec<&Series> = p.series.iter().filter(|se| !se.label.is_empty()).collect();
    let (pad, lh, sample, m) = (5 * s, LINE_H * s, 18 * s, 4 * s);
    let max_label = (ax.r - ax.l) / 2 - sample - 3 * pad;
    let labels: Vec<String> = entries.iter().map(|se| fit_text(&se.label, max_label, s)).collect();
    let Some(widest) = labels.iter().map(|l| text_width(l, s)).max() else {
        return;
    };
    let (bw, bh) = (
        3 * pad + sample + widest,
        2 * pad + entries.len() as i64 * lh - (lh - CAP_H * s),
    );
    let (left, top, right, bottom) = (ax.l + m + 1, ax.t + m, ax.r - m - bw, ax.b - m - bh);
    let corners = [(right, top), (left, top), (right, bottom), (left, bottom)];
    let cost = |i: usize| (1.0 + 0.25 * i as f64) * occupied.sum(corners[i].0, corners[i].1, bw, bh);
    let (bx, by) = corners[(0..4).min_by(|&i, &j| cost(i).total_cmp(&cost(j))).unwrap_or(0)];
    cv.fill(bx, by, bx + bw, by + bh, BG, 0.88);
    cv.outline(bx, by, bx + bw - 1, by + bh - 1, FRAME);
    for (i, (se, label)) in entries.iter().zip(&labels).enumerate() {
        let ty = by + pad + i as i64 * lh;
        let mut mk = Mask::new(bx + pad, ty, bx + pad + sample, ty + CAP_H * s);
        let (x0, x1, mid) = (
            (bx + pad + 1) as f64,
            (bx + pad + sample - 1) as f64,
            (ty + CAP_H * s / 2) as f64 + 0.5,
        );
        mk.segment(
            (x0, mid),
            (x1, mid),
            lw,
            se.dashed.then_some((dash.0 * 0.75, dash.1 * 0.75)),
            0.0,
        );
        cv.composite(&mk, PALETTE[se.color % PALETTE.len()]);
        cv.text(bx + 2 * pad + sample, ty, label, (s, INK));
    }
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

fn encode_png(cv: &Canvas) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(cv.w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(cv.h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive filtering, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    let mut raw = Vec::with_capacity(cv.px.len() + cv.h as usize);
    for row in cv.px.chunks(cv.w as usize * 3) {
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
        // IEND's CRC is a well-known constant, which checks the CRC computation itself.
        assert_eq!(&png[png.len() - 12..], b"\0\0\0\0IEND\xae\x42\x60\x82");
        assert_eq!(ihdr.len(), 13);
        assert_eq!(&ihdr[8..], &[8, 2, 0, 0, 0]);
        let (w, h) = (be(&ihdr[0..]), be(&ihdr[4..]));
        let mut raw = vec![];
        ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .expect("valid zlib stream");
        let stride = 1 + 3 * w as usize;
        assert_eq!(raw.len(), h as usize * stride);
        let mut px = vec![];
        for line in raw.chunks(stride) {
            assert!(line[0] <= 4, "invalid filter type {}", line[0]);
            assert_eq!(line[0], 0, "encoder only uses filter None");
            px.extend_from_slice(&line[1..]);
        }
        (w, h, px)
    }

    fn series(points: Vec<(f64, f64)>, color: usize, dashed: bool) -> Series {
        Series {
            label: String::new(),
            points,
            color,
            dashed,
        }
    }

    fn panel(log_y: bool, series: Vec<Series>) -> Panel {
        let (t, x, y) = ("title".to_string(), "step".to_string(), "value".to_string());
        Panel {
            title: t,
            x_label: x,
            y_label: y,
            log_y,
            series,
        }
    }

    #[test]
    fn png_round_trip() {
        let panels = vec![
            panel(false, vec![series(vec![(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)], 0, false)]),
            panel(true, vec![series(vec![(0.0, 1e-3), (1.0, 1e-1)], 1, true)]),
            panel(false, vec![]),
        ];
        let png = render_png(&panels, 2, 333, 211);
        let (w, h, px) = decode(&png);
        assert_eq!((w, h), (333, 211));
        assert_eq!(px, render(&panels, 2, 333, 211).0.px);
        assert!(
            png.len() < 333 * 211 * 3 / 4,
            "compression should shrink a mostly white image"
        );
        let (w, h, px) = decode(&render_png(&[], 3, 10, 5));
        assert_eq!((w, h), (10, 5));
        assert!(px.iter().all(|&b| b == 255));
    }

    #[test]
    fn ticks() {
        assert_eq!(nice_ticks(0.0, 97.0, 5), (vec![0.0, 20.0, 40.0, 60.0, 80.0], 20.0));
        assert_eq!(nice_ticks(-1.0, 1.0, 4), (vec![-1.0, -0.5, 0.0, 0.5, 1.0], 0.5));
        let (t, step) = nice_ticks(0.00012, 0.00031, 5);
        assert!((step - 5e-5).abs() < 1e-18, "{step}");
        let want = [1.5e-4, 2e-4, 2.5e-4, 3e-4];
        assert_eq!(t.len(), want.len());
        assert!(t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-15), "{t:?}");
        assert!(nice_ticks(3.2, 3.2, 5).0.is_empty());
        assert_eq!(log_ticks(-6.0, 0.0), vec![1e-6, 1e-4, 1e-2, 1.0]);
        assert_eq!(log_ticks(-3.5, 0.2), vec![1e-3, 1e-2, 1e-1, 1.0]);
        assert_eq!(log_ticks(-5.1, -3.2), vec![1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4]);
        assert_eq!(pad_range(0.5, 0.5, 0.06, 0.0), (0.45, 0.55));
        assert_eq!(pad_range(0.0, 0.0, 0.06, 0.0), (-1.0, 1.0));
        assert_eq!(pad_range(0.0, 10.0, 0.1, 0.0), (-1.0, 11.0));
    }

    #[test]
    fn labels() {
        let l = |t: &[f64], step| tick_labels(t, step);
        assert_eq!(l(&[0.0, 500.0, 1000.0, 2500.0], 500.0), ["0", "0.5k", "1k", "2.5k"]);
        assert_eq!(l(&[1.1e6, 1.2e6], 1e5), ["1.1M", "1.2M"]);
        assert_eq!(l(&[0.0, 1.5e9, 2e9], 5e8), ["0", "1.5B", "2B"]);
        assert_eq!(l(&[1.5e-4, 3e-4], 5e-5), ["1.5e-4", "3e-4"]);
        assert_eq!(l(&[0.0, 0.0005, 0.001], 0.0005), ["0", "0.0005", "0.001"]);
        assert_eq!(l(&[-1.0, -0.5, 0.0, 0.5], 0.5), ["-1", "-0.5", "0", "0.5"]);
        assert_eq!(l(&[20.0, 40.0, 60.0], 20.0), ["20", "40", "60"]);
        let logs: Vec<String> = [1e-3, 10.0, 0.1, 1.0, 2e-5, 1e5, 0.01]
            .iter()
            .map(|&v| log_label(v))
            .collect();
        assert_eq!(logs, ["1e-3", "10", "0.1", "1", "2e-5", "1e5", "0.01"]);
    }

    #[test]
    fn font() {
        assert_eq!(glyph(' '), 0);
        assert!(FONT.iter().skip(1).all(|&g| g != 0 && g >> (GLYPH_W * GLYPH_H) == 0));
        assert_eq!(glyph('\u{e9}'), BOX_GLYPH);
        assert_eq!(text_width("abc", 2), 34);
        assert_eq!(fit_text("abcdefghij", 40, 1), "abcd..");
        let mut cv = Canvas::new(20, 12);
        cv.text(1, 1, "IL", (1, INK)); // "I": top bar .###., stem in column 2; "L": stem in column 0
        assert_eq!(
            (cv.get(2, 1), cv.get(1, 1), cv.get(3, 4), cv.get(2, 4)),
            (INK, BG, INK, BG)
        );
        assert_eq!(
            (cv.get(7, 1), cv.get(11, 1), cv.get(11, 7), cv.get(8, 6)),
            (INK, BG, INK, BG)
        );
    }

    #[test]
    fn diagonal_line_is_drawn_in_its_color() {
        let color = 2;
        let p = panel(
            false,
            vec![series((0..=10).map(|i| (i as f64, i as f64)).collect(), color, false)],
        );
        let (cv, axes) = render(&[p], 1, 400, 300);
        let ax = axes[0];
        let near = |x: f64, y: f64, c: Rgb| {
            let (px, py) = ax.map(x, y).unwrap();
            let (px, py) = (px.floor() as i64, py.floor() as i64);
            (-1..=1).any(|dy| (-1..=1).any(|dx| cv.get(px + dx, py + dy) == c))
        };
        let col = PALETTE[color];
        for t in [0.5, 2.5, 5.0, 7.5, 9.5] {
            assert!(near(t, t, col), "line missing at {t}");
        }
        for (x, y) in [(2.0, 8.0), (8.0, 2.0), (1.0, 6.0)] {
            assert!(!near(x, y, col), "stray color at ({x}, {y})");
            let (px, py) = ax.map(x, y).unwrap();
            assert!([BG, GRID].contains(&cv.get(px as i64, py as i64)));
        }
        // Independent of `Axes::map`: x spans [-0.2, 10.2] (2% margin), y spans [-0.6, 10.6] (6%).
        let rows_with = |x: i64| (ax.t..ax.b).filter(|&y| cv.get(x, y) == col).collect::<Vec<_>>();
        for fx in [0.25, 0.5, 0.75] {
            let x = ax.l + ((ax.r - ax.l) as f64 * fx) as i64;
            let want = ax.t as f64 + (ax.b - ax.t) as f64 * (10.6 - (-0.2 + 10.4 * fx)) / 11.2;
            let got = rows_with(x);
            assert!(
                !got.is_empty() && got.iter().all(|&y| (y as f64 - want).abs() < 3.0),
                "{got:?} vs {want}"
            );
        }
        assert!(ax.l > 0 && ax.r < 400 && ax.t > 0 && ax.b < 300 && ax.y.0 < 0.0 && ax.y.1 > 10.0);
        assert_eq!(cv.get(0, 0), BG);
        assert_eq!(cv.get(399, 299), BG);
        let count = cv.px.chunks(3).filter(|p| *p == col).count();
        assert!(count > 300, "only {count} line pixels");
    }

    #[test]
    fn decimation_keeps_extremes_and_breaks() {
        let col = |x: f64, ys: &[f64]| ys.iter().map(move |&y| Some((x, y))).collect::<Vec<_>>();
        let mut pts = col(10.2, &[5.0, 9.0, 1.0, 7.0, 3.0, 4.0]);
        pts.push(None);
        pts.extend(col(10.7, &[2.0, 2.5]).into_iter().chain(col(11.1, &[8.0])));
        let want = [
            Some((10.2, 5.0)),
            Some((10.2, 9.0)),
            Some((10.2, 1.0)),
            Some((10.2, 4.0)),
            None,
        ];
        assert_eq!(
            decimate(pts.into_iter()),
            [&want[..], &col(10.7, &[2.0, 2.5]), &col(11.1, &[8.0])].concat()
        );
    }

    #[test]
    fn breaks_dashes_and_empty_panels() {
        let pts = |f: &dyn Fn(f64) -> f64| (0..=100).map(|i| (i as f64, f(i as f64))).collect::<Vec<_>>();
        let col = PALETTE[5];
        let count = |cv: &Canvas| cv.px.chunks(3).filter(|p| *p == col).count();
        let solid = render(&[panel(false, vec![series(pts(&|x| x), 5, false)])], 1, 400, 300).0;
        let dashed = render(&[panel(false, vec![series(pts(&|x| x), 5, true)])], 1, 400, 300).0;
        let (cs, cd) = (count(&solid), count(&dashed));
        assert!(cd * 10 > cs * 4 && cd * 10 < cs * 8, "dashed {cd} vs solid {cs}");
        // On a log axis, y <= 0 and NaN points are skipped and the range comes from the rest.
        let log = pts(&|x| {
            if x < 50.0 {
                -x
            } else if x == 70.0 {
                f64::NAN
            } else {
                x
            }
        });
        let (cv, axes) = render(&[panel(true, vec![series(log, 5, false)])], 1, 400, 300);
        assert!(axes[0].y.0 > 1.6 && axes[0].y.0 < 50f64.log10() && axes[0].y.1 > 2.0);
        assert!(count(&cv) > 100);
        let (px, py) = axes[0].map(70.0, 70.0).unwrap();
        assert_ne!(cv.get(px as i64, py as i64), col, "NaN must break the line");
        // No usable points: "no data" in muted ink near the centre, no series color.
        let nan = vec![series(vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)], 5, false)];
        let (cv, axes) = render(&[panel(false, nan)], 1, 400, 300);
        let ax = axes[0];
        let (mx, my) = ((ax.l + ax.r) / 2, (ax.t + ax.b) / 2);
        assert!((mx - 25..mx + 25).any(|x| (my - 5..my + 5).any(|y| cv.get(x, y) == MUTED)));
        assert_eq!(count(&cv), 0);
    }
}

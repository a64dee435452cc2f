//! Scaling-law fits of final loss against parameters N and training tokens D.
//!
//! Approach 3 of Hoffmann et al. (2022, "Training Compute-Optimal Large Language Models"), as
//! Besiroglu et al. (2024, "Chinchilla Scaling: A Replication Attempt") redo it: the law
//! `L(N, D) = E + A / N^alpha + B / D^beta` is fitted in log space, `log L = LSE(a - alpha log N,
//! b - beta log D, e)` with `A = e^a, B = e^b, E = e^e`, by minimising the Huber loss
//! (delta 1e-3) of the residuals with L-BFGS from a grid of starting points, keeping the best.
//! Confidence intervals come from a bootstrap over the data points (each refit starts from the
//! full fit). From the law: the compute-optimal N and D for a budget C = 6ND (Hoffmann et al.'s
//! FLOP count), and the predicted loss of any (N, D).
//!
//! Approach 2: for each IsoFLOP profile (runs of one compute budget), a parabola of loss in
//! log N, whose vertex is that budget's optimal N; power laws N_opt = k C^a and D_opt = C /
//! (6 N_opt) fitted through the vertices by least squares in log space.

use baichuan_data::hash::{splitmix64, GOLDEN};
use serde::Serialize;

/// One finished run: non-embedding parameters, training tokens, final loss, and its compute
/// (6ND when not given).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub params: f64,
    pub tokens: f64,
    pub loss: f64,
    pub flops: f64,
}

/// The fitted law `E + A / N^alpha + B / D^beta`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Law {
    pub e: f64,
    pub a: f64,
    pub b: f64,
    pub alpha: f64,
    pub beta: f64,
}

impl Law {
    pub fn loss(&self, n: f64, d: f64) -> f64 {
        self.e + self.a / n.powf(self.alpha) + self.b / d.powf(self.beta)
    }

    /// The N and D of least loss at compute `c` = 6ND.
    pub fn optimum(&self, c: f64) -> (f64, f64) {
        let (al, be) = (self.alpha, self.beta);
        let g = (al * self.a / (be * self.b)).powf(1.0 / (al + be));
        let n = g * (c / 6.0).powf(be / (al + be));
        (n, c / 6.0 / n)
    }

    fn from_theta(t: &[f64; 5]) -> Self {
        Law {
            a: t[0].exp(),
            b: t[1].exp(),
            e: t[2].exp(),
            alpha: t[3],
            beta: t[4],
        }
    }

    fn theta(&self) -> [f64; 5] {
        [self.a.ln(), self.b.ln(), self.e.ln(), self.alpha, self.beta]
    }
}

/// The Huber loss of the log-space residuals and its gradient in theta = (a, b, e, alpha, beta).
fn objective(t: &[f64; 5], pts: &[Point], delta: f64) -> (f64, [f64; 5]) {
    let mut f = 0.0;
    let mut g = [0.0; 5];
    for p in pts {
        let (ln, ld) = (p.params.ln(), p.tokens.ln());
        let terms = [t[0] - t[3] * ln, t[1] - t[4] * ld, t[2]];
        let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let ex: Vec<f64> = terms.iter().map(|x| (x - m).exp()).collect();
        let s: f64 = ex.iter().sum();
        let lse = m + s.ln();
        let r = lse - p.loss.ln();
        let (h, dh) = if r.abs() <= delta {
            (0.5 * r * r, r)
        } else {
            (delta * (r.abs() - 0.5 * delta), delta * r.signum())
        };
        f += h;
        let w = [ex[0] / s, ex[1] / s, ex[2] / s];
        g[0] += dh * w[0];
        g[1] += dh * w[1];
        g[2] += dh * w[2];
        g[3] -= dh * w[0] * ln;
        g[4] -= dh * w[1] * ld;
    }
    (f, g)
}

fn dot(a: &[f64; 5], b: &[f64; 5]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// L-BFGS (Nocedal and Wright 2006, algorithm 7.4) with a backtracking Armijo line search,
/// from `x`; returns the point and its objective.
fn lbfgs(mut x: [f64; 5], pts: &[Point], delta: f64) -> ([f64; 5], f64) {
    const MEMORY: usize = 10;
    let (mut f, mut g) = objective(&x, pts, delta);
    let mut hist: Vec<([f64; 5], [f64; 5], f64)> = Vec::new(); // (s, y, 1 / y.s)
    for _ in 0..1000 {
        if dot(&g, &g).sqrt() < 1e-12 {
            break;
        }
        // two-loop recursion: d = -H g
        let mut q = g;
        let mut alphas = Vec::with_capacity(hist.len());
        for (s, y, rho) in hist.iter().rev() {
            let a = rho * dot(s, &q);
            for i in 0..5 {
                q[i] -= a * y[i];
            }
            alphas.push(a);
        }
        let gamma = hist.last().map_or(1.0, |(s, y, _)| dot(s, y) / dot(y, y));
        let mut r = q.map(|v| v * gamma);
        for ((s, y, rho), a) in hist.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &r);
            for i in 0..5 {
                r[i] += s[i] * (a - b);
            }
        }
        let mut d = r.map(|v| -v);
        if dot(&d, &g) >= 0.0 {
            d = g.map(|v| -v); // not a descent direction: steepest descent, forget the history
            hist.clear();
        }
        let mut step = 1.0;
        let slope = dot(&d, &g);
        let (mut xn, mut fnew, mut gn);
        loop {
            xn = std::array::from_fn(|i| x[i] + step * d[i]);
            (fnew, gn) = objective(&xn, pts, delta);
            if fnew <= f + 1e-4 * step * slope || step < 1e-20 {
                break;
            }
            step *= 0.5;
        }
        if fnew.is_nan() || step < 1e-20 {
            break;
        }
        let s: [f64; 5] = std::array::from_fn(|i| xn[i] - x[i]);
        let y: [f64; 5] = std::array::from_fn(|i| gn[i] - g[i]);
        let ys = dot(&y, &s);
        if ys > 1e-300 {
            hist.push((s, y, 1.0 / ys));
            if hist.len() > MEMORY {
                hist.remove(0);
            }
        }
        let done = (f - fnew).abs() <= 1e-15 * f.abs().max(1e-300);
        (x, f, g) = (xn, fnew, gn);
        if done {
            break;
        }
    }
    (x, f)
}

/// Hoffmann et al.'s grid of starting points: alpha, beta in {0, 0.5, .., 2}, e in {-1, -0.5,
/// .., 1}, a, b in {0, 5, .., 25}.
fn grid() -> Vec<[f64; 5]> {
    let mut v = Vec::new();
    for a in (0..6).map(|i| i as f64 * 5.0) {
        for b in (0..6).map(|i| i as f64 * 5.0) {
            for e in (0..5).map(|i| -1.0 + i as f64 * 0.5) {
                for al in (0..5).map(|i| i as f64 * 0.5) {
                    for be in (0..5).map(|i| i as f64 * 0.5) {
                        v.push([a, b, e, al, be]);
                    }
                }
            }
        }
    }
    v
}

/// The Huber loss's delta of Hoffmann et al.
pub const HUBER_DELTA: f64 = 1e-3;

/// Approach 3 from every grid start; the best law and its objective.
pub fn fit_law(pts: &[Point]) -> Result<(Law, f64), String> {
    check(pts)?;
    let starts = grid();
    let best = std::thread::scope(|scope| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);
        let chunk = starts.len().div_ceil(threads);
        let handles: Vec<_> = starts
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|&s| lbfgs(s, pts, HUBER_DELTA))
                        .filter(|(_, f)| f.is_finite())
                        .min_by(|x, y| x.1.total_cmp(&y.1))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("fit thread"))
            .min_by(|x, y| x.1.total_cmp(&y.1))
    });
    let (theta, f) = best.ok_or("no start converged to a finite loss")?;
    Ok((Law::from_theta(&theta), f))
}

fn check(pts: &[Point]) -> Result<(), String> {
    if pts.len() < 5 {
        return Err(format!("{} data points for 5 parameters; HINT: add runs", pts.len()));
    }
    if let Some(p) = pts
        .iter()
        .find(|p| !(p.params > 0.0 && p.tokens > 0.0 && p.loss > 0.0 && p.loss.is_finite()))
    {
        return Err(format!(
            "a point with params {}, tokens {}, loss {}: all must be positive and finite",
            p.params, p.tokens, p.loss
        ));
    }
    Ok(())
}

/// A parameter's estimate and bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// Approach 3 with a bootstrap: the law, and for each of its parameters the percentile
/// interval of `level` (e.g. 0.95) over `resamples` refits of points drawn with replacement.
#[derive(Debug, Clone, Serialize)]
pub struct LawFit {
    pub law: Law,
    pub huber: f64,
    pub e: Estimate,
    pub a: Estimate,
    pub b: Estimate,
    pub alpha: Estimate,
    pub beta: Estimate,
    pub resamples: usize,
    pub level: f64,
    /// Every refit's law, for intervals of derived quantities.
    #[serde(skip)]
    pub boot: Vec<Law>,
}

impl LawFit {
    /// A quantity of the law with its bootstrap interval.
    pub fn interval(&self, f: impl Fn(&Law) -> f64) -> Estimate {
        let mut v: Vec<f64> = self.boot.iter().map(&f).filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        let tail = (1.0 - self.level) / 2.0;
        Estimate {
            value: f(&self.law),
            low: if v.is_empty() { f64::NAN } else { q(tail) },
            high: if v.is_empty() { f64::NAN } else { q(1.0 - tail) },
        }
    }
}

/// Fits `pts` (Approach 3) and bootstraps `resamples` refits, seeded by `seed`.
pub fn fit_with_bootstrap(pts: &[Point], resamples: usize, level: f64, seed: u64) -> Result<LawFit, String> {
    let (law, huber) = fit_law(pts)?;
    let start = law.theta();
    let mut state = seed ^ 0x5ca1_ab1e;
    let mut next = move || {
        state = state.wrapping_add(GOLDEN);
        splitmix64(state)
    };
    let samples: Vec<Vec<Point>> = (0..resamples)
        .map(|_| {
            (0..pts.len())
                .map(|_| pts[(next() % pts.len() as u64) as usize])
                .collect()
        })
        .collect();
    let boot: Vec<Law> = std::thread::scope(|scope| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);
        let chunk = samples.len().div_ceil(threads).max(1);
        let handles: Vec<_> = samples
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|s| Law::from_theta(&lbfgs(start, s, HUBER_DELTA).0))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("bootstrap thread"))
            .collect()
    });
    let mut fit = LawFit {
        law,
        huber,
        e: Estimate {
            value: 0.0,
            low: 0.0,
            high: 0.0,
        },
        a: Estimate {
            value: 0.0,
            low: 0.0,
            high: 0.0,
        },
        b: Estimate {
            value: 0.0,
            low: 0.0,
            high: 0.0,
        },
        alpha: Estimate {
            value: 0.0,
            low: 0.0,
            high: 0.0,
        },
        beta: Estimate {
            value: 0.0,
            low: 0.0,
            high: 0.0,
        },
        resamples,
        level,
        boot,
    };
    fit.e = fit.interval(|l| l.e);
    fit.a = fit.interval(|l| l.a);
    fit.b = fit.interval(|l| l.b);
    fit.alpha = fit.interval(|l| l.alpha);
    fit.beta = fit.interval(|l| l.beta);
    Ok(fit)
}

/// One IsoFLOP profile's parabola `loss = c0 + c1 x + c2 x^2`, x = ln N, and its vertex.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Profile {
    pub flops: f64,
    pub runs: usize,
    pub n_opt: f64,
    pub loss_at_opt: f64,
    pub curvature: f64,
}

/// Approach 2's result: the profiles and the power laws through their vertices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IsoFlopFit {
    pub profiles: Vec<Profile>,
    /// Profiles left out, and why (a parabola that opens downwards has no minimum).
    pub skipped: Vec<String>,
    /// N_opt = n_coef * C^n_exp.
    pub n_coef: f64,
    pub n_exp: f64,
}

impl IsoFlopFit {
    pub fn optimum(&self, c: f64) -> (f64, f64) {
        let n = self.n_coef * c.powf(self.n_exp);
        (n, c / 6.0 / n)
    }
}

/// The points in IsoFLOP profiles: sorted by compute, each group's within 5% of its first (whole
/// steps make a planned budget inexact).
pub fn group_by_compute(pts: &[Point]) -> Vec<Vec<Point>> {
    let mut sorted = pts.to_vec();
    sorted.sort_by(|a, b| a.flops.total_cmp(&b.flops));
    let mut groups: Vec<Vec<Point>> = Vec::new();
    for p in sorted {
        match groups.last_mut() {
            Some(g) if (p.flops / g[0].flops - 1.0).abs() <= 0.05 => g.push(p),
            _ => groups.push(vec![p]),
        }
    }
    groups
}

/// Groups points whose compute agrees within 5% (whole steps make a planned budget inexact)
/// into profiles of at least 3 runs, fits a parabola in ln N to each (least squares), leaves
/// out those with no minimum, and fits a line through the vertices in log-log space.
pub fn fit_isoflop(pts: &[Point]) -> Result<IsoFlopFit, String> {
    let groups = group_by_compute(pts);
    let mut profiles = Vec::new();
    let mut skipped = Vec::new();
    for g in groups.iter().filter(|g| g.len() >= 3) {
        let xs: Vec<f64> = g.iter().map(|p| p.params.ln()).collect();
        let ys: Vec<f64> = g.iter().map(|p| p.loss).collect();
        let Some([c0, c1, c2]) = quadratic_fit(&xs, &ys) else {
            skipped.push(format!("{:.3e} FLOPs: the sizes are too few or equal", g[0].flops));
            continue;
        };
        if c2 <= 0.0 {
            skipped.push(format!(
                "{:.3e} FLOPs: not convex in log N (curvature {c2:.3e}); widen its sizes around the optimum",
                g[0].flops
            ));
            continue;
        }
        let x = -c1 / (2.0 * c2);
        profiles.push(Profile {
            flops: g.iter().map(|p| p.flops).sum::<f64>() / g.len() as f64,
            runs: g.len(),
            n_opt: x.exp(),
            loss_at_opt: c0 + c1 * x + c2 * x * x,
            curvature: c2,
        });
    }
    if profiles.len() < 2 {
        return Err(format!(
            "{} usable IsoFLOP profile(s) of at least 3 runs{}; Approach 2 needs 2 or more budgets",
            profiles.len(),
            if skipped.is_empty() {
                String::new()
            } else {
                format!(" ({})", skipped.join("; "))
            }
        ));
    }
    let lx: Vec<f64> = profiles.iter().map(|p| p.flops.ln()).collect();
    let ly: Vec<f64> = profiles.iter().map(|p| p.n_opt.ln()).collect();
    let (k, slope) = line_fit(&lx, &ly);
    Ok(IsoFlopFit {
        profiles,
        skipped,
        n_coef: k.exp(),
        n_exp: slope,
    })
}

/// Least-squares `y = c0 + c1 x + c2 x^2` through the normal equations (x centred for
/// conditioning).
fn quadratic_fit(xs: &[f64], ys: &[f64]) -> Option<[f64; 3]> {
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    let mut s = [[0.0f64; 4]; 3];
    for (&x, &y) in xs.iter().zip(ys) {
        let u = x - m;
        let row = [1.0, u, u * u];
        for i in 0..3 {
            for j in 0..3 {
                s[i][j] += row[i] * row[j];
            }
            s[i][3] += row[i] * y;
        }
    }
    // Gaussian elimination with partial pivoting
    for c in 0..3 {
        let p = (c..3).max_by(|&a, &b| s[a][c].abs().total_cmp(&s[b][c].abs()))?;
        s.swap(c, p);
        if s[c][c].abs() < 1e-12 {
            return None;
        }
        let pivot = s[c];
        for (r, row) in s.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                for (x, p) in row.iter_mut().zip(&pivot).skip(c) {
                    *x -= f * p;
                }
            }
        }
    }
    let (d0, d1, d2) = (s[0][3] / s[0][0], s[1][3] / s[1][1], s[2][3] / s[2][2]);
    // back from u = x - m: d0 + d1 (x - m) + d2 (x - m)^2
    Some([d0 - d1 * m + d2 * m * m, d1 - 2.0 * d2 * m, d2])
}

/// Least-squares line `y = k + slope x`.
fn line_fit(xs: &[f64], ys: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let slope = sxy / sxx;
    (my - slope * mx, slope)
}

/// Reads `params,tokens,loss[,flops]` CSV text (a header line naming the columns first).
pub fn read_csv(text: &str, name: &str) -> Result<Vec<Point>, String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .ok_or(format!("{name}: empty; HINT: a header params,tokens,loss[,flops]"))?;
    let cols: Vec<String> = header.split(',').map(|c| c.trim().to_lowercase()).collect();
    let col = |want: &str| cols.iter().position(|c| c == want);
    let (Some(ip), Some(it), Some(il)) = (col("params"), col("tokens"), col("loss")) else {
        return Err(format!(
            "{name}: the header {header:?} lacks params, tokens or loss; HINT: columns params,tokens,loss[,flops]"
        ));
    };
    let iflops = col("flops");
    let mut pts = Vec::new();
    for (i, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let num = |j: usize, what: &str| -> Result<f64, String> {
            cells
                .get(j)
                .and_then(|c| c.parse::<f64>().ok())
                .ok_or(format!("{name}:{}: {what} is not a number in {line:?}", i + 1))
        };
        let (params, tokens, loss) = (num(ip, "params")?, num(it, "tokens")?, num(il, "loss")?);
        let flops = match iflops {
            Some(j) => num(j, "flops")?,
            None => 6.0 * params * tokens,
        };
        pts.push(Point {
            params,
            tokens,
            loss,
            flops,
        });
    }
    Ok(pts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hoffmann et al.'s published Approach 3 law (their equation 10).
    const CHINCHILLA: Law = Law {
        e: 1.69,
        a: 406.4,
        b: 410.7,
        alpha: 0.34,
        beta: 0.28,
    };

    /// Points on an N x D grid from `law`, each loss times exp(noise), noise ~ N(0, sd^2) from a
    /// Box-Muller of a seeded splitmix64.
    fn synthetic(law: &Law, sd: f64, seed: u64) -> Vec<Point> {
        let mut state = seed;
        let mut u = move || {
            state = state.wrapping_add(GOLDEN);
            (splitmix64(state) >> 11) as f64 / (1u64 << 53) as f64 + 1e-300
        };
        let mut pts = Vec::new();
        for i in 0..8 {
            for j in 0..8 {
                let n = 1e7 * 10f64.powf(i as f64 * 0.5);
                let d = 1e9 * 10f64.powf(j as f64 * 0.4);
                let z = (-2.0 * u().ln()).sqrt() * (2.0 * std::f64::consts::PI * u()).cos();
                pts.push(Point {
                    params: n,
                    tokens: d,
                    loss: law.loss(n, d) * (sd * z).exp(),
                    flops: 6.0 * n * d,
                });
            }
        }
        pts
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let pts = synthetic(&CHINCHILLA, 0.01, 3);
        let t = [5.0, 5.5, 0.4, 0.3, 0.25];
        let (_, g) = objective(&t, &pts, HUBER_DELTA);
        for i in 0..5 {
            let h = 1e-6;
            let mut up = t;
            let mut down = t;
            up[i] += h;
            down[i] -= h;
            let fd = (objective(&up, &pts, HUBER_DELTA).0 - objective(&down, &pts, HUBER_DELTA).0) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() <= 1e-6 * fd.abs().max(1e-3),
                "theta {i}: {fd} vs {}",
                g[i]
            );
        }
    }

    #[test]
    fn noiseless_points_give_back_the_law() {
        let (law, f) = fit_law(&synthetic(&CHINCHILLA, 0.0, 1)).unwrap();
        assert!(f < 1e-12, "{f}");
        for (got, want) in [
            (law.e, CHINCHILLA.e),
            (law.a, CHINCHILLA.a),
            (law.b, CHINCHILLA.b),
            (law.alpha, CHINCHILLA.alpha),
            (law.beta, CHINCHILLA.beta),
        ] {
            assert!((got / want - 1.0).abs() < 1e-3, "{law:?}");
        }
    }

    #[test]
    fn noisy_points_give_intervals_that_hold_the_truth() {
        let fit = fit_with_bootstrap(&synthetic(&CHINCHILLA, 0.01, 7), 100, 0.95, 5).unwrap();
        for (name, est, truth) in [
            ("E", fit.e, CHINCHILLA.e),
            ("A", fit.a, CHINCHILLA.a),
            ("B", fit.b, CHINCHILLA.b),
            ("alpha", fit.alpha, CHINCHILLA.alpha),
            ("beta", fit.beta, CHINCHILLA.beta),
        ] {
            assert!(est.low <= truth && truth <= est.high, "{name}: {est:?} vs {truth}");
            assert!(est.low < est.high, "{name}: {est:?}");
        }
    }

    #[test]
    fn the_optimum_balances_the_two_terms_as_the_closed_form_says() {
        // at the optimum, alpha A / N^alpha = beta B / D^beta (the derivative along 6ND = C)
        let c = 5.76e23; // Chinchilla's budget
        let (n, d) = CHINCHILLA.optimum(c);
        assert!((6.0 * n * d / c - 1.0).abs() < 1e-12);
        let lhs = CHINCHILLA.alpha * CHINCHILLA.a / n.powf(CHINCHILLA.alpha);
        let rhs = CHINCHILLA.beta * CHINCHILLA.b / d.powf(CHINCHILLA.beta);
        assert!((lhs / rhs - 1.0).abs() < 1e-9, "{lhs} {rhs}");
        // and no neighbour on the same budget is lower
        for f in [0.9, 1.1] {
            assert!(CHINCHILLA.loss(n * f, d / f) > CHINCHILLA.loss(n, d));
        }
    }

    #[test]
    fn isoflop_vertices_follow_the_law_s_optimum() {
        // profiles sampled from the law itself: each parabola's vertex is near the law's optimum
        let mut pts = Vec::new();
        let budgets = [1e19, 1e20, 1e21];
        for &c in &budgets {
            let (n0, _) = CHINCHILLA.optimum(c);
            for k in -4..=4 {
                let n = n0 * 10f64.powf(k as f64 * 0.15);
                let d = c / 6.0 / n;
                pts.push(Point {
                    params: n,
                    tokens: d,
                    loss: CHINCHILLA.loss(n, d),
                    flops: c,
                });
            }
        }
        let fit = fit_isoflop(&pts).unwrap();
        assert_eq!(fit.profiles.len(), 3);
        for (p, &c) in fit.profiles.iter().zip(&budgets) {
            let (n0, _) = CHINCHILLA.optimum(c);
            assert!((p.n_opt / n0 - 1.0).abs() < 0.05, "{c:e}: {} vs {n0}", p.n_opt);
        }
        // the law's exponent: N_opt ~ C^(beta / (alpha + beta)) = C^0.4516
        let want = CHINCHILLA.beta / (CHINCHILLA.alpha + CHINCHILLA.beta);
        assert!((fit.n_exp - want).abs() < 0.01, "{} vs {want}", fit.n_exp);
    }

    #[test]
    fn the_published_chinchilla_points_give_the_replication_s_fit() {
        // Besiroglu et al. (2024) fit Approach 3 to the 245 runs they extracted from Hoffmann et
        // al.'s Figure 4, without the 5 of highest loss; their notebook's result (same
        // objective and starting grid, scipy's L-BFGS-B): E 1.817236, A 477.8417, B 2143.864,
        // alpha 0.347313, beta 0.367183 (data/scaling/README.md)
        let text = include_str!("../../data/scaling/chinchilla-fig4.csv");
        let mut pts = read_csv(text, "chinchilla-fig4.csv").unwrap();
        assert_eq!(pts.len(), 245);
        let mut losses: Vec<f64> = pts.iter().map(|p| p.loss).collect();
        losses.sort_by(f64::total_cmp);
        let cut = losses[losses.len() - 5];
        pts.retain(|p| p.loss < cut);
        assert_eq!(pts.len(), 240);
        let (law, _) = fit_law(&pts).unwrap();
        eprintln!("chinchilla fig. 4 fit: {law:?}");
        for (name, got, want, tol) in [
            ("E", law.e, 1.817_236, 1e-3),
            ("A", law.a, 477.8417, 1e-3),
            ("B", law.b, 2143.864, 1e-3),
            ("alpha", law.alpha, 0.347_313, 1e-3),
            ("beta", law.beta, 0.367_183, 1e-3),
        ] {
            assert!((got / want - 1.0).abs() < tol, "{name}: {got} vs {want}");
        }
    }

    #[test]
    fn csv_errors_name_the_line() {
        let pts = read_csv("params,tokens,loss\n1e6,2e7,3.5\n2e6,4e7,3.2\n", "x.csv").unwrap();
        assert_eq!(pts.len(), 2);
        assert_eq!(pts[0].flops, 6.0 * 1e6 * 2e7);
        let err = read_csv("params,tokens,loss\n1e6,abc,3.5\n", "x.csv").unwrap_err();
        assert!(err.contains("x.csv:2") && err.contains("tokens"), "{err}");
        assert!(read_csv("n,d,l\n", "x.csv").unwrap_err().contains("HINT"));
    }
}

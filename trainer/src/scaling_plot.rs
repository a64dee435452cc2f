//! The charts of a scaling fit (`baichuan scaling fit --plot`), as panels for `baichuan-plot`:
//! IsoFLOP profiles (the runs coloured by compute, Approach 2's parabolas and their minima,
//! Approach 3's law along each profile, and its compute-optimal frontier), the compute-optimal
//! model size against compute (both approaches, with the Approach 3 bootstrap interval), and
//! fitted against measured loss (coloured by tokens per parameter). Hoffmann et al. (2022)
//! draw their Figure 3 the same way.

use baichuan_plot::{ColorScale, Mark, Paint, Panel, Series};

use crate::scaling::{group_by_compute, IsoFlopFit, LawFit, Point};

/// The smallest and largest of `values` (infinity and minus infinity when there are none).
fn extent(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)))
}

/// `k` points spaced evenly in log between `lo` and `hi`.
fn log_grid(lo: f64, hi: f64, k: usize) -> Vec<f64> {
    let (a, b) = (lo.ln(), hi.ln());
    (0..k)
        .map(|i| (a + (b - a) * i as f64 / (k - 1) as f64).exp())
        .collect()
}

/// Least-squares `ln D = a + b ln N` through a profile's runs: how its token count falls as its
/// model grows (the project's FLOP formula is not 6ND, so this is read off the runs).
fn tokens_along(profile: &[Point]) -> Option<(f64, f64)> {
    let n = profile.len() as f64;
    let xs: Vec<f64> = profile.iter().map(|p| p.params.ln()).collect();
    let ys: Vec<f64> = profile.iter().map(|p| p.tokens.ln()).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let b = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum::<f64>() / sxx;
    Some((my - b * mx, b))
}

/// The three panels of a fit of `pts`: Approach 3 (`fit`), Approach 2 when it was fitted
/// (`iso`), and the compute budgets asked about (`budgets`, marked on the second panel).
pub fn panels(pts: &[Point], fit: &LawFit, iso: Option<&IsoFlopFit>, budgets: &[f64]) -> Vec<Panel> {
    let flops = ColorScale::spanning("FLOPs", pts.iter().map(|p| p.flops), true);
    let mut profiles = Panel {
        title: "IsoFLOP profiles".into(),
        x_label: "parameters (non-embedding)".into(),
        y_label: "validation loss".into(),
        log_x: true,
        series: vec![Series {
            label: "runs".into(),
            points: pts.iter().map(|p| (p.params, p.loss)).collect(),
            paint: Paint::Values(pts.iter().map(|p| p.flops).collect()),
            mark: Mark::Dots,
        }],
        scale: Some(flops),
        ..Panel::default()
    };
    // each profile's N range, a third wider on each side
    let range = |runs: &[Point]| {
        let (lo, hi) = extent(runs.iter().map(|p| p.params));
        (hi > lo).then(|| log_grid(lo / 1.5, hi * 1.5, 60))
    };
    // Approach 3 along every profile of two or more sizes (whether or not Approach 2 fitted it)
    let mean = |runs: &[Point]| runs.iter().map(|p| p.flops).sum::<f64>() / runs.len() as f64;
    let groups = group_by_compute(pts);
    let mut first = true;
    for runs in &groups {
        let (Some(grid), Some((a, b))) = (range(runs), tokens_along(runs)) else {
            continue;
        };
        let flops = mean(runs);
        profiles.series.push(Series {
            label: if first { "Approach 3 law".into() } else { String::new() },
            points: grid
                .iter()
                .map(|&n| (n, fit.law.loss(n, (a + b * n.ln()).exp())))
                .collect(),
            paint: Paint::Value(flops),
            mark: Mark::Dashed,
        });
        first = false;
    }
    if let Some(iso) = iso {
        for (i, prof) in iso.profiles.iter().enumerate() {
            // the profile's runs: the group whose mean compute it is
            let runs = groups.iter().find(|g| (mean(g) / prof.flops - 1.0).abs() < 1e-9);
            let Some(grid) = runs.and_then(|g| range(g)) else {
                continue;
            };
            // Approach 2: loss = loss_at_opt + curvature (ln N - ln N_opt)^2
            let parabola = grid
                .iter()
                .map(|&n| (n, prof.loss_at_opt + prof.curvature * (n / prof.n_opt).ln().powi(2)))
                .collect();
            profiles.series.push(Series {
                label: if i == 0 {
                    "Approach 2 parabola".into()
                } else {
                    String::new()
                },
                points: parabola,
                paint: Paint::Value(prof.flops),
                mark: Mark::Line,
            });
        }
        profiles.series.push(Series {
            label: "profile minima".into(),
            points: iso.profiles.iter().map(|p| (p.n_opt, p.loss_at_opt)).collect(),
            paint: Paint::Ink,
            mark: Mark::Crosses,
        });
    }
    // the fitted frontier: Approach 3's compute-optimal (N, loss) across the runs' compute
    let (f_lo, f_hi) = extent(pts.iter().map(|p| p.flops));
    if f_hi > 0.0 {
        let frontier = log_grid(f_lo, f_hi.max(f_lo * 1.01), 60)
            .into_iter()
            .map(|c| {
                let (n, d) = fit.law.optimum(c);
                (n, fit.law.loss(n, d))
            })
            .collect();
        profiles.series.push(Series {
            label: "Approach 3 frontier (C = 6ND)".into(),
            points: frontier,
            paint: Paint::Ink,
            mark: Mark::Line,
        });
    }

    // N_opt against C, over the data's compute and the budgets asked about, a factor 3 wider
    let cs = pts.iter().map(|p| p.flops).chain(budgets.iter().copied());
    let (c_lo, c_hi) = extent(cs);
    let grid = log_grid(c_lo / 3.0, c_hi * 3.0, 80);
    let mut optimal = Panel {
        title: "compute-optimal model size".into(),
        x_label: "compute (FLOPs)".into(),
        y_label: "N_opt (parameters)".into(),
        log_x: true,
        log_y: true,
        ..Panel::default()
    };
    let interval: Vec<_> = grid.iter().map(|&c| (c, fit.interval(|l| l.optimum(c).0))).collect();
    optimal.series.push(Series {
        label: "Approach 3 (C = 6ND)".into(),
        points: interval.iter().map(|(c, e)| (*c, e.value)).collect(),
        paint: Paint::Palette(3),
        mark: Mark::Line,
    });
    if fit.resamples > 0 {
        let level = (100.0 * fit.level).round();
        for (k, side) in [
            |e: &crate::scaling::Estimate| e.low,
            |e: &crate::scaling::Estimate| e.high,
        ]
        .into_iter()
        .enumerate()
        {
            optimal.series.push(Series {
                label: if k == 0 {
                    format!("{level}% interval")
                } else {
                    String::new()
                },
                points: interval.iter().map(|(c, e)| (*c, side(e))).collect(),
                paint: Paint::Palette(3),
                mark: Mark::Dashed,
            });
        }
    }
    if let Some(iso) = iso {
        optimal.series.push(Series {
            label: format!("Approach 2: N_opt = {:.3e} C^{:.3}", iso.n_coef, iso.n_exp),
            points: grid.iter().map(|&c| (c, iso.optimum(c).0)).collect(),
            paint: Paint::Palette(0),
            mark: Mark::Line,
        });
        optimal.series.push(Series {
            label: "profile minima".into(),
            points: iso.profiles.iter().map(|p| (p.flops, p.n_opt)).collect(),
            paint: Paint::Ink,
            mark: Mark::Crosses,
        });
    }
    if !budgets.is_empty() {
        optimal.series.push(Series {
            label: "budgets asked".into(),
            points: budgets.iter().map(|&c| (c, fit.law.optimum(c).0)).collect(),
            paint: Paint::Palette(1),
            mark: Mark::Dots,
        });
    }

    // fitted against measured loss, coloured by tokens per parameter
    let (l_lo, l_hi) = extent(pts.iter().map(|p| p.loss));
    let ratio: Vec<f64> = pts.iter().map(|p| p.tokens / p.params).collect();
    let residuals = Panel {
        title: "Approach 3 fit against the runs".into(),
        x_label: "measured loss".into(),
        y_label: "fitted loss".into(),
        series: vec![
            Series {
                label: "fitted = measured".into(),
                points: vec![(l_lo, l_lo), (l_hi, l_hi)],
                paint: Paint::Ink,
                mark: Mark::Dashed,
            },
            Series {
                label: "runs".into(),
                points: pts.iter().map(|p| (p.loss, fit.law.loss(p.params, p.tokens))).collect(),
                paint: Paint::Values(ratio.clone()),
                mark: Mark::Dots,
            },
        ],
        scale: Some(ColorScale::spanning("D/N", ratio, true)),
        ..Panel::default()
    };
    vec![profiles, optimal, residuals]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::{fit_isoflop, fit_with_bootstrap, Law};

    /// Three IsoFLOP profiles of five runs each from a known law (C = 6ND, no noise).
    fn synthetic() -> (Law, Vec<Point>) {
        let law = Law {
            e: 1.8,
            a: 400.0,
            b: 1800.0,
            alpha: 0.34,
            beta: 0.28,
        };
        let mut pts = Vec::new();
        for c in [1e18, 1e19, 1e20] {
            let (n0, _) = law.optimum(c);
            for k in -2..=2 {
                let n = n0 * 2f64.powi(k);
                let d = c / (6.0 * n);
                pts.push(Point {
                    params: n,
                    tokens: d,
                    loss: law.loss(n, d),
                    flops: c,
                });
            }
        }
        (law, pts)
    }

    #[test]
    fn the_panels_follow_the_fits_they_draw() {
        let (law, pts) = synthetic();
        let fit = fit_with_bootstrap(&pts, 8, 0.9, 3).unwrap();
        let iso = fit_isoflop(&pts).unwrap();
        let panels = panels(&pts, &fit, Some(&iso), &[1e21]);
        assert_eq!(panels.len(), 3);
        let [profiles, optimal, residuals] = &panels[..] else {
            unreachable!()
        };

        // every run once, coloured by its compute on a log scale spanning the three budgets
        let runs = &profiles.series[0];
        assert_eq!(runs.points.len(), 15);
        let scale = profiles.scale.as_ref().unwrap();
        assert_eq!((scale.min, scale.max, scale.log), (1e18, 1e20, true));
        assert!((scale.position(1e19) - 0.5).abs() < 1e-12);
        // each parabola bottoms out at its profile's minimum, which lies within a grid step
        // of the law's own optimum (its runs are spaced by 2x around it)
        let parabolas: Vec<&Series> = profiles
            .series
            .iter()
            .filter(|s| s.mark == Mark::Line && matches!(s.paint, Paint::Value(_)))
            .collect();
        assert_eq!(parabolas.len(), 3);
        for (s, prof) in parabolas.iter().zip(&iso.profiles) {
            let low = s
                .points
                .iter()
                .copied()
                .fold((0.0, f64::INFINITY), |m, p| if p.1 < m.1 { p } else { m });
            assert!((low.0 / prof.n_opt).ln().abs() < 0.1, "{low:?} vs {}", prof.n_opt);
            let truth = law.optimum(prof.flops).0;
            assert!((prof.n_opt / truth).ln().abs() < 0.2, "{} vs {truth}", prof.n_opt);
        }
        // the frontier passes by each profile's minimum (Approaches 2 and 3 agree on these points)
        let frontier = profiles
            .series
            .iter()
            .find(|s| s.label.starts_with("Approach 3 frontier"))
            .unwrap();
        for prof in &iso.profiles {
            let near = frontier
                .points
                .iter()
                .map(|&(n, l)| ((n / prof.n_opt).ln().abs(), (l - prof.loss_at_opt).abs()))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap();
            // (a parabola in ln N only approximates a profile of the law: within 1% of its loss)
            assert!(
                near.0 < 0.2 && near.1 < 0.01 * prof.loss_at_opt,
                "{near:?} from {prof:?}"
            );
        }
        // the law along each profile passes through its runs (they lie on it exactly)
        let along: Vec<&Series> = profiles.series.iter().filter(|s| s.mark == Mark::Dashed).collect();
        assert_eq!(along.len(), 3);
        for p in &pts {
            let s = along
                .iter()
                .zip(&iso.profiles)
                .find(|(_, prof)| (p.flops / prof.flops - 1.0).abs() < 0.05)
                .unwrap()
                .0;
            let near = s
                .points
                .iter()
                .min_by(|a, b| (a.0 / p.params).ln().abs().total_cmp(&(b.0 / p.params).ln().abs()))
                .unwrap();
            // the fitted law recovers the true one closely on noise-free points
            let want = law.loss(near.0, p.flops / (6.0 * near.0));
            assert!((near.1 - want).abs() < 5e-3, "{near:?} vs {want}");
        }

        // N_opt(C): Approach 3's line is the law's optimum, the budget asked sits on it
        let a3 = &optimal.series[0];
        for &(c, n) in a3.points.iter().step_by(10) {
            assert!((n / fit.law.optimum(c).0 - 1.0).abs() < 1e-9);
            assert!((n / law.optimum(c).0 - 1.0).abs() < 0.05, "{c:e}: {n:e}");
        }
        let asked = optimal.series.iter().find(|s| s.label == "budgets asked").unwrap();
        assert_eq!(asked.points.len(), 1);
        assert!((asked.points[0].1 / law.optimum(1e21).0 - 1.0).abs() < 0.05);
        let (low, high) = (&optimal.series[1], &optimal.series[2]);
        for ((l, m), h) in low.points.iter().zip(&a3.points).zip(&high.points) {
            assert!(
                l.1 <= m.1 * (1.0 + 1e-9) && m.1 <= h.1 * (1.0 + 1e-9),
                "{l:?} {m:?} {h:?}"
            );
        }

        // fitted against measured: on the diagonal, coloured by D/N
        let dots = &residuals.series[1];
        for (p, q) in pts.iter().zip(&dots.points) {
            assert_eq!(q.0, p.loss);
            assert!((q.1 - p.loss).abs() < 1e-3, "{q:?}");
        }
        match &dots.paint {
            Paint::Values(v) => assert_eq!(v[0], pts[0].tokens / pts[0].params),
            other => panic!("{other:?}"),
        }
        // the chart renders
        let png = baichuan_plot::render_png(&panels, 3, 1500, 500).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }

    #[test]
    fn without_approach_2_the_profiles_panel_shows_the_runs() {
        let (_, pts) = synthetic();
        let fit = fit_with_bootstrap(&pts, 0, 0.9, 3).unwrap();
        let panels = panels(&pts[..4], &fit, None, &[]);
        let marks: Vec<Mark> = panels[0].series.iter().map(|s| s.mark).collect();
        assert_eq!(
            marks,
            [Mark::Dots, Mark::Dashed, Mark::Line],
            "runs, the law along their profile, the frontier"
        );
        assert_eq!(panels[0].series[0].points.len(), 4);
        // no interval lines without bootstrap refits, no Approach 2 line
        assert_eq!(panels[1].series.len(), 1);
    }
}

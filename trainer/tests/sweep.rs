//! A micro scaling sweep end to end on CPU (README: "Scaling experiments"): `sweep plan` of two
//! IsoFLOP budgets x 3 sizes of tiny models on the bundled sample, `sweep run` of its runs and
//! their WSD decay branches (a run stopped part-way is resumed, a second `sweep run` does
//! nothing), `scaling fit --plan --plot` of all of them, and the SLURM script. A run whose loss blew
//! up is left out of the fit, saying so.

mod common;

use common::{run, run_ok};

#[test]
fn a_micro_isoflop_sweep_is_planned_run_and_fitted() {
    let dir = common::temp_dir("sweep");
    let out = dir.join("sweep");
    let out_s = out.to_str().unwrap();
    let text = run_ok(&[
        "sweep",
        "plan",
        "--config",
        "config/tiny.toml",
        "--set",
        "data.seq_len=32",
        "--set",
        "train.device=\"cpu\"",
        "--set",
        "eval.interval=1000",
        "--set",
        "train.log_interval=1000",
        "--budget",
        "1e11",
        "3e11",
        "--sizes",
        "3",
        "--size-step",
        "2.5",
        "--head-dim",
        "16",
        "--batch",
        "8",
        "--lr",
        "3e-3",
        "--out",
        out_s,
    ]);
    assert!(text.contains("GPU-hours"), "{text}");
    let plan: toml::Value = toml::from_str(&std::fs::read_to_string(out.join("plan.toml")).unwrap()).unwrap();
    let runs = plan["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6, "{text}");
    for r in runs {
        let budget = r["budget"].as_float().unwrap();
        let flops = r["flops"].as_float().unwrap();
        let steps = r["steps"].as_integer().unwrap() as f64;
        // whole steps: at most half a step from the budget
        assert!((flops / budget - 1.0).abs() <= 0.5 / (steps - 0.5), "{r}");
        assert_eq!(r["branches"].as_array().unwrap().len(), 2, "{r}");
        assert!(out.join(r["config"].as_str().unwrap()).exists());
    }
    // one run interrupted before the sweep starts: the sweep resumes it
    let first = runs[0]["config"].as_str().unwrap();
    let first_dir = out.join(runs[0]["run_dir"].as_str().unwrap());
    run_ok(&[
        "train",
        "--config",
        out.join(first).to_str().unwrap(),
        "--set",
        &format!("job.run_dir={:?}", first_dir.to_str().unwrap()),
        "--stop-after",
        "4",
    ]);
    let plan_path = out.join("plan.toml");
    let text = run_ok(&["sweep", "run", plan_path.to_str().unwrap()]);
    assert!(
        text.contains("resumed from") && text.contains("every run is finished"),
        "{text}"
    );
    assert_eq!(text.matches("decay branch: from").count(), 12, "{text}");
    // each run keeps its branch points and its last checkpoint, nothing else
    for r in runs {
        let ckpts = out.join(r["run_dir"].as_str().unwrap()).join("checkpoints");
        let mut kept: Vec<i64> = std::fs::read_dir(&ckpts)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
            .collect();
        kept.sort();
        let mut want: Vec<i64> = r["branches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_integer().unwrap())
            .collect();
        want.push(r["steps"].as_integer().unwrap());
        assert_eq!(kept, want, "{}", ckpts.display());
    }
    let again = run_ok(&["sweep", "run", plan_path.to_str().unwrap()]);
    assert_eq!(again.matches(" is finished\n").count(), 18, "{again}");
    // the fit over the 6 runs and 12 branches
    let json = dir.join("fit.json");
    let png = dir.join("fit.png");
    let text = run_ok(&[
        "scaling",
        "fit",
        "--plan",
        plan_path.to_str().unwrap(),
        "--bootstrap",
        "20",
        "--budget",
        "1e12",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    let fit: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let points = fit["points"].as_array().unwrap();
    assert_eq!(points.len(), 18, "{text}");
    let law = &fit["approach3"]["law"];
    for k in ["e", "a", "b", "alpha", "beta"] {
        assert!(law[k].as_f64().unwrap().is_finite(), "{law}");
    }
    assert!(text.contains("budget 1.000e12 FLOPs: N_opt"), "{text}");
    // the plot: a PNG of the default 2100 x 700 pixels
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(
        (&bytes[16..20], &bytes[20..24]),
        (&2100u32.to_be_bytes()[..], &700u32.to_be_bytes()[..])
    );
    // a cluster gets the same commands as an array script
    let script = dir.join("sweep.sbatch");
    run_ok(&[
        "sweep",
        "run",
        plan_path.to_str().unwrap(),
        "--slurm",
        script.to_str().unwrap(),
    ]);
    let s = std::fs::read_to_string(&script).unwrap();
    assert!(
        s.contains("#SBATCH --array=0-5") && s.matches("--decay-from").count() == 12,
        "{s}"
    );
}

#[test]
fn runs_whose_loss_blew_up_are_left_out_of_the_fit() {
    let dir = common::temp_dir("sweep-diverged");
    let good = dir.join("good");
    let bad = dir.join("bad");
    // the bad run's loss falls to 8 and ends at 10.5 (31% above), the good one's ends at 9.5
    for (d, last) in [(&good, 9.5), (&bad, 10.5)] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("config.toml"), "[train]\nsteps = 3\n").unwrap();
        std::fs::write(
            d.join("metrics.jsonl"),
            format!(
                "{{\"step\":1,\"tokens\":100,\"loss\":11.0,\"skipped_steps\":0}}\n\
                 {{\"step\":2,\"tokens\":200,\"loss\":8.0,\"skipped_steps\":0}}\n\
                 {{\"step\":3,\"tokens\":300,\"loss\":{last},\"skipped_steps\":0,\"valid_loss\":9.0}}\n"
            ),
        )
        .unwrap();
    }
    let csv = dir.join("points.csv");
    let mut rows = String::from("params,tokens,loss\n");
    for i in 0..8 {
        let n = 1e6 * 2f64.powi(i);
        let d = 2e7 * 1.5f64.powi(i % 4);
        rows.push_str(&format!(
            "{n},{d},{}\n",
            1.7 + 400.0 / n.powf(0.34) + 400.0 / d.powf(0.28)
        ));
    }
    std::fs::write(&csv, rows).unwrap();
    let (ok, text) = run(&[
        "scaling",
        "fit",
        "--csv",
        csv.to_str().unwrap(),
        "--run",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
        "--bootstrap",
        "5",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("left out {}: diverged", bad.display())),
        "{text}"
    );
    assert!(text.contains("9 points"), "{text}");
}

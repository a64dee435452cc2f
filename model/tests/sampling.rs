//! The sampling pipeline of `generate` against Hugging Face transformers' own logits processors
//! (repetition penalty, temperature, top-k, top-p, in `generate()`'s order) on the same logits
//! and histories, and seeded determinism of sampled generation.

mod common;

use baichuan_model::generate::{generate, processed_logits, Sampling};
use baichuan_model::{hf, Baichuan, ModelConfig};
use tch::{Device, Kind, Tensor};

#[test]
fn processed_logits_equal_transformers_processors() {
    let dir = common::temp("sampling", "processors");
    tch::manual_seed(17);
    let (n, v) = (6i64, 200i64);
    // spread logits (some negative, so the penalty multiplies them) and histories with repeats
    let logits = Tensor::randn([n, v], (Kind::Float, Device::Cpu)) * 3.0;
    let seen = Tensor::randint(v, [n, 12], (Kind::Int64, Device::Cpu));
    hf::write_safetensors(
        &[
            ("logits".into(), logits.shallow_clone()),
            ("seen".into(), seen.shallow_clone()),
        ],
        &dir.join("in.safetensors"),
    )
    .unwrap();
    for (temperature, top_k, top_p, penalty) in [
        (0.0, 0, 1.0, 1.3),  // greedy: the penalty alone
        (0.7, 0, 1.0, 1.0),  // temperature
        (1.0, 20, 1.0, 1.1), // top-k
        (0.9, 0, 0.8, 1.2),  // top-p
        (1.3, 50, 0.6, 1.5), // all of them
    ] {
        let s = Sampling {
            temperature,
            top_k,
            top_p,
            repetition_penalty: penalty,
            ..Sampling::default()
        };
        let args = [
            temperature.to_string(),
            top_k.to_string(),
            top_p.to_string(),
            penalty.to_string(),
        ];
        let mut argv: Vec<&std::ffi::OsStr> = vec![dir.as_os_str()];
        argv.extend(args.iter().map(|a| std::ffi::OsStr::new(a.as_str())));
        common::oracle("logits_processors.py", &argv);
        let want = hf::read_safetensors(&dir.join("out.safetensors")).unwrap().remove(0).1;
        assert_eq!(want.size(), vec![n, v]);
        let mut kept_total = 0;
        for row in 0..n {
            let history: Vec<i64> = Vec::try_from(seen.get(row)).unwrap();
            let ours = processed_logits(&logits.get(row), &history, &s);
            let theirs = want.get(row);
            // the same tokens filtered out (-inf), the rest equal
            let ours_kept = ours.isfinite();
            assert!(
                ours_kept.equal(&theirs.isfinite()),
                "{s:?} row {row}: other tokens filtered"
            );
            let kept = i64::try_from(ours_kept.sum(Kind::Int64)).unwrap();
            assert!(kept >= 1);
            kept_total += kept;
            let diff = (ours.masked_select(&ours_kept) - theirs.masked_select(&ours_kept))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff <= 1e-5, "{s:?} row {row}: logits differ by {diff}");
        }
        println!("{s:?}: {kept_total} of {} tokens kept, equal to transformers'", n * v);
    }
}

#[test]
fn sampled_generation_is_determined_by_its_seed() {
    let config = ModelConfig {
        vocab_size: 300,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        max_position_embeddings: 64,
        ..ModelConfig::tiny()
    };
    tch::manual_seed(3);
    let model = Baichuan::new(&config, Device::Cpu).unwrap();
    let run = |seed: u64| {
        let s = Sampling {
            temperature: 1.0,
            top_k: 100,
            top_p: 0.95,
            max_new_tokens: 30,
            stop_at_eos: false,
            seed,
            ..Sampling::default()
        };
        generate(&model, &[5, 17, 42], &s, |_| true).unwrap()
    };
    let a = run(1);
    assert_eq!(a.len(), 30);
    assert_eq!(run(1), a, "the same seed, the same tokens");
    assert_ne!(run(2), a, "another seed, other tokens");
}

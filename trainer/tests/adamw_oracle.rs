//! The flat AdamW (whole-buffer ops, coalesced weight-decay spans) against PyTorch's
//! `torch.optim.AdamW` on the same parameters and gradients for 5 steps, decay on matrices
//! only. The oracle runs in .venv.

mod common;

use baichuan_model::hf;
use baichuan_trainer::dist::comm::Solo;
use baichuan_trainer::optim::{AdamWParams, FlatAdamW};
use tch::{Device, Kind, Tensor};

#[test]
fn flat_adamw_equals_torch_adamw() {
    let dir = common::temp_dir("adamw");
    tch::manual_seed(21);
    let shapes: [(&str, &[i64]); 4] = [
        ("a.weight", &[7, 5]),
        ("b.norm", &[5]),
        ("c.weight", &[3, 11]),
        ("d.norm", &[11]),
    ];
    let init: Vec<(String, Tensor)> = shapes
        .iter()
        .map(|(n, s)| (n.to_string(), Tensor::randn(*s, (Kind::Float, Device::Cpu))))
        .collect();
    let params: Vec<Tensor> = init.iter().map(|(_, t)| t.copy().set_requires_grad(true)).collect();
    let named: Vec<(String, &Tensor)> = init.iter().map(|(n, _)| n.clone()).zip(params.iter()).collect();
    let total = params.iter().map(|p| p.numel()).sum::<usize>();
    let mut opt = FlatAdamW::new(&named, (0, total), &Solo).unwrap();
    let h = AdamWParams {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let steps = 5;

    let mut files: Vec<(String, Tensor)> = init.iter().map(|(n, t)| (format!("param.{n}"), t.copy())).collect();
    files.push((
        "hparams".into(),
        Tensor::from_slice(&[h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, steps as f64]).to_kind(Kind::Float),
    ));
    for s in 0..steps {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|p| Tensor::randn(p.size(), (Kind::Float, Device::Cpu)))
            .collect();
        let flat = Tensor::cat(&grads.iter().map(|g| g.view([-1])).collect::<Vec<_>>(), 0);
        for ((n, _), g) in init.iter().zip(&grads) {
            files.push((format!("grad{s}.{n}"), g.copy()));
        }
        opt.update(&flat, h);
    }
    hf::write_safetensors(&files, &dir.join("adamw_in.safetensors")).unwrap();
    let out = std::process::Command::new(common::python())
        .arg(common::root().join("scripts/reference/adamw_oracle.py"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = hf::read_safetensors(&dir.join("adamw_out.safetensors")).unwrap();
    for (name, w) in want {
        let i = init.iter().position(|(n, _)| *n == name).unwrap();
        let rel = ((&params[i] - &w).norm().double_value(&[])) / w.norm().double_value(&[]);
        println!("{name}: relative difference {rel:.2e}");
        assert!(rel <= 1e-6, "{name}: {rel:e}");
    }
}

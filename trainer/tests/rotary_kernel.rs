//! The training block with its rotation spliced out of autograd, against one autograd graph
//! of the whole model with the reference (Hugging Face) ops. Tests that need CUDA are
//! `#[ignore]`d (listed as not run on a CPU); scripts/gpu_check.sh runs them with
//! `--include-ignored`. With BAICHUAN_TEST_DEVICE=cuda
//! (scripts/gpu_check.sh) the rotation is the NVRTC kernel of cuda/kernels/rotary.cu, checked
//! first on its own against the reference rotation by ATen ops (fp32, bf16 and fp16, and a
//! gradient with transposed strides as attention's backward returns), then inside a whole
//! training step (fp32 and bf16); on the CPU the step runs with the ATen rotation.
//!
//! The cross-entropy kernel (cuda/kernels/cross_entropy.cu) is checked here too: against the ATen operator
//! (`cross_entropy_aten`, itself tested against ATen's `cross_entropy` with autograd) at the
//! real vocabulary and at odd row lengths, in the three dtypes, and inside the training step;
//! so is the SwiGLU kernel (against `SwigluAten`, and inside the step with the MLP product
//! spliced out of autograd).

use baichuan_cuda::{loss, rotary, swiglu};
use baichuan_model::{Baichuan, ModelConfig};
use baichuan_trainer::step;
use tch::{Device, Kind, Tensor};

fn device() -> Device {
    match std::env::var("BAICHUAN_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

/// The CUDA device of a test that needs one. Such tests are `#[ignore]`d, so a CPU run lists
/// them as not run; asked for explicitly (`--ignored`) without BAICHUAN_TEST_DEVICE=cuda they
/// fail rather than pass without checking anything.
fn cuda_device() -> Device {
    let dev = device();
    assert!(
        dev.is_cuda(),
        "this test needs CUDA: run it as scripts/gpu_check.sh does (BAICHUAN_TEST_DEVICE=cuda, --ignored)"
    );
    dev
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)
}

fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 301,
        hidden_size: 96,
        intermediate_size: 160,
        num_hidden_layers: 3,
        num_attention_heads: 6,
        max_position_embeddings: 64,
        ..ModelConfig::tiny()
    }
}

#[test]
#[ignore = "needs CUDA (scripts/gpu_check.sh runs it)"]
fn the_rotation_kernel_equals_the_reference_rotation() {
    let dev = cuda_device();
    tch::manual_seed(5);
    let mut with_kernel = Baichuan::new(&config(), Device::Cpu).unwrap();
    with_kernel.to(dev, Kind::Float);
    let said = rotary::install_rotary(&mut with_kernel);
    assert!(with_kernel.rotary.kernel.is_some(), "{said}");
    let mut aten = Baichuan::new(&config(), Device::Cpu).unwrap();
    aten.to(dev, Kind::Float);
    let (b, t, nh, hd) = (2, 37, 6, 16);
    for (kind, tol) in [(Kind::Float, 1e-6), (Kind::BFloat16, 1e-2), (Kind::Half, 2e-3)] {
        let qkv = Tensor::randn([b, t, 3, nh, hd], (Kind::Float, dev)).to_kind(kind);
        let (q1, k1) = with_kernel.rotary.rotate_qk(&qkv);
        // the reference: Hugging Face's rotation on (B, nh, T, hd) in fp32
        let p = qkv.to_kind(Kind::Float).permute([2, 0, 3, 1, 4]);
        let q2 = aten.rotary.apply(&p.get(0), 0).transpose(1, 2);
        let k2 = aten.rotary.apply(&p.get(1), 0).transpose(1, 2);
        let (eq, ek) = (rel(&q1, &q2), rel(&k1, &k2));
        println!("rotation {kind:?}: q rel {eq:.2e}, k rel {ek:.2e}");
        assert!(eq < tol && ek < tol, "{kind:?}: q {eq}, k {ek}");
        // gradients with attention's strides: (B, nh, T, hd) buffers seen as (B, T, nh, hd)
        let g: Vec<Tensor> = (0..3)
            .map(|_| {
                Tensor::randn([b, nh, t, hd], (Kind::Float, dev))
                    .to_kind(kind)
                    .transpose(1, 2)
            })
            .collect();
        let d1 = with_kernel.rotary.unrotate(&g[0], &g[1], &g[2]);
        // the reference: autograd through the fp32 rotation
        let x = qkv.to_kind(Kind::Float).set_requires_grad(true);
        let p = x.permute([2, 0, 3, 1, 4]);
        let y = Tensor::stack(
            &[
                aten.rotary.apply(&p.get(0), 0).transpose(1, 2),
                aten.rotary.apply(&p.get(1), 0).transpose(1, 2),
                p.get(2).transpose(1, 2),
            ],
            2,
        );
        let seed = (&y * Tensor::stack(&g, 2).to_kind(Kind::Float)).sum(Kind::Float);
        let d2 = Tensor::run_backward(&[&seed], &[&x], false, false).remove(0);
        let ed = rel(&d1, &d2);
        println!("transposed rotation {kind:?}: rel {ed:.2e}");
        assert!(ed < tol, "{kind:?}: gradient {ed}");
    }
}

/// The loss and every parameter's gradient (named order, fp32) of one micro-batch through the
/// layer-wise schedule: handed off (gradients returned by autograd, as on a step's last
/// micro-batch) or accumulated into `.grad` (as on earlier micro-batches at ZeRO stage 2).
fn step_grads(model: &Baichuan, tokens: &Tensor, handed_off: bool, recompute: &[bool]) -> (f64, Vec<Tensor>) {
    for p in model.parameters() {
        p.shallow_clone().zero_grad();
    }
    let mut got: Vec<(step::Unit, Vec<Tensor>)> = Vec::new();
    let mut take = |unit: step::Unit, fresh: &[Tensor]| {
        got.push((unit, fresh.iter().map(|g| g.to_kind(Kind::Float)).collect()));
    };
    let hook: Option<step::HandOff> = if handed_off { Some(&mut take) } else { None };
    let loss = step::forward_backward(model, tokens, 1.0, 1 << 20, recompute, None, hook);
    let mut grads = Vec::new();
    for unit in [step::Unit::Embed]
        .into_iter()
        .chain((0..model.layers.len()).map(step::Unit::Block))
        .chain([step::Unit::Head])
    {
        let fresh = got.iter().find(|(u, _)| *u == unit).map(|(_, g)| g);
        for (j, p) in step::unit_params(model, unit).iter().enumerate() {
            // the head's gradients stay in .grad; handed-off blocks' and embedding's come back
            grads.push(match fresh.and_then(|f| f.get(j)) {
                Some(g) => g.shallow_clone(),
                None => p.grad().to_kind(Kind::Float),
            });
        }
    }
    (loss, grads)
}

/// The spliced training step (rotation, loss and SwiGLU kernels where the device has them)
/// against the fp32 reference graph, on `dev` in `kind`, to relative `tol` in the loss and
/// every gradient.
fn spliced_step_equals_the_reference(dev: Device, kind: Kind, tol: f64) {
    tch::manual_seed(9);
    let mut spliced = Baichuan::new(&config(), Device::Cpu).unwrap();
    tch::manual_seed(9);
    let mut reference = Baichuan::new(&config(), Device::Cpu).unwrap();
    spliced.to(dev, kind);
    // the reference graph in fp32 (the oracle), Hugging Face's ops
    reference.to(dev, Kind::Float);
    reference.set_fused_ops(false);
    let said = rotary::install_rotary(&mut spliced);
    let loss_said = loss::install_loss(&mut spliced);
    let swiglu_said = swiglu::install_swiglu(&mut spliced);
    println!("{kind:?}: {said}; {loss_said}; {swiglu_said}");
    if dev.is_cuda() {
        assert!(spliced.loss_kernel.is_some(), "{loss_said}");
        assert!(spliced.rotary.swiglu.is_some(), "{swiglu_said}");
    }
    let tokens = Tensor::randint(301, [2, 41], (Kind::Int64, dev));
    let logits = reference.forward(&tokens.narrow(1, 0, 40));
    let loss2 = logits.view([-1, 301]).cross_entropy_loss::<Tensor>(
        &tokens.narrow(1, 1, 40).reshape([-1]),
        None,
        tch::Reduction::Mean,
        -100,
        0.0,
    );
    loss2.backward();
    let want: Vec<Tensor> = reference.parameters().iter().map(|p| p.grad()).collect();
    // handed off with a recomputed middle block; accumulated with a recomputed first block
    for (handed_off, recompute) in [(true, [false, true, false]), (false, [true, false, false])] {
        let (loss1, got) = step_grads(&spliced, &tokens, handed_off, &recompute);
        assert_eq!(got.len(), want.len(), "a gradient per parameter");
        let el = (loss1 - loss2.double_value(&[])).abs() / loss2.double_value(&[]);
        let worst = got.iter().zip(&want).map(|(g, w)| rel(g, w)).fold(0f64, f64::max);
        println!(
            "{kind:?} on {dev:?}, {}: loss rel {el:.2e}, worst gradient rel {worst:.2e}",
            if handed_off {
                "handed off"
            } else {
                "accumulated in .grad"
            }
        );
        assert!(
            el < tol && worst < tol,
            "{kind:?} {handed_off}: loss {el}, gradient {worst}"
        );
    }
}

#[test]
fn a_spliced_training_step_equals_the_reference_graph() {
    // on the CPU: fp32 with the ATen rotation (bf16 on the CPU is covered by the model's unit tests)
    spliced_step_equals_the_reference(device(), Kind::Float, 1e-5);
}

#[test]
#[ignore = "needs CUDA (scripts/gpu_check.sh runs it)"]
fn a_spliced_bf16_training_step_on_cuda_equals_the_reference_graph() {
    spliced_step_equals_the_reference(cuda_device(), Kind::BFloat16, 6e-2);
}

#[test]
#[ignore = "needs CUDA (scripts/gpu_check.sh runs it)"]
fn the_loss_kernel_equals_the_aten_operator() {
    use baichuan_model::baichuan::{cross_entropy_aten, LossKernel, IGNORE_INDEX};
    let dev = cuda_device();
    tch::manual_seed(11);
    let kernel = loss::CudaLoss::new(dev).expect("the loss kernel compiles and loads");
    let max_abs = |a: &Tensor, b: &Tensor| {
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
    };
    // the vocabulary (16-byte rows), an odd length (scalar accesses), a short one with more
    // rows than the grid has blocks (each block then takes several rows)
    for (v, rows) in [(64000i64, 37i64), (301, 37), (1000, 3000)] {
        for (kind, grad_tol) in [(Kind::Float, 1e-6), (Kind::BFloat16, 2e-3), (Kind::Half, 5e-4)] {
            // wide logits, one row of equal values and one of large ones
            let x = Tensor::randn([rows, v], (Kind::Float, dev)) * 4.0;
            let _ = x.get(1).fill_(0.5);
            let _ = x.get(2).g_mul_scalar_(20.0);
            let x = x.to_kind(kind);
            let mut t: Vec<i64> = (0..rows).map(|r| (r * 7919 + 3) % v).collect();
            t[4] = IGNORE_INDEX;
            t[6] = 0;
            t[7] = v - 1;
            // an ignored row with huge logits still gets a zero gradient, not inf * 0
            let _ = x.get(4).fill_(1000.0);
            let targets = Tensor::from_slice(&t).to_device(dev);
            let (mine, theirs) = (x.copy(), x.copy());
            // fp16 training's gradient scale holds the loss scale; a small one would flush
            // most of an fp16 gradient to zero
            let scale = if kind == Kind::Half { 1.0 } else { 1.0 / 3000.0 };
            let got = kernel.cross_entropy(&mine, &targets, Some(scale));
            let want = cross_entropy_aten(&theirs, &targets, Some(scale));
            let loss_err = max_abs(&got, &want) / want.abs().max().double_value(&[]);
            // gradients are at most `scale` in size
            let grad_err = max_abs(&mine, &theirs) / scale;
            let plain = kernel.cross_entropy(&x.copy(), &targets, None);
            let plain_err = max_abs(&plain, &want) / want.abs().max().double_value(&[]);
            println!(
                "loss kernel {kind:?} V={v}: loss rel {loss_err:.2e} (without gradient {plain_err:.2e}), gradient {grad_err:.2e} of the scale"
            );
            assert!(
                loss_err < 1e-5 && plain_err < 1e-5,
                "{kind:?} V={v}: loss {loss_err}, {plain_err}"
            );
            assert!(grad_err < grad_tol * 4.0, "{kind:?} V={v}: gradient {grad_err}");
            assert_eq!(got.double_value(&[4]), 0.0, "an ignored row has no loss");
            assert_eq!(mine.get(4).abs().max().double_value(&[]), 0.0, "nor a gradient");
            // each row's gradient sums to zero: softmax sums to one, minus the one-hot
            let sums = mine
                .to_kind(Kind::Double)
                .sum_dim_intlist(1, false, Kind::Double)
                .abs()
                .max();
            assert!(sums.double_value(&[]) < scale * 2e-2, "{kind:?} V={v}: row sums {sums}");
        }
    }
    let mut model = Baichuan::new(&config(), Device::Cpu).unwrap();
    model.to(dev, Kind::BFloat16);
    let said = loss::install_loss(&mut model);
    println!("{said}");
    assert!(
        said.starts_with("loss: cross-entropy kernel (NVRTC), checked"),
        "{said}"
    );
}

#[test]
#[ignore = "needs CUDA (scripts/gpu_check.sh runs it)"]
fn the_swiglu_kernel_equals_the_fp32_reference() {
    use baichuan_model::baichuan::{SwigluAten, SwigluKernel};
    let dev = cuda_device();
    tch::manual_seed(13);
    let kernel = swiglu::CudaSwiglu::new(dev).expect("the SwiGLU kernels compile and load");
    // (B, T, f) as the block has them (vectorized), and an odd size (scalar)
    for shape in [vec![2i64, 37, 160], vec![3, 7, 11]] {
        for (kind, tol) in [(Kind::Float, 1e-6), (Kind::BFloat16, 1e-2), (Kind::Half, 2e-3)] {
            let draw = || (Tensor::randn(shape.as_slice(), (Kind::Float, dev)) * 4.0).to_kind(kind);
            let (g, u, da) = (draw(), draw(), draw());
            let fwd = rel(&kernel.forward(&g, &u), &SwigluAten.forward(&g, &u));
            let (dg1, du1) = kernel.backward(&g, &u, &da);
            let (dg2, du2) = SwigluAten.backward(&g, &u, &da);
            let (eg, eu) = (rel(&dg1, &dg2), rel(&du1, &du2));
            // and the fp32 reference against autograd through ATen's silu and mul
            let (g32, u32) = (
                g.to_kind(Kind::Float).set_requires_grad(true),
                u.to_kind(Kind::Float).set_requires_grad(true),
            );
            (g32.silu() * &u32 * da.to_kind(Kind::Float))
                .sum(Kind::Float)
                .backward();
            let ea = rel(&dg2, &g32.grad()).max(rel(&du2, &u32.grad()));
            println!("swiglu kernel {kind:?} {shape:?}: product rel {fwd:.2e}, dg rel {eg:.2e}, du rel {eu:.2e}; reference vs autograd {ea:.2e}");
            assert!(fwd < tol && eg < tol && eu < tol, "{kind:?} {shape:?}: {fwd} {eg} {eu}");
            assert!(ea < tol.max(1e-5), "{kind:?}: the reference is off autograd by {ea}");
        }
    }
    let mut model = Baichuan::new(&config(), Device::Cpu).unwrap();
    model.to(dev, Kind::BFloat16);
    let said = swiglu::install_swiglu(&mut model);
    println!("{said}");
    assert!(said.starts_with("swiglu: SwiGLU kernel (NVRTC), checked"), "{said}");
}

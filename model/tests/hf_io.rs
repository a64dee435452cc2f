//! Hugging Face directory I/O: round trips in both layouts, sharded and single-file, dtype
//! conversion, and the errors a user sees for broken directories. Every written directory is
//! also read by an independent reader (Python `safetensors`, scripts/reference/read_safetensors.py
//! in .venv): each weight's name, shape, dtype and bytes equal what was exported.

mod common;

use std::path::PathBuf;

use baichuan_model::hf::{self, load_pretrained, save_pretrained};
use baichuan_model::{Baichuan, Layout, ModelConfig};
use tch::{Device, Kind};

fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 300,
        hidden_size: 48,
        intermediate_size: 80,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        max_position_embeddings: 64,
        ..ModelConfig::tiny()
    }
}

fn temp(name: &str) -> PathBuf {
    common::temp("hf_io", name)
}

/// Reads `dir` with Python `safetensors` and checks every tensor against `want` (name, tensor):
/// the same names, shapes, dtypes and raw bytes.
fn independent_read_equals(dir: &std::path::Path, want: &[(String, tch::Tensor)]) {
    let stdout = common::oracle("read_safetensors.py", &[dir.as_os_str()]);
    let got: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    let got = got.as_object().unwrap();
    assert_eq!(got.len(), want.len(), "tensors in {}", dir.display());
    for (name, t) in want {
        let entry = got
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing in {}", dir.display()));
        let dtype = match t.kind() {
            Kind::Float => "float32",
            Kind::BFloat16 => "bfloat16",
            Kind::Half => "float16",
            k => panic!("{k:?}"),
        };
        let bytes = Vec::<u8>::try_from(t.contiguous().view([-1]).view_dtype(Kind::Uint8)).unwrap();
        let shape: Vec<i64> = entry[0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(shape, t.size(), "{name}");
        assert_eq!(entry[1], dtype, "{name}");
        assert_eq!(
            entry[2].as_u64(),
            Some(crc32fast::hash(&bytes) as u64),
            "{name}: bytes differ"
        );
    }
}

fn max_diff(a: &Baichuan, b: &Baichuan) -> f64 {
    a.named_parameters()
        .iter()
        .zip(b.named_parameters())
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, &nb);
            (*ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn round_trips_in_both_layouts_single_and_sharded() {
    tch::manual_seed(7);
    let model = Baichuan::new(&config(), Device::Cpu).unwrap();
    for (layout, shard) in [
        (Layout::Baichuan, None),
        (Layout::Llama, None),
        (Layout::Baichuan, Some(40_000)),
        (Layout::Llama, Some(40_000)),
    ] {
        let dir = temp(&format!("{layout:?}-{shard:?}"));
        save_pretrained(&model, &dir, layout, Kind::Float, shard).unwrap();
        let sharded = dir.join(hf::INDEX_FILE).exists();
        assert_eq!(sharded, shard.is_some(), "{layout:?} {shard:?}");
        if sharded {
            let n = std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("model-"))
                .count();
            assert!(n > 2, "expected several shards, got {n}");
        }
        let (cfg, got_layout) = hf::read_config(&dir).unwrap();
        assert_eq!(cfg, config());
        assert_eq!(got_layout, layout);
        let back = load_pretrained(&dir, Device::Cpu).unwrap();
        assert_eq!(max_diff(&model, &back), 0.0, "{layout:?} {shard:?}");
        independent_read_equals(&dir, &hf::export_tensors(&model, layout, Kind::Float));
    }
}

#[test]
fn llama_layout_splits_w_pack_into_q_k_v_rows() {
    tch::manual_seed(8);
    let model = Baichuan::new(&config(), Device::Cpu).unwrap();
    let tensors = hf::export_tensors(&model, Layout::Llama, Kind::Float);
    let get = |n: &str| &tensors.iter().find(|(k, _)| k == n).unwrap_or_else(|| panic!("{n}")).1;
    let w = &model.layers[1].self_attn.w_pack;
    let k = get("model.layers.1.self_attn.k_proj.weight");
    assert_eq!(k.size(), vec![48, 48]);
    assert_eq!((w.narrow(0, 48, 48) - k).abs().max().double_value(&[]), 0.0);
    assert!(!tensors.iter().any(|(n, _)| n.contains("W_pack")));
}

#[test]
fn bf16_export_is_within_bf16_rounding() {
    tch::manual_seed(9);
    let model = Baichuan::new(&config(), Device::Cpu).unwrap();
    let dir = temp("bf16");
    save_pretrained(&model, &dir, Layout::Baichuan, Kind::BFloat16, None).unwrap();
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(text.contains("\"torch_dtype\": \"bfloat16\""));
    let back = load_pretrained(&dir, Device::Cpu).unwrap();
    let d = max_diff(&model, &back);
    assert!(d > 0.0 && d < 2e-3, "{d}");
    independent_read_equals(&dir, &hf::export_tensors(&model, Layout::Baichuan, Kind::BFloat16));
}

#[test]
fn broken_directories_give_errors_naming_the_file() {
    tch::manual_seed(10);
    let model = Baichuan::new(&config(), Device::Cpu).unwrap();

    let empty = temp("empty");
    let err = load_pretrained(&empty, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");

    let truncated = temp("truncated");
    save_pretrained(&model, &truncated, Layout::Baichuan, Kind::Float, None).unwrap();
    let file = truncated.join(hf::WEIGHTS_FILE);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_pretrained(&truncated, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");

    let wrong_shape = temp("wrong-shape");
    save_pretrained(&model, &wrong_shape, Layout::Baichuan, Kind::Float, None).unwrap();
    let cfg_path = wrong_shape.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"intermediate_size\": 80", "\"intermediate_size\": 96");
    std::fs::write(&cfg_path, text).unwrap();
    let err = load_pretrained(&wrong_shape, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("mlp.gate_proj.weight") && err.contains("shape"), "{err}");

    let no_weights = temp("no-weights");
    save_pretrained(&model, &no_weights, Layout::Baichuan, Kind::Float, None).unwrap();
    std::fs::remove_file(no_weights.join(hf::WEIGHTS_FILE)).unwrap();
    let err = load_pretrained(&no_weights, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("convert_bin_to_safetensors"), "{err}");
}

/// The size and CRC-32 that `write_safetensors` computes while streaming equal those of the
/// file read back, and the file is a valid safetensors file with the tensors written.
#[test]
fn written_files_report_their_own_size_and_crc() {
    let dir = temp("crc");
    tch::manual_seed(3);
    let tensors = vec![
        ("b".to_string(), tch::Tensor::randn([3, 5], (Kind::Float, Device::Cpu))),
        ("a".to_string(), tch::Tensor::randn([7], (Kind::BFloat16, Device::Cpu))),
        ("empty".to_string(), tch::Tensor::zeros([0], (Kind::Float, Device::Cpu))),
    ];
    let path = dir.join("t.safetensors");
    let w = hf::write_safetensors(&tensors, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(w.bytes, bytes.len() as u64);
    assert_eq!(w.crc32, crc32fast::hash(&bytes));
    let back = hf::read_safetensors(&path).unwrap();
    assert_eq!(back.len(), 3);
    for (name, t) in &tensors {
        let (_, got) = back.iter().find(|(n, _)| n == name).expect("every tensor is read back");
        assert_eq!(got.kind(), t.kind());
        assert!(got.equal(t), "{name} differs");
    }
}

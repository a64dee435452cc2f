//! scripts/convert_bin_to_safetensors.py: a model written by PyTorch as sharded
//! `pytorch_model.bin` pickles (the form Baichuan-7B is published in) converts into a
//! directory that loads with bit-identical weights.

mod common;

use std::process::Command;

use baichuan_model::{hf, Baichuan, Layout, ModelConfig};
use tch::{Device, Kind};

const TO_PICKLES: &str = r#"
import json, shutil, sys, torch
from safetensors.torch import load_file
src, dst = sys.argv[1], sys.argv[2]
state = load_file(f"{src}/model.safetensors")
names = sorted(state)
half = len(names) // 2
weight_map = {}
for i, part in enumerate([names[:half], names[half:]]):
    fname = f"pytorch_model-0000{i + 1}-of-00002.bin"
    torch.save({k: state[k] for k in part}, f"{dst}/{fname}")
    weight_map.update({k: fname for k in part})
json.dump({"weight_map": weight_map}, open(f"{dst}/pytorch_model.bin.index.json", "w"))
shutil.copy(f"{src}/config.json", dst)
"#;

#[test]
fn sharded_pytorch_pickles_convert_to_loadable_safetensors() {
    let dir = common::temp_dir("convert-bin");
    let (st, bin, out) = (dir.join("st"), dir.join("bin"), dir.join("out"));
    std::fs::create_dir_all(&bin).unwrap();
    tch::manual_seed(11);
    let config = ModelConfig {
        vocab_size: 200,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        ..ModelConfig::tiny()
    };
    let model = Baichuan::new(&config, Device::Cpu).unwrap();
    hf::save_pretrained(&model, &st, Layout::Baichuan, Kind::Float, None).unwrap();

    let status = Command::new(common::python())
        .args(["-c", TO_PICKLES])
        .arg(&st)
        .arg(&bin)
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new(common::python())
        .arg(common::root().join("scripts/convert_bin_to_safetensors.py"))
        .arg(&bin)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        out.join(hf::INDEX_FILE).exists(),
        "two pickles become two safetensors shards"
    );

    let back = hf::load_pretrained(&out, Device::Cpu).unwrap();
    assert_eq!(model.named_parameters().len(), back.named_parameters().len());
    for ((name, a), (_, b)) in model.named_parameters().iter().zip(back.named_parameters()) {
        assert_eq!((*a - b).abs().max().double_value(&[]), 0.0, "{name}");
    }
}

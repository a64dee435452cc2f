//! The Baichuan tokenizer through the `sentencepiece` crate against Python `sentencepiece`
//! (the independent oracle, run in .venv) on bilingual text, digits, rare characters that
//! need byte fallback, and whitespace runs; plus the two reference encodings of ASSETS.md.

mod common;

use std::process::Command;

#[test]
fn reference_encodings_from_the_published_checks() {
    let tok = common::tokenizer();
    assert_eq!(tok.vocab_size(), 64000);
    assert_eq!((tok.bos_id(), tok.eos_id()), (1, 2));
    let cases: [(&str, &[u32]); 2] = [
        (
            "登鹳雀楼->王之涣\n夜雨寄北->",
            &[
                31106, 32040, 36988, 33888, 31914, 3817, 31702, 31278, 36161, 5, 32010, 31963, 32953, 31505, 3817,
            ],
        ),
        ("Hello world 12345", &[24568, 1275, 31106, 53, 54, 55, 56, 57]),
    ];
    for (text, want) in cases {
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "{text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    assert_eq!(
        tok.encode_document("Hello").unwrap().last(),
        Some(&2),
        "EOS closes a document"
    );
}

#[test]
fn the_native_encoder_equals_the_cpp_library_on_the_whole_sample() {
    let tok = common::tokenizer();
    assert!(
        tok.is_native(),
        "the Baichuan model is served by the native BPE encoder"
    );
    let mut lines = 0;
    for file in ["kjv.txt", "tang300.txt", "song100.txt"] {
        let text = std::fs::read_to_string(common::root().join("data/sample").join(file)).unwrap();
        for line in text.lines() {
            assert_eq!(
                tok.encode(line).unwrap(),
                tok.encode_with_library(line).unwrap(),
                "{line:?}"
            );
            lines += 1;
        }
    }
    // repeated words hit the word cache: the second encoding must equal the first
    let again = "And God said, Let there be light: and there was light.";
    assert_eq!(tok.encode(again).unwrap(), tok.encode_with_library(again).unwrap());
    assert_eq!(tok.encode(again).unwrap(), tok.encode_with_library(again).unwrap());
    assert!(lines > 12_000);
}

#[test]
fn ids_equal_python_sentencepiece() {
    let tok = common::tokenizer();
    let texts = [
        "In the beginning God created the heaven and the earth.",
        "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
        "混合 mixed 文本 text, with punctuation! 还有标点？",
        "digits 0123456789 and 3.14159, 2026-11-27, ١٢٣",
        "rare: 𠀀𪚥 🦀🚀 ﷽ \u{1F9EC} ẞ Ω ∮ 龘",
        "whitespace   runs\t\ttabs  \n\n newlines    end   ",
        "   leading spaces",
        "<SEP> <unk> </s> control-looking text",
        "<p>html</p><br/>\t<h2>tags</h2>0１２",
        "  two leading, two trailing  ",
        " ",
        "",
    ];
    let dir = common::root().join("target/test-tmp/tokenizer");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("texts.json");
    std::fs::write(&input, serde_json::to_string(&texts).unwrap()).unwrap();
    let python = common::python();
    let out = Command::new(&python)
        .arg(common::root().join("scripts/reference/sp_encode.py"))
        .arg(common::root().join("assets/tokenizer.model"))
        .arg(&input)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup.sh", python.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let oracle: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let ids = tok.encode(text).unwrap();
        let want: Vec<u32> = serde_json::from_value(oracle["ids"][i].clone()).unwrap();
        assert_eq!(ids, want, "ids of {text:?}");
        let decoded = tok.decode(&ids).unwrap();
        assert_eq!(decoded, oracle["decoded"][i].as_str().unwrap(), "decoding of {text:?}");
        assert_eq!(&decoded, text, "round trip of {text:?}");
    }
    // byte fallback really happened for the rare characters
    let rare = tok.encode_pieces("𠀀").unwrap();
    assert!(rare.iter().any(|(_, p)| p.starts_with("<0x")), "{rare:?}");
}

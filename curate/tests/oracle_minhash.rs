//! MinHash against datasketch (scripts/reference/oracle_minhash.py): the same texts give the same
//! signatures value for value, and the banding chosen for a threshold is datasketch's.

mod common;

use baichuan_curate::dedup::minhash::{optimal_banding, units, LshParams, MinHasher};
use common::{oracle, sample_lines, temp_dir};

#[test]
fn signatures_and_banding_equal_datasketch() {
    let mut texts: Vec<String> = sample_lines("kjv.txt").into_iter().step_by(997).collect();
    texts.extend(sample_lines("tang300.txt").into_iter().step_by(37));
    texts.extend(["", "Hi", "a b c d", "GPU加速, Hello World! 你好"].map(String::from));
    let params = LshParams {
        num_perm: 128,
        ..LshParams::DEFAULT
    };
    let banding = [(0.5, 128), (0.7, 112), (0.7, 250), (0.8, 256), (0.9, 128)];
    let request = serde_json::json!({
        "seed": params.seed, "num_perm": params.num_perm, "ngram": params.ngram, "texts": texts,
        "banding": banding.iter().map(|&(t, p)| serde_json::json!([t, p])).collect::<Vec<_>>(),
    });
    let dir = temp_dir("oracle-minhash");
    let path = dir.join("request.json");
    std::fs::write(&path, request.to_string()).unwrap();
    let reply: serde_json::Value =
        serde_json::from_str(oracle("oracle_minhash.py", &[path.to_str().unwrap()]).trim()).unwrap();
    let hasher = MinHasher::new(params);
    for (i, text) in texts.iter().enumerate() {
        let ours = hasher.signature(&hasher.shingle_hashes(&units(text)));
        let theirs: Vec<u32> = serde_json::from_value(reply["signatures"][i].clone()).unwrap();
        assert_eq!(ours, theirs, "signature of text {i}: {text:?}");
    }
    println!(
        "{} signatures of {} permutations equal datasketch's",
        texts.len(),
        params.num_perm
    );
    for (i, &(t, p)) in banding.iter().enumerate() {
        let theirs: (usize, usize) = serde_json::from_value(reply["banding"][i].clone()).unwrap();
        assert_eq!(
            optimal_banding(t, p),
            theirs,
            "banding for threshold {t}, {p} permutations"
        );
        println!("threshold {t}, {p} permutations: {theirs:?} bands x rows, as datasketch");
    }
}

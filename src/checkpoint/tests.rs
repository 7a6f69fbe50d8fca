use super::*;
use std::io::Write;

/// Writes a safetensors file with zero-filled data for `(name, dtype, shape, bytes per elem)`.
fn write_shard(path: &Path, tensors: &[(&str, &str, &[usize], usize)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape, elem) in tensors {
        let n = shape.iter().product::<usize>() * elem;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut f = File::create(path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&header).unwrap();
    f.write_all(&vec![0u8; offset]).unwrap();
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zmlx_rs_ckpt_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn single_file_lists_tensors_and_counts_params() {
    let dir = temp_dir("single");
    write_shard(
        &dir.join("model.safetensors"),
        &[("b", "F32", &[2, 3], 4), ("a", "BF16", &[5], 2)],
    );
    let info = inspect(&dir).unwrap();
    let names: Vec<&str> = info.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(info.tensors[1].nbytes, 24);
    assert_eq!(info.n_params, 11);
    assert_eq!(info.quantization, None);
    assert_eq!(info.n_experts, None);
    assert_eq!(info.fingerprint.len(), 64);
}

#[test]
fn fingerprint_follows_shapes() {
    let dir = temp_dir("fp");
    write_shard(&dir.join("model.safetensors"), &[("w", "F32", &[2, 3], 4)]);
    let first = inspect(&dir).unwrap().fingerprint;
    assert_eq!(first, inspect(&dir).unwrap().fingerprint);
    write_shard(&dir.join("model.safetensors"), &[("w", "F32", &[3, 2], 4)]);
    assert_ne!(first, inspect(&dir).unwrap().fingerprint);
}

#[test]
fn quantization_is_inferred_from_packed_shapes() {
    let dir = temp_dir("quant");
    // hidden 256, 4 bits, group 64: 32 packed columns, 4 groups.
    write_shard(
        &dir.join("model.safetensors"),
        &[
            ("l.q_proj.weight", "U32", &[8, 32], 4),
            ("l.q_proj.scales", "F16", &[8, 4], 2),
            ("l.q_proj.biases", "F16", &[8, 4], 2),
        ],
    );
    std::fs::write(dir.join("config.json"), r#"{"hidden_size": 256}"#).unwrap();
    let info = inspect(&dir).unwrap();
    let q = info.quantization.unwrap();
    assert_eq!((q.bits, q.group_size, q.mode.as_str()), (4, 64, "affine"));
    assert_eq!(info.n_params, 8 * 256);
}

#[test]
fn index_with_missing_shard_names_the_shard() {
    let dir = temp_dir("missing");
    write_shard(
        &dir.join("model-00001-of-00002.safetensors"),
        &[("a", "F32", &[1], 4)],
    );
    std::fs::write(
        dir.join(INDEX_FILE),
        r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let err = inspect(&dir).unwrap_err().to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn bad_headers_are_errors_naming_the_file() {
    let dir = temp_dir("bad");
    let file = dir.join("model.safetensors");
    let cases: Vec<Vec<u8>> = vec![
        vec![1, 2, 3],
        [u64::MAX.to_le_bytes().as_slice(), b"{}"].concat(),
        [1000u64.to_le_bytes().as_slice(), b"{}"].concat(),
        [2u64.to_le_bytes().as_slice(), b"{x"].concat(),
        [
            60u64.to_le_bytes().as_slice(),
            br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}    "#.as_slice(),
        ]
        .concat(),
    ];
    for bytes in cases {
        std::fs::write(&file, &bytes).unwrap();
        let err = inspect(&dir).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
    }
}

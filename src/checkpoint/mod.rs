//! Checkpoint inspection from safetensors headers alone: a multi-GB model folder is described
//! (tensors, parameter count, quantization, experts, a fingerprint) by reading a few KB.

use crate::error::{Error, Result};
use safetensors::tensor::Metadata;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The safetensors crate refuses headers above 100 MB; so do we, before allocating.
const MAX_HEADER_BYTES: u64 = 100_000_000;
const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor as its shard's header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    /// The safetensors dtype name: `F32`, `BF16`, `U32`...
    pub dtype: String,
    pub shape: Vec<usize>,
    pub nbytes: u64,
    /// File name of the shard, relative to the checkpoint folder.
    pub shard: String,
}

/// mlx-lm's quantization settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantization {
    pub bits: u32,
    pub group_size: u32,
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Sorted by name.
    pub tensors: Vec<Tensor>,
    /// Model parameters: a quantized weight counts its unpacked elements, and its scales and
    /// biases are not counted.
    pub n_params: u64,
    pub quantization: Option<Quantization>,
    pub n_experts: Option<u64>,
    /// SHA-256 over every tensor's name, dtype, shape and size (not over shard layout).
    pub fingerprint: String,
}

/// Describes the checkpoint at `path`: a folder (with `model.safetensors`, or an index json
/// and its shards, or `model*.safetensors`) or a single `.safetensors` file.
pub fn inspect(path: &Path) -> Result<CheckpointInfo> {
    let Shards {
        folder,
        files,
        weight_map,
    } = shard_files(path)?;
    let mut tensors = read_tensors(&folder, &files)?;
    tensors.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = tensors.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(Error::checkpoint(
            &folder.join(&pair[1].shard),
            format!("tensor '{}' is also in '{}'", pair[1].name, pair[0].shard),
        ));
    }
    if let Some(weight_map) = weight_map {
        check_index(&folder, &weight_map, &tensors)?;
    }
    let config = read_config(&folder)?;
    let quantization = quantization(&config, &tensors);
    Ok(CheckpointInfo {
        n_params: n_params(&tensors, quantization.as_ref(), &config),
        n_experts: n_experts(&config, &tensors),
        fingerprint: fingerprint(&tensors),
        quantization,
        tensors,
    })
}

/// Where the tensors are: the folder, its shard file names (sorted), and the index's
/// tensor-to-shard map when there is an index.
struct Shards {
    folder: PathBuf,
    files: Vec<String>,
    weight_map: Option<BTreeMap<String, String>>,
}

/// Every shard's tensors, from headers read in parallel: large checkpoints have many shards
/// with megabytes of header JSON between them.
fn read_tensors(folder: &Path, files: &[String]) -> Result<Vec<Tensor>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || shard_tensors(folder, part)))
            .collect();
        let mut tensors = Vec::new();
        for worker in workers {
            tensors.extend(worker.join().expect("reading headers does not panic")?);
        }
        Ok(tensors)
    })
}

fn shard_tensors(folder: &Path, shards: &[String]) -> Result<Vec<Tensor>> {
    let mut tensors = Vec::new();
    for shard in shards {
        let metadata = read_header(&folder.join(shard))?;
        tensors.extend(metadata.tensors().into_iter().map(|(name, info)| {
            let (start, end) = info.data_offsets;
            Tensor {
                name,
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.clone(),
                nbytes: (end - start) as u64,
                shard: shard.clone(),
            }
        }));
    }
    Ok(tensors)
}

/// The checkpoint folder and the shard file names in it, sorted.
fn shard_files(path: &Path) -> Result<Shards> {
    if path.is_file() {
        let folder = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(Shards {
            folder,
            files: vec![name],
            weight_map: None,
        });
    }
    if !path.is_dir() {
        return Err(Error::checkpoint(path, "no such file or folder"));
    }
    let index = path.join(INDEX_FILE);
    if index.is_file() {
        let weight_map = read_weight_map(&index)?;
        let files: BTreeSet<&String> = weight_map.values().collect();
        for shard in &files {
            if !path.join(shard).is_file() {
                return Err(Error::checkpoint(
                    &path.join(shard),
                    format!("missing: {INDEX_FILE} lists it as a shard"),
                ));
            }
        }
        return Ok(Shards {
            folder: path.to_path_buf(),
            files: files.into_iter().cloned().collect(),
            weight_map: Some(weight_map),
        });
    }
    let entries = std::fs::read_dir(path).map_err(|e| Error::checkpoint(path, e))?;
    let mut all = Vec::new();
    for entry in entries {
        let name = entry
            .map_err(|e| Error::checkpoint(path, e))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".safetensors") {
            all.push(name);
        }
    }
    // mlx_lm.load reads `model*.safetensors`; other safetensors files (adapters) are not the model.
    let mut files: Vec<String> = all
        .iter()
        .filter(|n| n.starts_with("model"))
        .cloned()
        .collect();
    if files.is_empty() {
        files = all;
    }
    if files.is_empty() {
        return Err(Error::checkpoint(
            path,
            "no .safetensors files in this folder",
        ));
    }
    files.sort();
    Ok(Shards {
        folder: path.to_path_buf(),
        files,
        weight_map: None,
    })
}

fn read_json(file: &Path) -> Result<Value> {
    let text = std::fs::read(file).map_err(|e| Error::checkpoint(file, e))?;
    serde_json::from_slice(&text).map_err(|e| Error::checkpoint(file, format!("invalid JSON: {e}")))
}

fn read_weight_map(index: &Path) -> Result<BTreeMap<String, String>> {
    let json = read_json(index)?;
    let Some(map) = json.get("weight_map").and_then(Value::as_object) else {
        return Err(Error::checkpoint(index, "has no 'weight_map' object"));
    };
    map.iter()
        .map(|(name, shard)| match shard.as_str() {
            Some(shard) if !shard.contains('/') && !shard.contains('\\') => {
                Ok((name.clone(), shard.to_string()))
            }
            _ => Err(Error::checkpoint(
                index,
                format!("weight_map['{name}'] must be a file name in the folder, got {shard}"),
            )),
        })
        .collect()
}

/// Every tensor the index names must be in the shard it names (`tensors` sorted by name).
fn check_index(
    folder: &Path,
    weight_map: &BTreeMap<String, String>,
    tensors: &[Tensor],
) -> Result<()> {
    let mut found = tensors.iter().peekable();
    for (name, shard) in weight_map {
        while found.next_if(|t| t.name < *name).is_some() {}
        if !found
            .peek()
            .is_some_and(|t| t.name == *name && t.shard == *shard)
        {
            return Err(Error::checkpoint(
                &folder.join(shard),
                format!("has no tensor '{name}', which {INDEX_FILE} places there"),
            ));
        }
    }
    Ok(())
}

/// Reads and validates one shard's header without touching its tensor data.
fn read_header(file: &Path) -> Result<Metadata> {
    let mut f = File::open(file).map_err(|e| Error::checkpoint(file, e))?;
    let file_len = f.metadata().map_err(|e| Error::checkpoint(file, e))?.len();
    let mut len_bytes = [0u8; 8];
    if file_len < 8 {
        return Err(Error::checkpoint(
            file,
            format!("{file_len} bytes, too short for the 8-byte header length"),
        ));
    }
    f.read_exact(&mut len_bytes)
        .map_err(|e| Error::checkpoint(file, e))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(Error::checkpoint(
            file,
            format!("header length {header_len} is above the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    if 8 + header_len > file_len {
        return Err(Error::checkpoint(
            file,
            format!("header length {header_len} runs past the end of the file ({file_len} bytes)"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)
        .map_err(|e| Error::checkpoint(file, e))?;
    let metadata: Metadata = serde_json::from_slice(&header)
        .map_err(|e| Error::checkpoint(file, format!("invalid safetensors header: {e}")))?;
    let expected = 8 + header_len + metadata.data_len() as u64;
    if expected != file_len {
        return Err(Error::checkpoint(
            file,
            format!("{file_len} bytes, but its header describes {expected} (truncated or padded)"),
        ));
    }
    Ok(metadata)
}

fn read_config(folder: &Path) -> Result<Value> {
    let file = folder.join("config.json");
    if file.is_file() {
        read_json(&file)
    } else {
        Ok(Value::Null)
    }
}

fn as_u32(v: Option<&Value>) -> Option<u32> {
    v.and_then(Value::as_u64)
        .and_then(|x| u32::try_from(x).ok())
}

fn config_quantization(config: &Value) -> Option<&Value> {
    config
        .get("quantization")
        .or_else(|| config.get("quantization_config"))
        .filter(|q| q.is_object())
}

/// A packed weight: a `U32` `<module>.weight` with a `<module>.scales` beside it.
fn quantized_modules(tensors: &[Tensor]) -> BTreeMap<&str, (&Tensor, &Tensor)> {
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    tensors
        .iter()
        .filter(|t| t.dtype == "U32")
        .filter_map(|t| {
            let module = t.name.strip_suffix(".weight")?;
            let scales = by_name.get(format!("{module}.scales").as_str())?;
            Some((module, (t, *scales)))
        })
        .collect()
}

/// From config.json when it says; otherwise from a packed weight whose input width is the
/// model's `hidden_size` (packed columns = hidden * bits / 32, scale columns = hidden / group).
fn quantization(config: &Value, tensors: &[Tensor]) -> Option<Quantization> {
    if let Some(q) = config_quantization(config) {
        return Some(Quantization {
            bits: as_u32(q.get("bits"))?,
            group_size: as_u32(q.get("group_size"))?,
            mode: q
                .get("mode")
                .and_then(Value::as_str)
                .unwrap_or("affine")
                .to_string(),
        });
    }
    let hidden = config.get("hidden_size").and_then(Value::as_u64)?;
    let names: BTreeSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    quantized_modules(tensors)
        .into_iter()
        .find_map(|(module, (weight, scales))| {
            let packed = *weight.shape.last()? as u64;
            let groups = *scales.shape.last()? as u64;
            if packed * 32 % hidden != 0 || groups == 0 || hidden % groups != 0 {
                return None;
            }
            let bits = u32::try_from(packed * 32 / hidden).ok()?;
            let group_size = u32::try_from(hidden / groups).ok()?;
            if !matches!(bits, 2..=8) {
                return None;
            }
            let mode = if names.contains(format!("{module}.biases").as_str()) {
                "affine".to_string()
            } else if group_size == 16 {
                "nvfp4".to_string()
            } else {
                format!("mxfp{bits}")
            };
            Some(Quantization {
                bits,
                group_size,
                mode,
            })
        })
}

fn n_params(tensors: &[Tensor], quantization: Option<&Quantization>, config: &Value) -> u64 {
    let quantized = quantized_modules(tensors);
    let overrides = config_quantization(config);
    let mut skip: BTreeSet<String> = BTreeSet::new();
    for module in quantized.keys() {
        skip.insert(format!("{module}.scales"));
        skip.insert(format!("{module}.biases"));
    }
    tensors
        .iter()
        .filter(|t| !skip.contains(&t.name))
        .map(|t| {
            let numel: u64 = t.shape.iter().map(|&d| d as u64).product();
            let module = t.name.strip_suffix(".weight").unwrap_or("");
            if !quantized.contains_key(module) {
                return numel;
            }
            // mlx-lm writes per-layer settings under the module's path.
            let bits = overrides
                .and_then(|q| as_u32(q.get(module).and_then(|m| m.get("bits"))))
                .or(quantization.map(|q| q.bits));
            match bits {
                Some(bits) if bits > 0 => numel * 32 / u64::from(bits),
                _ => numel,
            }
        })
        .sum()
}

/// From config.json's expert count, else from `experts.<i>.` names or stacked `switch_mlp`
/// weights.
fn n_experts(config: &Value, tensors: &[Tensor]) -> Option<u64> {
    const KEYS: [&str; 4] = [
        "num_experts",
        "num_local_experts",
        "n_routed_experts",
        "moe_num_experts",
    ];
    let sections = [Some(config), config.get("text_config")];
    for section in sections.into_iter().flatten() {
        for key in KEYS {
            if let Some(n) = section.get(key).and_then(Value::as_u64).filter(|&n| n > 0) {
                return Some(n);
            }
        }
    }
    let from_names = tensors
        .iter()
        .filter_map(|t| {
            let (_, rest) = t.name.split_once(".experts.")?;
            rest.split('.').next()?.parse::<u64>().ok()
        })
        .max()
        .map(|i| i + 1);
    from_names.or_else(|| {
        tensors
            .iter()
            .find(|t| t.name.contains(".switch_mlp.") && t.name.ends_with(".weight"))
            .and_then(|t| t.shape.first().map(|&e| e as u64))
    })
}

fn fingerprint(tensors: &[Tensor]) -> String {
    let mut hash = Sha256::new();
    for t in tensors {
        hash.update(t.name.as_bytes());
        hash.update(b"\t");
        hash.update(t.dtype.as_bytes());
        hash.update(b"\t");
        for d in &t.shape {
            hash.update(d.to_le_bytes());
        }
        hash.update(b"\t");
        hash.update(t.nbytes.to_le_bytes());
        hash.update(b"\n");
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;

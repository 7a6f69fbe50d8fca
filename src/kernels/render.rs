//! Whole translation units for the catalog's kernels, for compilers other than MLX's own
//! wrapper: `extern "C"` entry points with the template constants substituted, so the bodies
//! stay shared with the `mx.fast.cuda_kernel` path (launches cover their work exactly, so
//! no kernel takes a size argument).

use super::{DType, KernelSource, Launch, TemplateArg};
use crate::error::{Error, Result};
use std::fmt::Write;

/// 32-bit registers of an SM (every arch MLX-CUDA builds for) ...
const REGISTER_FILE: u32 = 65_536;
/// ... and the most a thread of a kernel with launch bounds may take: the bounds ask for as
/// many resident blocks as that leaves room for, ...
const MAX_REGISTERS: u32 = 64;
/// ... but never for more than the fewest blocks an SM holds on any of those archs (16 on
/// sm_75 and sm_86; ptxas ignores a larger minimum there and would leave registers uncapped).
const MAX_BLOCKS: u32 = 16;

/// The `__launch_bounds__` minimum of resident blocks for blocks of `threads` threads.
fn min_blocks(threads: u32) -> u32 {
    (REGISTER_FILE / (threads * MAX_REGISTERS)).clamp(1, MAX_BLOCKS)
}

/// One specialisation of a catalog kernel: everything that changes its compiled code.
#[derive(Debug, Clone, PartialEq)]
pub struct Specialisation {
    pub kernel: &'static KernelSource,
    pub template: Vec<(&'static str, TemplateArg)>,
    pub input_dtypes: Vec<DType>,
    pub output_dtypes: Vec<DType>,
    /// Threads per block of the launch; the entry's `__launch_bounds__` where the kernel
    /// takes one ([`KernelSource::launch_bounds`]).
    pub threads: u32,
}

impl Specialisation {
    /// The specialisation a launch runs, given the dtypes of the arrays passed in.
    pub fn of_launch(launch: &Launch, input_dtypes: Vec<DType>) -> Result<Specialisation> {
        let kernel = launch.kernel;
        if input_dtypes.len() != kernel.inputs.len() {
            return Err(Error::value(
                "precompiled_kernel",
                "input_dtypes",
                format!("{} dtypes ({:?})", kernel.inputs.len(), kernel.inputs),
                input_dtypes.len(),
            ));
        }
        Ok(Specialisation {
            kernel,
            template: launch.template.clone(),
            input_dtypes,
            output_dtypes: launch.output_dtypes.clone(),
            threads: launch.threadgroup.iter().product(),
        })
    }

    /// The entry point's name: the kernel's name and its template values, like MLX's
    /// `custom_kernel_<name><hash>`, readable in a profiler.
    pub fn symbol(&self) -> String {
        let mut s = self.kernel.name.to_string();
        for (_, arg) in &self.template {
            s.push('_');
            match arg {
                TemplateArg::Int(i) if *i < 0 => write!(s, "m{}", i.unsigned_abs()),
                TemplateArg::Int(i) => write!(s, "{i}"),
                TemplateArg::Bool(b) => s.write_str(if *b { "t" } else { "f" }),
                TemplateArg::DType(d) => s.write_str(d.name()),
            }
            .expect("writing to a String");
        }
        s
    }

    /// The full source NVRTC compiles: the kernel's header, then one `extern "C"` kernel.
    pub fn precompiled_source(&self) -> Result<String> {
        let k = self.kernel;
        let mut params = Vec::new();
        for (name, dtype) in k.inputs.iter().zip(&self.input_dtypes) {
            params.push(format!("const {}* __restrict__ {name}", cuda_type(*dtype)?));
        }
        for (name, dtype) in k.outputs.iter().zip(&self.output_dtypes) {
            params.push(format!("{}* __restrict__ {name}", cuda_type(*dtype)?));
        }
        let header = k.header();
        let mut src = String::with_capacity(header.len() + k.body.len() + 1024);
        src.push_str(&header);
        writeln!(src, "\n// {}: precompiled by zmlx_rs", self.symbol()).expect("String");
        let bounds = if k.launch_bounds {
            format!(
                "__launch_bounds__({}, {}) ",
                self.threads,
                min_blocks(self.threads)
            )
        } else {
            String::new()
        };
        writeln!(
            src,
            "extern \"C\" __global__ void {bounds}{}(\n    {}) {{",
            self.symbol(),
            params.join(",\n    ")
        )
        .expect("String");
        src.push_str(&template_prelude(&self.template)?);
        src.push_str(k.body);
        src.push_str("\n}\n");
        Ok(src)
    }
}

impl Specialisation {
    /// The translation unit `mx.fast.cuda_kernel` builds for this specialisation (MLX 0.32's
    /// `build_kernel`: its device header, our header, then the kernel in `mlx::core::cu` with
    /// shape and ndim parameters for the input the body sizes itself by). For compile checks
    /// of the JIT path; MLX compiles it with its own headers, which its wheel does not ship.
    pub fn mlx_wrapped_source(&self) -> Result<String> {
        let k = self.kernel;
        let body = k.cuda_kernel_body();
        let mut params = Vec::new();
        for (name, dtype) in k.inputs.iter().zip(&self.input_dtypes) {
            params.push(format!("const {}* {name}", cuda_type(*dtype)?));
            if body.contains(&format!("{name}_shape")) {
                params.push(format!("const __grid_constant__ Shape {name}_shape"));
            }
            if body.contains(&format!("{name}_strides")) {
                params.push(format!("const __grid_constant__ Strides {name}_strides"));
            }
            if body.contains(&format!("{name}_ndim")) {
                params.push(format!("const __grid_constant__ int {name}_ndim"));
            }
        }
        for (name, dtype) in k.outputs.iter().zip(&self.output_dtypes) {
            params.push(format!("{}* {name}", cuda_type(*dtype)?));
        }
        Ok(format!(
            "#include \"mlx/backend/cuda/device/utils.cuh\"\n\n#include <cooperative_groups.h>\n\n\
             {}namespace mlx::core::cu {{\n\nnamespace cg = cooperative_groups;\n\n\
             __global__ void custom_kernel_{}(\n    {}) {{\n{}\n{body}\n}}\n\n}} // namespace mlx::core::cu\n",
            k.header(),
            self.symbol(),
            params.join(",\n    "),
            template_prelude(&self.template)?,
        ))
    }
}

/// `constexpr`/`using` lines for the template arguments, as MLX emits them.
pub fn template_prelude(template: &[(&'static str, TemplateArg)]) -> Result<String> {
    let mut s = String::new();
    for (name, arg) in template {
        match arg {
            TemplateArg::Int(i) => writeln!(s, "  constexpr int {name} = {i};"),
            TemplateArg::Bool(b) => writeln!(s, "  constexpr bool {name} = {b};"),
            TemplateArg::DType(d) => writeln!(s, "  using {name} = {};", cuda_type(*d)?),
        }
        .expect("writing to a String");
    }
    Ok(s)
}

/// The CUDA spelling MLX uses for a dtype.
pub fn cuda_type(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::Bool => "bool",
        DType::U8 => "uint8_t",
        DType::U16 => "uint16_t",
        DType::U32 => "uint32_t",
        DType::U64 => "uint64_t",
        DType::I8 => "int8_t",
        DType::I16 => "int16_t",
        DType::I32 => "int32_t",
        DType::I64 => "int64_t",
        DType::F16 => "__half",
        DType::BF16 => "__nv_bfloat16",
        DType::F32 => "float",
        DType::F64 => "double",
        DType::C64 => {
            return Err(Error::dtype(
                "precompiled_kernel",
                "dtype",
                "a real dtype",
                dtype,
            ))
        }
    })
}

/// Every specialisation the library and its tests build, for compile checks and cache
/// warming: each kernel in every dtype × activation / gating mode, at the sizes real models
/// use (Qwen3-30B-A3B: E=128, K=8, expert FFN 768, hidden 2048; Mixtral: E=8, K=2) and odd ones.
pub fn specialisations() -> Vec<Specialisation> {
    use super::{
        add_rms_norm, dropout, gather_add, glu, moe_gating, moe_qmv, qk_norm_rope, qk_rms_norm,
        qkv_rope, qmv,
    };
    const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
    let mut out = Vec::new();
    let mut add = |launch: Result<Launch>, inputs: Vec<DType>| {
        let launch = launch.expect("catalog specialisation plans");
        out.push(Specialisation::of_launch(&launch, inputs).expect("input count matches"));
    };
    for dt in FLOATS {
        for act in [
            glu::Activation::Silu,
            glu::Activation::Gelu,
            glu::Activation::GeluApprox,
        ] {
            // 16-byte vectors (V > 1) and one element per thread (odd sizes, V = 1).
            for shape in [[2, 64], [3, 7]] {
                add(glu::plan(act, &shape, dt, &shape, dt), vec![dt, dt]);
                add(
                    glu::plan_backward(act, &shape, dt, &shape, dt),
                    vec![dt, dt, dt],
                );
            }
            for half in [768, 11] {
                let h = [3, 2 * half];
                add(glu::plan_packed(act, &h, dt), vec![dt]);
                add(
                    glu::plan_packed_backward(act, &h, dt, &[3, half], dt),
                    vec![dt, dt],
                );
            }
        }
        add(
            dropout::plan(&[3, 7], dt, 0.1, &[2], DType::U32),
            vec![dt, DType::U32],
        );
        add(
            dropout::plan(&[4, 64], dt, 0.1, &[2], DType::U32),
            vec![dt, DType::U32],
        );
        // Register arrays scale with E/32 and K: every size class the tests use in fp32,
        // the production sizes in the half types.
        let gating_sizes: &[(usize, i64)] = if dt == DType::F32 {
            &[(128, 8), (8, 2), (8, 1), (60, 4), (512, 16)]
        } else {
            &[(128, 8), (8, 2)]
        };
        for &(experts, k) in gating_sizes {
            for mode in [
                moe_gating::Mode::Softmax,
                moe_gating::Mode::TopkSoftmax,
                moe_gating::Mode::Sigmoid,
            ] {
                for (norm, ties) in [
                    (true, moe_gating::Ties::Lower),
                    (false, moe_gating::Ties::Higher),
                ] {
                    add(
                        moe_gating::plan(&[3, experts], dt, k, mode, norm, None, 1.0, ties, false),
                        vec![dt],
                    );
                }
                if mode == moe_gating::Mode::Softmax {
                    // mlx-lm's rounding, as the patterns call it (qwen3_moe: norm, ties higher).
                    let ties = moe_gating::Ties::Higher;
                    add(
                        moe_gating::plan(&[3, experts], dt, k, mode, true, None, 1.0, ties, true),
                        vec![dt],
                    );
                }
            }
            let bias = Some((&[experts][..], DType::F32));
            add(
                moe_gating::plan(
                    &[3, experts],
                    dt,
                    k,
                    moe_gating::Mode::Sigmoid,
                    true,
                    bias,
                    2.5,
                    moe_gating::Ties::Lower,
                    false,
                ),
                vec![dt, DType::F32],
            );
        }
        for sdt in [dt, DType::F32] {
            for (k, hidden) in [(8, 2048), (2, 4096), (3, 7)] {
                for mlx_rounding in [false, true] {
                    add(
                        gather_add::plan(&[3, k, hidden], dt, &[3, k], sdt, mlx_rounding),
                        vec![dt, sdt],
                    );
                }
            }
        }
    }
    // Quantised MoE decode at the Qwen3-30B-A3B shape (4-bit, group 64) and an 8-bit,
    // group-32 odd shape, in the half dtypes models run in.
    for dt in [DType::F16, DType::BF16] {
        for (bits, gs, d, inter, e, k) in [(4, 64, 2048, 768, 128, 8), (8, 32, 96, 160, 8, 2)] {
            let pack = |n: usize| n * bits / 32;
            let w_gu = [e, 2 * inter, pack(d)];
            let s_gu = [e, 2 * inter, d / gs];
            let gate_up = moe_qmv::Experts {
                w: (&w_gu, DType::U32),
                scales: (&s_gu, dt),
                biases: (&s_gu, dt),
            };
            let (x, idx) = ([1, d], [1, k]);
            add(
                moe_qmv::plan_swiglu(
                    (&x, dt),
                    (&idx, DType::U32),
                    gate_up,
                    bits as i64,
                    gs as i64,
                ),
                vec![dt, DType::U32, DType::U32, dt, dt],
            );
            let w_d = [e, d, pack(inter)];
            let s_d = [e, d, inter / gs];
            let down = moe_qmv::Experts {
                w: (&w_d, DType::U32),
                scales: (&s_d, dt),
                biases: (&s_d, dt),
            };
            let act = [1, k, inter];
            add(
                moe_qmv::plan_combine(
                    (&act, dt),
                    (&idx, DType::U32),
                    (&idx, dt),
                    down,
                    bits as i64,
                    gs as i64,
                ),
                vec![dt, DType::U32, dt, DType::U32, dt, dt],
            );
        }
    }
    // Dense 4-bit qmv at a 7B model's MLP width, and an odd one with a partial last step.
    for dt in [DType::F16, DType::BF16] {
        for (n, k, gs) in [(14_336usize, 4096usize, 64i64), (96, 544, 32)] {
            let (x, w, sb) = ([1, k], [n, k / 8], [n, k / gs as usize]);
            add(
                qmv::plan((&x, dt), (&w, DType::U32), (&sb, dt), (&sb, dt), 4, gs),
                vec![dt, DType::U32, dt, dt],
            );
        }
    }
    // Residual add + RMSNorm at Mistral-7B's and Qwen3-30B-A3B's widths and an odd one.
    for dt in [DType::F32, DType::F16, DType::BF16] {
        for d in [4096usize, 2048, 1000] {
            let x = [1, d];
            add(
                add_rms_norm::plan((&x, dt), (&x, dt), (&[d], dt), 1e-5),
                vec![dt, dt, dt],
            );
        }
    }
    // q/k head norms of Qwen3-30B-A3B (32 + 4 heads of 128) and an odd small layout.
    for dt in [DType::F32, DType::F16, DType::BF16] {
        for (hq, hk, d, dv) in [(32usize, 4usize, 128usize, 128usize), (3, 1, 64, 32)] {
            let qkv = [1, (hq + hk) * d + hk * dv];
            add(
                qk_rms_norm::plan(
                    (&qkv, dt),
                    (&[d], dt),
                    (&[d], dt),
                    (1e-6, 1e-6),
                    hq as i64,
                    hk as i64,
                ),
                vec![dt, dt, dt],
            );
        }
        // Mistral-7B at decode (one offset), and a small traditional one per row.
        for (hq, hk, d, dv, b, traditional) in [
            (32usize, 8usize, 128usize, 128usize, 1usize, false),
            (3, 1, 64, 32, 2, true),
        ] {
            let qkv = [b, 1, (hq + hk) * d + hk * dv];
            let offset: &[usize] = if b > 1 { &[2] } else { &[] };
            add(
                qkv_rope::plan(
                    (&qkv, dt),
                    (offset, DType::I32),
                    qkv_rope::Heads {
                        n_heads: hq as i64,
                        n_kv_heads: hk as i64,
                        head_dim: d as i64,
                    },
                    qkv_rope::Rope {
                        base: 1e6,
                        scale: 1.0,
                        traditional,
                    },
                ),
                vec![dt, DType::I32],
            );
            // qwen3's front on the same heads (Qwen3-30B-A3B: 32 + 4 heads of 128).
            let hq = if b > 1 { hq } else { 32 };
            let hk = if b > 1 { hk } else { 4 };
            if d % (2 * super::vector_width(dt)) == 0 {
                add(
                    qk_norm_rope::plan(
                        (&[b, 1, (hq + hk) * d + hk * dv], dt),
                        (&[d], dt),
                        (&[d], dt),
                        (offset, DType::I32),
                        (1e-6, 1e-6),
                        qkv_rope::Heads {
                            n_heads: hq as i64,
                            n_kv_heads: hk as i64,
                            head_dim: d as i64,
                        },
                        qkv_rope::Rope {
                            base: 1e6,
                            scale: 1.0,
                            traditional,
                        },
                    ),
                    vec![dt, dt, dt, DType::I32],
                );
            }
        }
    }
    // Some loops meet the same specialisation twice (scores dtype == y dtype).
    let mut seen = std::collections::HashSet::new();
    out.retain(|s| seen.insert(s.precompiled_source().expect("real dtypes")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::glu;

    #[test]
    fn renders_an_extern_c_kernel_with_constants() {
        let l = glu::plan(
            glu::Activation::Silu,
            &[4, 8],
            DType::BF16,
            &[4, 8],
            DType::BF16,
        )
        .unwrap();
        let s = Specialisation::of_launch(&l, vec![DType::BF16, DType::BF16]).unwrap();
        assert_eq!(s.symbol(), "zmlx_glu_bfloat16_8_0");
        let src = s.precompiled_source().unwrap();
        assert!(src.contains("extern \"C\" __global__ void zmlx_glu_bfloat16_8_0("));
        assert!(src.contains("const __nv_bfloat16* __restrict__ gate,"));
        assert!(src.contains("__nv_bfloat16* __restrict__ out) {"));
        assert!(src.contains(
            "  using T = __nv_bfloat16;\n  constexpr int V = 8;\n  constexpr int ACT = 0;\n"
        ));
        assert!(
            !src.contains("_shape"),
            "the shape prelude is MLX's path only"
        );
    }

    #[test]
    fn mlx_rendering_mirrors_build_kernel() {
        let l = glu::plan_packed(glu::Activation::Silu, &[2, 16], DType::F16).unwrap();
        let s = Specialisation::of_launch(&l, vec![DType::F16]).unwrap();
        let src = s.mlx_wrapped_source().unwrap();
        assert!(src.starts_with("#include \"mlx/backend/cuda/device/utils.cuh\""));
        assert!(src.contains(
            "__global__ void custom_kernel_zmlx_glu_packed_float16_8_0(\n    const __half* h,\n    \
             __half* out) {"
        ));
        assert!(src.ends_with("} // namespace mlx::core::cu\n"));
    }

    #[test]
    fn launch_bounds_cap_registers_at_64_within_16_blocks() {
        // threads -> resident blocks: 64 registers a thread, 16 blocks at most
        for (threads, blocks) in [(32, 16), (64, 16), (96, 10), (128, 8), (256, 4), (512, 2)] {
            assert_eq!(min_blocks(threads), blocks, "{threads} threads");
        }
        assert_eq!(min_blocks(1024), 1);
    }

    #[test]
    fn launch_bounds_only_where_asked_and_one_block_size_per_symbol() {
        let mut threads_of = std::collections::HashMap::new();
        for s in specialisations() {
            let src = s.precompiled_source().unwrap();
            let bounded = s.kernel.launch_bounds;
            assert_eq!(src.contains("__launch_bounds__"), bounded, "{}", s.symbol());
            if bounded {
                let bounds = format!(
                    "__launch_bounds__({}, {}) ",
                    s.threads,
                    min_blocks(s.threads)
                );
                assert!(src.contains(&bounds), "{}", s.symbol());
                let k = s.template.iter().find(|(n, _)| *n == "K").map(|(_, a)| a);
                let want = match (s.kernel.name, k) {
                    ("zmlx_moe_qmv_combine_mma", Some(TemplateArg::Int(k))) => 32 * *k as u32,
                    ("zmlx_moe_qmv_swiglu_mma", _) => 64,
                    other => panic!("unexpected bounded kernel {other:?}"),
                };
                assert_eq!(s.threads, want, "{}", s.symbol());
            }
            let seen = threads_of.entry(s.symbol()).or_insert(s.threads);
            assert!(!bounded || *seen == s.threads, "{}", s.symbol());
        }
        assert!(threads_of
            .keys()
            .any(|s| s.starts_with("zmlx_moe_qmv_combine_mma")));
        assert!(threads_of
            .keys()
            .any(|s| s.starts_with("zmlx_moe_qmv_swiglu_mma")));
    }

    #[test]
    fn symbols_stay_identifiers() {
        let l = crate::kernels::dropout::plan(&[8], DType::F32, 0.5, &[2], DType::U32).unwrap();
        let mut s = Specialisation::of_launch(&l, vec![DType::F32, DType::U32]).unwrap();
        s.template.push(("NEG", TemplateArg::Int(-3)));
        s.template.push(("FLAG", TemplateArg::Bool(true)));
        let sym = s.symbol();
        assert!(sym.ends_with("_m3_t"), "{sym}");
        assert!(sym.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[test]
    fn specialisations_are_distinct_and_cover_the_catalog() {
        let specs = specialisations();
        let mut sources: Vec<_> = specs
            .iter()
            .map(|s| s.precompiled_source().unwrap())
            .collect();
        sources.sort();
        sources.dedup();
        assert_eq!(sources.len(), specs.len());
        for k in crate::kernels::catalog() {
            assert!(
                specs.iter().any(|s| s.kernel.name == k.name),
                "{} unchecked",
                k.name
            );
        }
    }

    #[test]
    fn input_count_is_checked() {
        let l = glu::plan_packed(glu::Activation::Gelu, &[2, 8], DType::F32).unwrap();
        let e = Specialisation::of_launch(&l, vec![DType::F32, DType::F32]).unwrap_err();
        assert!(matches!(
            e,
            Error::Value {
                arg: "input_dtypes",
                ..
            }
        ));
    }
}

//! Tree-shaking of the helper headers: a kernel's header keeps only the helper definitions
//! its body reaches. MLX-CUDA hashes a custom kernel's whole source on every evaluation
//! (`std::hash` of header + body in `CustomKernel::eval_gpu`) and concatenates it on every
//! call it builds, so each byte is paid per node; the shared helpers are most of it.
//!
//! The helpers are our own code in one style (see cuda/*.cuh), which this relies on: at the top
//! level, or directly inside `namespace zm { ... }`, there are `#include`s, one-line
//! `#define`s, and definitions or declarations that end at brace depth 0 with `}` or `;`. An
//! item defines the name before its parameter list (functions, templates, specialisations,
//! `constexpr` variables) or after `struct`. Items are kept when the body, or an item already
//! kept, mentions one of their names; `#include`s always are.

/// One top-level piece of helper code.
#[derive(Debug)]
struct Item {
    text: String,
    /// Names it defines (empty for an `#include`, which is always kept).
    names: Vec<String>,
    in_namespace: bool,
}

fn braces(line: &str) -> i32 {
    let mut depth = 0;
    let mut in_string = false;
    let mut prev = '\0';
    for c in line.chars() {
        match c {
            '"' if prev != '\\' => in_string = !in_string,
            '{' if !in_string => depth += 1,
            '}' if !in_string => depth -= 1,
            _ => {}
        }
        prev = c;
    }
    depth
}

fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
}

/// The name an item defines, from the text before its first `(`, `{`, `=` or `;` (after
/// the template parameter list, without specialisation arguments).
fn defined_name(text: &str) -> Option<String> {
    let mut head = text.trim_start();
    if let Some(rest) = head.strip_prefix("template") {
        // Skip the balanced <...> parameter list.
        let mut depth = 0;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '<' => depth += 1,
                '>' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        head = &rest[end..];
    }
    if let Some(pos) = head.find("struct ") {
        let mut after = head[pos + "struct ".len()..].trim_start();
        if let Some(rest) = after.strip_prefix("alignas(") {
            let mut depth = 1;
            let close = rest.find(|c| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })?;
            after = rest[close + 1..].trim_start();
        }
        return identifiers(after).next().map(str::to_string);
    }
    let stop = head.find(['(', '{', '=', ';']).unwrap_or(head.len());
    let mut decl = head[..stop].trim_end();
    if decl.ends_with('>') {
        // A specialisation (`from_f<float>`, `kSame<A, A>`): the name is before its '<'.
        decl = &decl[..decl.find('<')?];
    }
    identifiers(decl).last().map(str::to_string)
}

fn items(minified: &str) -> Vec<Item> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0;
    let mut in_namespace = false;
    for line in minified.lines() {
        if current.is_empty() {
            if line == "namespace zm {" {
                in_namespace = true;
                continue;
            }
            if in_namespace && line == "}" {
                in_namespace = false;
                continue;
            }
            if line.starts_with('#') {
                let names = line
                    .strip_prefix("#define ")
                    .and_then(|rest| identifiers(rest).next())
                    .map(|n| vec![n.to_string()])
                    .unwrap_or_default();
                out.push(Item {
                    text: format!("{line}\n"),
                    names,
                    in_namespace,
                });
                continue;
            }
        }
        current.push_str(line);
        current.push('\n');
        depth += braces(line);
        if depth == 0 && (line.ends_with('}') || line.ends_with(';')) {
            let text = std::mem::take(&mut current);
            let names = defined_name(&text).into_iter().collect();
            out.push(Item {
                text,
                names,
                in_namespace,
            });
        }
    }
    assert!(
        current.is_empty() && depth == 0,
        "helper code ends inside a definition"
    );
    out
}

/// The identifiers `code` mentions outside string literals: an asm string names instructions,
/// not helpers (`"mma.sync.aligned..."` is no use of `aligned`). The sources escape no quotes.
fn mentions(code: &str) -> impl Iterator<Item = &str> {
    code.split('"').step_by(2).flat_map(identifiers)
}

/// The helper definitions of `minified` that `body` reaches, in their order, with their
/// namespace.
pub fn shake(minified: &str, body: &str) -> String {
    let items = items(minified);
    let mut keep: Vec<bool> = items.iter().map(|i| i.names.is_empty()).collect();
    let mut seen: std::collections::HashSet<&str> = mentions(body).collect();
    loop {
        let mut grew = false;
        for (i, item) in items.iter().enumerate() {
            if !keep[i] && item.names.iter().any(|n| seen.contains(n.as_str())) {
                keep[i] = true;
                seen.extend(mentions(&item.text));
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    let mut out = String::new();
    let mut open = false;
    for (item, _) in items.iter().zip(&keep).filter(|(_, &k)| k) {
        if item.in_namespace != open {
            out.push_str(if item.in_namespace {
                "namespace zm {\n"
            } else {
                "}\n"
            });
            open = item.in_namespace;
        }
        out.push_str(&item.text);
    }
    if open {
        out.push_str("}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::minify;

    const HELPERS: &str = "#include <a.h>
#define ZM_X (1)
namespace zm {
template <typename T>
__device__ T from_f(float v);
template <>
__device__ float from_f<float>(float v) { return v; }
template <typename A, typename B>
constexpr bool kSame = false;
template <typename A>
constexpr bool kSame<A, A> = true;
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};
__device__ float unused(float v) { return v; }
__device__ float mov(float v) { return v; }
__device__ float twice(float v) {
  asm(\"{ mov }\");
  return from_f<float>(v) * 2.0f;
}
}  // namespace zm
";

    #[test]
    fn keeps_what_the_body_reaches_and_what_that_reaches() {
        let h = minify(HELPERS);
        let got = shake(&h, "out[0] = zm::twice(x[0]);");
        assert!(got.starts_with("#include <a.h>\nnamespace zm {\n"));
        assert!(got.contains("from_f<float>(float v) { return v; }"));
        assert!(got.contains("__device__ T from_f(float v);"));
        assert!(got.contains("twice"));
        // `mov` is only named inside twice's asm string.
        for gone in ["unused", "ZM_X", "kSame", "Vec", "float mov"] {
            assert!(!got.contains(gone), "{gone} should be dropped:\n{got}");
        }
        assert!(got.ends_with("}\n"));
        let got = shake(
            &h,
            "zm::Vec<float, 4> v; if (zm::kSame<T, float>) v.v[0] = ZM_X;",
        );
        assert!(got.contains("struct alignas(sizeof(T) * N) Vec"));
        assert_eq!(got.matches("constexpr bool kSame").count(), 2);
        assert!(got.contains("#define ZM_X"));
        assert!(!got.contains("twice"));
    }

    #[test]
    fn names_of_each_kind_of_item() {
        let name = |s: &str| defined_name(s).unwrap();
        assert_eq!(
            name("template <typename T>\n__device__ T from_f(float v);"),
            "from_f"
        );
        assert_eq!(
            name("template <>\n__device__ float from_f<float>(float v) {"),
            "from_f"
        );
        assert_eq!(
            name("template <typename A>\nconstexpr bool kSame<A, A> = true;"),
            "kSame"
        );
        assert_eq!(name("struct Pair<__half> {\nint x;\n};"), "Pair");
        assert_eq!(
            name("template <int N>\n__device__ void wait_async() {"),
            "wait_async"
        );
    }
}

//! The crate's one error type. Every fallible core function returns [`Error`]; the bindings
//! turn it into the matching Python exception class in exactly one place (`py::errors`).

use std::fmt;

/// What went wrong, with enough context for a message that names the argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An array argument has the wrong rank or shape.
    #[error("{op}(): '{arg}' must be {expected}, got {actual}")]
    Shape {
        op: &'static str,
        arg: &'static str,
        expected: String,
        actual: String,
    },
    /// An array argument has a dtype the operation does not take.
    #[error("{op}(): '{arg}' must be {expected}, got {actual}")]
    DType {
        op: &'static str,
        arg: &'static str,
        expected: String,
        actual: String,
    },
    /// A scalar or option argument is out of range.
    #[error("{op}(): '{arg}' must be {expected}, got {actual}")]
    Value {
        op: &'static str,
        arg: &'static str,
        expected: String,
        actual: String,
    },
    /// The backend cannot run what was asked.
    #[error("{0}")]
    Backend(String),
    /// A checkpoint file is missing, unreadable or malformed.
    #[error("checkpoint file '{path}': {reason}")]
    Checkpoint { path: String, reason: String },
}

impl Error {
    pub fn shape(
        op: &'static str,
        arg: &'static str,
        expected: impl fmt::Display,
        actual: impl fmt::Display,
    ) -> Self {
        Error::Shape {
            op,
            arg,
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }
    pub fn dtype(
        op: &'static str,
        arg: &'static str,
        expected: impl fmt::Display,
        actual: impl fmt::Display,
    ) -> Self {
        Error::DType {
            op,
            arg,
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }
    pub fn checkpoint(path: &std::path::Path, reason: impl fmt::Display) -> Self {
        Error::Checkpoint {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
    pub fn value(
        op: &'static str,
        arg: &'static str,
        expected: impl fmt::Display,
        actual: impl fmt::Display,
    ) -> Self {
        Error::Value {
            op,
            arg,
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Formats a shape the way Python prints a tuple: `(2, 3)`, `(5,)`, `()`.
pub fn shape_str(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", dims.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_argument() {
        let e = Error::shape("swiglu", "up", "(2, 3)", "(2, 4)");
        assert_eq!(e.to_string(), "swiglu(): 'up' must be (2, 3), got (2, 4)");
    }

    #[test]
    fn shapes_print_like_python_tuples() {
        assert_eq!(shape_str(&[]), "()");
        assert_eq!(shape_str(&[5]), "(5,)");
        assert_eq!(shape_str(&[2, 3]), "(2, 3)");
    }
}

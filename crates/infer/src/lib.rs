//! smelt-infer

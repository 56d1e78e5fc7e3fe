//! smelt-gguf

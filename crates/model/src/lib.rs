//! smelt-model

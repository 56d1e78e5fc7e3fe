//! smelt-train

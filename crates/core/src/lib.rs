//! smelt-core

//! Per-file and cross-file checks of a bundle -> findings. Pure.
